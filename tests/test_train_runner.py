"""Gold networks as Ray Train runs: a re-created trainer with the same name resumes."""

import pytest

from taskonomy_ray.render import SynthConfig, synthesize
from taskonomy_ray.sweep import config, driver, plan
from taskonomy_ray.tables import Storage

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def gold_unit(cfg, key):
    unit = next(u for u in plan.build(cfg) if u.stage == "gold")
    return plan.Unit(key, unit.stage, unit.params, unit.deps, unit.outputs)


def test_gold_run_resumes_from_its_last_ray_train_checkpoint(ray_session, tmp_path):
    from taskonomy_ray.sweep.train_runner import fit_gold

    data = tmp_path / "data"
    synthesize(SynthConfig(str(data), points=3, views=3, size=32, buildings=4, workers=1),
               progress=False)

    def cfg(steps):
        return config.from_dict({
            "name": "t", "tasks": ["normal"], "regimes": [4], "max_order": 1,
            "data": {"root": str(data)},
            "network": {"model": {"image_size": 32},
                        "train": {"steps": steps, "batch_size": 4, "checkpoint_every": 2}}})

    storage = Storage(str(tmp_path / "store"))
    first = fit_gold(gold_unit(cfg(4), "gold-normal-x"), driver.make_context(cfg(4), storage))
    assert first["steps"] == 4
    # Same run name, more steps: Ray Train hands the step-4 checkpoint back and training goes on.
    second = fit_gold(gold_unit(cfg(6), "gold-normal-x"), driver.make_context(cfg(6), storage))
    assert second["steps"] == 2
    assert storage.exists("checkpoints/gold-normal-x/final.pt")
    assert storage.read_losses().num_rows > 0


def test_gold_run_trains_data_parallel_on_two_workers(ray_session, tmp_path):
    from taskonomy_ray.sweep.train_runner import fit_gold

    data = tmp_path / "data"
    synthesize(SynthConfig(str(data), points=3, views=3, size=32, buildings=4, workers=1),
               progress=False)
    cfg = config.from_dict({
        "name": "t", "tasks": ["class_scene"], "regimes": [4], "max_order": 1,
        "data": {"root": str(data)}, "resources": {"gold_workers": 2},
        "network": {"model": {"image_size": 32}, "train": {"steps": 4, "batch_size": 4}}})
    storage = Storage(str(tmp_path / "store"))
    info = fit_gold(gold_unit(cfg, "gold-class_scene-x"), driver.make_context(cfg, storage))
    # Two TorchTrainer workers shared each batch of 4; rank 0 wrote the unit's outputs once.
    assert info["steps"] == 4 and info["replicas"] == 2
    assert storage.exists("checkpoints/gold-class_scene-x/final.pt")
    losses = storage.read_losses()
    assert losses.num_rows == len(set(losses["image"].to_pylist())) > 0
