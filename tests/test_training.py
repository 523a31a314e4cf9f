"""Trainings: networks learn on a tiny root, loss tables are complete, checkpoints resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import make_root

from taskonomy_ray import checkpoints, config, training
from taskonomy_ray.dataset import TaskonomyDataset
from taskonomy_ray.errors import ConfigError, DataError, TrainingError
from taskonomy_ray.tables import LOSSES_SCHEMA

CFG = config.from_dict({
    "model": {"image_size": 32, "width": 4, "decoder_width": 16, "head_width": 32},
    "train": {"steps": 40, "batch_size": 8, "lr": 3e-3, "log_every": 5},
})


# One torch thread: timings and results do not depend on what else runs (conftest).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_root(tmp_path_factory.mktemp("train"), buildings=3, points=4, views=3, size=32)


def _start_end(history: list[float]) -> tuple[float, float]:
    return float(np.mean(history[:3])), float(np.mean(history[-5:]))


@pytest.mark.parametrize("task", ["normal", "class_object", "fixated_pose"])
def test_gold_network_learns_and_scores_every_test_image(root: Path, task: str) -> None:
    result = training.train_gold(task, root, CFG)
    start, end = _start_end(result.history)
    assert len(result.history) == 40 and end < 0.5 * start
    table = result.losses
    assert table.schema == LOSSES_SCHEMA
    test = TaskonomyDataset(root, [task], split="test")
    assert sorted(table["image"].to_pylist()) == sorted(test.images)
    assert np.isfinite(table["loss"].to_numpy()).all()
    assert set(table["kind"].to_pylist()) == {"gold"}
    assert table["sources"][0].as_py() == ["self"] and table["unit"][0].as_py() == f"gold-{task}"


def test_resume_continues_the_step_count_from_the_checkpoint(root: Path, tmp_path: Path) -> None:
    short = config.from_dict({"train": {"steps": 6, "checkpoint_every": 3}}, base=CFG)
    first = training.train_gold("reshading", root, short, ckpt_dir=tmp_path)
    assert first.steps == 6 and (tmp_path / checkpoints.CHECKPOINT_FILE).exists()
    longer = config.from_dict({"train": {"steps": 10}}, base=short)
    second = training.train_gold("reshading", root, longer, ckpt_dir=tmp_path)
    assert second.steps == 4 and len(second.history) == 10
    assert second.history[:6] == first.history
    lines = (tmp_path / checkpoints.METRICS_FILE).read_text().splitlines()
    assert '"step": 10' in lines[-1]


class _Crash(Exception):
    pass


class _CrashAfterFirstCheckpoint(checkpoints.LocalHooks):
    def save(self, state, metrics):  # noqa: ANN001
        super().save(state, metrics)
        raise _Crash  # the process dies right after its checkpoint reached storage


@pytest.mark.parametrize("task", ["reshading", "class_object"])  # class_object: dropout
def test_a_resumed_training_ends_where_an_uninterrupted_one_does(root: Path, tmp_path: Path,
                                                                  task: str) -> None:
    # A crash right after the step-3 checkpoint, which falls inside an epoch: the resumed run
    # must go on with the same next batch and the same random draws, to the same weights.
    cfg = config.from_dict({"train": {"steps": 8, "checkpoint_every": 3, "batch_size": 4}},
                           base=CFG)
    whole = training.train_gold(task, root, cfg)
    with pytest.raises(_Crash):
        training.train_gold(task, root, cfg, hooks=_CrashAfterFirstCheckpoint(tmp_path))
    cursor = checkpoints.load_checkpoint(tmp_path / checkpoints.CHECKPOINT_FILE)["data"]
    assert cursor["batch"] not in (0, None)  # mid-epoch
    again = training.train_gold(task, root, cfg, ckpt_dir=tmp_path)
    assert again.steps == 5 and again.history == whole.history
    for (name, a), b in zip(whole.network.state_dict().items(),
                            again.network.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert again.losses["loss"].to_pylist() == whole.losses["loss"].to_pylist()


def test_a_checkpoint_of_another_network_layout_is_refused_with_the_fix(root: Path,
                                                                        tmp_path: Path) -> None:
    short = config.from_dict({"train": {"steps": 3, "checkpoint_every": 3}}, base=CFG)
    training.train_gold("reshading", root, short, ckpt_dir=tmp_path)
    wider = config.from_dict({"model": {"decoder_width": 32}, "train": {"steps": 6}}, base=short)
    before = (tmp_path / checkpoints.CHECKPOINT_FILE).read_bytes()
    with pytest.raises(DataError, match="another network layout.*Delete it to retrain"):
        training.train_gold("reshading", root, wider, ckpt_dir=tmp_path)
    assert (tmp_path / checkpoints.CHECKPOINT_FILE).read_bytes() == before  # nothing lost


def test_scratch_trains_on_the_regime_subset_of_validation(root: Path) -> None:
    result = training.train_scratch("depth_zbuffer", 5, root,
                                    config.from_dict({"train": {"steps": 4}}, base=CFG))
    t = result.losses
    assert result.train_images == 5 and set(t["regime"].to_pylist()) == {5}
    assert t["sources"][0].as_py() == ["pixels"] and t["kind"][0].as_py() == "scratch"
    with pytest.raises(ConfigError, match="source-only"):
        training.train_scratch("jigsaw", 5, root, CFG)


def test_encoders_load_from_checkpoints_and_encode_in_batches(root: Path, tmp_path: Path) -> None:
    short = config.from_dict({"train": {"steps": 2}}, base=CFG)
    net = training.train_gold("edge_texture", root, short, ckpt_dir=tmp_path).network.eval()
    enc = training.load_encoder(tmp_path / checkpoints.CHECKPOINT_FILE)
    images = torch.rand(5, 3, 32, 32)
    reps = training.encode(enc, images, batch_size=2)
    with torch.no_grad():
        assert reps.shape == (5, 8, 2, 2) and torch.allclose(reps, net.encoder(images), atol=1e-5)
    rand = training.train_gold("random", root, CFG, ckpt_dir=tmp_path / "random")
    assert rand.losses is None and rand.steps == 0
    again = training.load_encoder(tmp_path / "random" / checkpoints.CHECKPOINT_FILE)
    assert torch.equal(training.encode(again, images), training.encode(rand.network.encoder,
                                                                        images))


def test_a_non_finite_loss_stops_training_naming_the_unit(root: Path, monkeypatch) -> None:
    monkeypatch.setattr(training, "per_image_loss",
                        lambda spec, pred, batch, **kw: pred.flatten(1).mean(1) * float("nan"))
    with pytest.raises(TrainingError, match="unit gold-normal: the normal loss became nan"):
        training.train_gold("normal", root, CFG)


def test_config_overrides_reject_unknown_keys_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        config.from_dict({"train": {"batchsize": 4}})
    with pytest.raises(ConfigError, match="train.lr should be a float"):
        config.from_dict({"train": {"lr": "fast"}})
    (tmp_path / "c.yaml").write_text("preset: paper\ntrain: {steps: 5}\nmodel: {width: 32}\n")
    cfg = config.load_yaml(tmp_path / "c.yaml")
    assert cfg.train.steps == 5 and cfg.model.width == 32 and cfg.model.image_size == 256
    assert config.from_dict(cfg.to_dict(), base="mini") == cfg
    with pytest.raises(ConfigError, match="multiple of 16"):
        config.ModelConfig(image_size=40)


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    cfg = config.TrainConfig(steps=100, warmup=10, schedule="cosine")
    f = [training.lr_factor(cfg, s) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[100] == pytest.approx(0.0)
    assert training.lr_factor(config.TrainConfig(), 50) == 1.0


def test_skipped_files_leave_training_running_and_the_table_without_them(tmp_path: Path) -> None:
    from taskonomy_ray import layout
    from taskonomy_ray.errors import DataError

    root = make_root(tmp_path / "r", buildings=3, points=2, views=2, size=32)
    test = TaskonomyDataset(root, ["reshading"], split="test")
    bad = test.samples[0][0][0]
    layout.path_for(root, bad.building, bad.point, bad.view, "reshading").write_bytes(b"junk")
    short = config.from_dict({"train": {"steps": 3}}, base=CFG)
    result = training.train_gold("reshading", root, short, on_bad_file="skip")
    assert bad.id not in result.losses["image"].to_pylist()
    assert result.losses.num_rows == len(test) - 1
    for s in TaskonomyDataset(root, ["reshading"], split="train").samples:
        v = s[0][0]
        layout.path_for(root, v.building, v.point, v.view, "reshading").unlink()
    with pytest.raises(DataError, match="no loadable sample"):
        training.train_gold("reshading", root, short, on_bad_file="skip")
