"""What feature units do on a worker, without Ray: the device they encode on, what they keep."""

import shutil
from pathlib import Path

import pytest
import torch
from fixtures import make_root

from taskonomy_ray.dataset import TaskonomyDataset
from taskonomy_ray.errors import ConfigError
from taskonomy_ray.sweep import config, partial, plan, units


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_root(tmp_path_factory.mktemp("units"), buildings=3, points=4, views=3, size=32)


def sweep(root: Path, **kw) -> config.SweepConfig:
    return config.from_dict({"name": "t", "tasks": ["normal"], "regimes": [8], "max_order": 1,
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


def test_the_render_unit_renders_adopts_its_own_render_and_refuses_other_data(tmp_path):
    from taskonomy_ray import layout
    from taskonomy_ray.errors import DataError
    from taskonomy_ray.sweep import driver

    data = tmp_path / "data"
    cfg = sweep(data, data={"root": str(data), "render": {"points": 2, "views": 3, "size": 16,
                                                         "buildings": 3}})
    unit = next(u for u in plan.build(cfg) if u.stage == "render")
    storage = units.Storage(str(tmp_path / "store"))
    ctx = {"config": cfg.to_json(), "storage": storage.uri, "data_root": str(data)}
    done = driver.done_check(storage, cfg, str(data))
    driver.guard_run(storage, cfg)  # before the render: no split to record yet
    assert "splits" not in storage.read_json("run.json")
    assert units.run_render(unit, ctx)["adopted"] is False and done(unit)
    driver.record_split(storage, cfg)  # what the driver does once the render is done
    assert sorted(sum(storage.read_json("run.json")["splits"].values(), [])) == sorted(
        p.name for p in data.iterdir() if p.is_dir())
    assert layout.read_info(data)["complete"] is True
    before = sorted(p.stat().st_mtime_ns for p in data.rglob("*.png"))
    assert units.run_render(unit, ctx)["adopted"] is True  # e.g. a second storage: no re-render
    assert sorted(p.stat().st_mtime_ns for p in data.rglob("*.png")) == before
    # A marker in storage is not enough: with its data root gone the render is not done.
    shutil.rmtree(data)
    assert not done(unit)
    # An interrupted render (completion not recorded) is rendered again, into the same names.
    units.run_render(unit, ctx)
    info = layout.read_info(data)
    layout.write_info(data, {**info, "complete": False})
    assert not done(unit) and units.run_render(unit, ctx)["adopted"] is False
    # Anything else in the root is refused, never mixed with the render.
    real = tmp_path / "real"
    (real / "mybuilding" / "rgb").mkdir(parents=True)
    with pytest.raises(DataError, match="renderer did not write.*empty or missing folder"):
        units.run_render(unit, {**ctx, "data_root": str(real)})
    assert sorted(p.name for p in real.iterdir()) == ["mybuilding"]
    other = sweep(data, data={"root": str(data), "render": {"points": 3, "views": 3, "size": 16,
                                                           "buildings": 3}})
    with pytest.raises(DataError, match="another render \\(points 2, where this one has 3"):
        units.run_render(unit, {**ctx, "config": other.to_json()})


def test_a_transfer_group_trains_what_has_its_sources_and_records_what_it_left_out(root, tmp_path):
    from taskonomy_ray.errors import DataError

    cfg = sweep(root, transfer={"steps": 2, "batch_size": 4}, regimes=[8])
    storage = units.Storage(str(tmp_path / "store"))
    ctx = {"config": cfg.to_json(), "storage": storage.uri, "data_root": str(root)}
    for u in plan.build(cfg):  # only `random` has representations: normal's gold "failed"
        if u.stage == "features" and u.params["source"] == "random":
            units.run_features(u, ctx)
    group = next(u for u in plan.build(cfg) if u.stage == "transfer")
    assert group.params["source_sets"] == [["normal"], ["random"]]
    info = units.run_transfer(group, ctx)
    assert info["transfers"] == 1 and info["left_out"] == [["normal"]]
    losses = storage.read_table(plan.losses_path(group.key), units.LOSSES_SCHEMA)
    assert {tuple(s) for s in losses.column("sources").to_pylist()} == {("random",)}
    record = storage.read_json(plan.partial_path(group.key))
    assert record["sources"] == ["normal"] and record["left_out"] == [["normal"]]
    assert sorted(record["without"]) == sorted(d for d in group.deps if "-normal-" in d)
    # Retrained with more sources, the stored record covers the old table too until the new
    # one is written: a crash in between leaves no table that looks more complete than it is.
    older = {"without": ["features-x"], "left_out": [["x"]], "sources": ["x"]}
    storage.write_json(plan.partial_path(group.key), older)
    kept, new = partial.trainable_sets(group, cfg, storage)
    assert kept == [["random"]] and new == record
    stored = storage.read_json(plan.partial_path(group.key))
    assert stored["sources"] == ["normal", "x"] and ["x"] in stored["left_out"]
    assert "features-x" in stored["without"] and set(record["without"]) <= set(stored["without"])
    partial.record_partial(storage, group, new)  # the new table written: exactly what it lacks
    assert storage.read_json(plan.partial_path(group.key)) == record
    # A group none of whose transfers can train fails naming the missing sources.
    pair = plan.transfer_unit(cfg, "normal", 8, 2, [["normal", "random"]])
    with pytest.raises(DataError, match="representations of normal are missing"):
        units.run_transfer(pair, ctx)
    # A complete run of a group removes the record an earlier partial run left.
    alone = plan.transfer_unit(cfg, "normal", 8, 1, [["random"]])
    storage.write_json(plan.partial_path(alone.key), record)
    assert "left_out" not in units.run_transfer(alone, ctx)
    assert not storage.exists(plan.partial_path(alone.key))


def test_a_feature_unit_encodes_on_a_listed_building_split(root, tmp_path):
    # Workers key their decoded image sets on the split config: given lists must keep it
    # hashable (a dict made every feature unit fail).
    lists = {"train": ["building0"], "val": ["building1"], "test": ["building2"]}
    cfg = sweep(root, data={"root": str(root), "buildings": lists})
    unit = next(u for u in plan.build(cfg) if u.stage == "features"
                and u.params["source"] == "random" and u.params["imageset"] == "test")
    ctx = {"config": cfg.to_json(), "storage": str(tmp_path / "store"), "data_root": str(root)}
    assert units.run_features(unit, ctx)["images"] == len(TaskonomyDataset(
        root, split="test", splits=units.splits(cfg), size=64).images) > 0
    assert units.splits(cfg).lists["test"] == ("building2",)


def test_every_unit_of_the_paper_workflow_is_a_ray_task_ray_accepts():
    # Ray refuses max_calls in .options(); GPU units carry it, so the paper's workflow (0.5 GPU
    # per feature and transfer unit) crashed the driver at its first feature unit.
    from taskonomy_ray.sweep import resources, runner

    cfg = config.load(Path(__file__).parent.parent / "workflows" / "paper.yaml")
    opts, remotes = resources.options(cfg), {}
    by_stage = {}
    for unit in plan.build(cfg):
        runner.remote_for(remotes, {"name": unit.key, **opts(unit)})  # Ray validates here
        by_stage.setdefault(unit.stage, opts(unit))
    assert by_stage["transfer"]["num_gpus"] == by_stage["features"]["num_gpus"] == 0.5
    assert "max_calls" not in by_stage["gold"]
    # GPU units share one remote function made with the workflow's worker reuse
    assert remotes[cfg.resources.max_calls]._default_options == {
        "max_calls": cfg.resources.max_calls}


def test_a_transfer_whose_loss_diverges_is_left_out_and_named_not_the_whole_group(
        root, tmp_path, monkeypatch, capsys):
    # One bad head used to fail its fused group: a first-order group, then its beam and every
    # higher order of the target, lost for one transfer.
    import numpy as np

    from taskonomy_ray import cli
    from taskonomy_ray.features import FeatureCache
    from taskonomy_ray.sweep import driver
    from taskonomy_ray.sweep import status as sweep_status

    cfg = sweep(root, transfer={"steps": 2, "batch_size": 4}, regimes=[8])
    storage = units.Storage(str(tmp_path / "store"))
    ctx = {"config": cfg.to_json(), "storage": storage.uri, "data_root": str(root)}
    built = plan.build(cfg)
    for u in built:  # random's representations, and a copy of them standing in for normal's
        if u.stage == "features" and u.params["source"] == "random":
            units.run_features(u, ctx)
            stand_in = plan.features_key(cfg, "normal", u.params["imageset"])
            storage.write_bytes(plan.features_path(stand_in),
                                storage.read_bytes(u.outputs[0]))
    load = FeatureCache.load

    def broken_normal(self, source, imageset, images):  # its representations: all NaN
        x = load(self, source, imageset, images)
        return np.full_like(x, np.nan) if source == "normal" else x

    monkeypatch.setattr(FeatureCache, "load", broken_normal)
    group = next(u for u in built if u.stage == "transfer")
    with monkeypatch.context() as m:  # a crash while the losses are written: recorded before
        m.setattr(units.Storage, "write_losses", lambda *a: (_ for _ in ()).throw(OSError()))
        with pytest.raises(OSError):
            units.run_transfer(group, ctx)
    assert storage.read_json(plan.partial_path(group.key))["left_out"] == [["normal"]]
    info = units.run_transfer(group, ctx)
    assert info["transfers"] == 1 and info["left_out"] == [["normal"]]
    losses = storage.read_table(plan.losses_path(group.key), units.LOSSES_SCHEMA)
    assert {tuple(s) for s in losses.column("sources").to_pylist()} == {("random",)}
    record = storage.read_json(plan.partial_path(group.key))
    assert record["diverged"] == [{"sources": ["normal"],
                                   "why": "non-finite training loss at step 0"}]
    assert record["without"] == [] and record["sources"] == []  # nothing to wait for
    assert driver.went_without(storage)(group) == []
    storage.write_json(plan.PLAN_FILE, {"units": [u.to_json() for u in built]})
    st = sweep_status.status(storage.uri)
    assert st["diverged"] == {group.key: record["diverged"]} and st["partial"] == {}
    assert st["transfer_orders"]["1"]["transfers_done"] == 1
    cli.main(["status", storage.uri])
    assert (f"DIVERGED {group.key}: left out normal (non-finite training loss at step 0)"
            in capsys.readouterr().out)


def test_a_feature_unit_run_again_encodes_again_instead_of_taking_the_old_entry(root, tmp_path):
    # It runs again when its encoder changed (a gold network retrained with another result):
    # the entry there is the old encoder's, and taking it would keep the transfers stale too.
    from taskonomy_ray.features import Features, from_bytes, to_bytes
    from taskonomy_ray.tables import Storage

    cfg = sweep(root)
    unit = next(u for u in plan.build(cfg) if u.stage == "features"
                and u.params["source"] == "random" and u.params["imageset"] == "test")
    ctx = {"config": cfg.to_json(), "storage": str(tmp_path / "store"), "data_root": str(root)}
    units.run_features(unit, ctx)
    st = Storage(ctx["storage"])
    fresh = st.read_bytes(unit.outputs[0])
    old = from_bytes(fresh, "entry")
    st.write_bytes(unit.outputs[0], to_bytes(Features(old.images, old.array * 0)))
    units.run_features(unit, ctx)
    assert st.read_bytes(unit.outputs[0]) == fresh


class _FakeCuda:
    """torch.cuda as a worker that has trained on a GPU sees it: initialised, memory cached."""

    def __init__(self) -> None:
        self.emptied = 0

    def is_initialized(self) -> bool:
        return True

    def empty_cache(self) -> None:
        self.emptied += 1


def test_a_unit_hands_its_cached_gpu_memory_back_when_it_ends_even_if_it_fails(monkeypatch):
    # The worker process outlives the unit and Ray counts the unit's GPU share free: memory
    # torch's allocator kept would be missing from the next unit's share, in another process.
    cuda = _FakeCuda()
    monkeypatch.setattr(torch, "cuda", cuda)
    monkeypatch.setattr(units, "check_gpu_visible", lambda unit: None)
    monkeypatch.setitem(units.EXECUTORS, "beam", lambda unit, ctx: {"ok": True})
    assert units.execute(plan.Unit("beam-x", "beam", {}), {}) == {"ok": True}
    assert cuda.emptied == 2  # before (an earlier failure's leftovers) and after

    def fails(unit, ctx):
        raise RuntimeError("out of memory")

    monkeypatch.setitem(units.EXECUTORS, "beam", fails)
    with pytest.raises(RuntimeError):
        units.execute(plan.Unit("beam-x", "beam", {}), {})
    assert cuda.emptied == 4


def test_a_reused_worker_refuses_a_gpu_unit_on_another_gpu_than_its_first(monkeypatch):
    # CUDA reads CUDA_VISIBLE_DEVICES once per process: on a node with several GPUs a worker
    # Ray reuses would train on its first unit's GPU, sharing it while the assigned one idles.
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [3])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(units, "_FIRST_GPUS", [])
    unit = plan.Unit("transfer-normal-x", "transfer", {})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    units.check_gpu_visible(unit)
    units.check_gpu_visible(unit)  # the same GPU again: fine (one GPU per node, the default)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [5])
    with pytest.raises(units.TrainingError, match=r"already trained on GPU 3.*"
                                                  r"set resources.max_calls: 1"):
        units.check_gpu_visible(unit)
