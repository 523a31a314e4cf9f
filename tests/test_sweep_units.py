"""What feature units do on a worker, without Ray: the device they encode on, what they keep."""

from pathlib import Path

import pytest
import torch
from fixtures import make_root

from taskonomy_ray.dataset import TaskonomyDataset
from taskonomy_ray.errors import ConfigError
from taskonomy_ray.sweep import config, plan, units


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_root(tmp_path_factory.mktemp("units"), buildings=3, points=4, views=3, size=32)


def sweep(root: Path, **kw) -> config.SweepConfig:
    return config.from_dict({"name": "t", "tasks": ["normal"], "regimes": [8],
                             "data": {"root": str(root)}, **kw})


def test_small_image_sets_stay_decoded_and_large_ones_are_streamed(root, monkeypatch):
    cfg = sweep(root)
    monkeypatch.setattr(units, "_DECODED", {})
    kept = units._decoded(str(root), "test", cfg)
    assert isinstance(kept, list) and len(units._DECODED) == 1
    assert units._decoded(str(root), "test", cfg) is kept  # the next source's unit reuses it
    monkeypatch.setattr(units, "DECODED_SET_BYTES", 0)  # as a 16k set at 256 px would be
    streamed = units._decoded(str(root), "r8", cfg)
    assert isinstance(streamed, TaskonomyDataset) and len(units._DECODED) == 1
    assert kept.images == TaskonomyDataset(root, split="test", splits=units.splits(cfg),
                                           size=64).images


def test_feature_units_encode_on_the_transfer_device(root, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this checks the refusal on a machine without CUDA")
    cfg = sweep(root, transfer={"device": "cuda"})
    unit = next(u for u in plan.build(cfg)
                if u.stage == "features" and u.params["source"] == "random")
    ctx = {"config": cfg.to_json(), "storage": str(tmp_path / "store"), "data_root": str(root)}
    with pytest.raises(ConfigError, match="no CUDA device"):
        units.run_features(unit, ctx)
    cpu = sweep(root, transfer={"device": "cpu"})
    unit = next(u for u in plan.build(cpu)
                if u.stage == "features" and u.params["source"] == "random")
    assert units.run_features(unit, {**ctx, "config": cpu.to_json()})["images"] > 0
