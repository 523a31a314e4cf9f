"""The sweep's plan and scheduler, stepped by hand without Ray."""

import pytest

from taskonomy_ray.errors import ConfigError, UnknownNameError
from taskonomy_ray.sweep import config, plan
from taskonomy_ray.sweep.scheduler import Scheduler, Version


def small(**kw):
    raw = {"name": "t", "tasks": ["normal", "depth_zbuffer", "reshading"], "regimes": [16],
           "max_order": 2,
           "data": {"root": "x", "render": {"points": 4, "views": 3, "size": 16}}, **kw}
    return config.from_dict(raw)


def test_full_dictionary_plans_22_targets_and_26_sources():
    cfg = config.from_dict({"name": "full", "regimes": [128]})
    assert len(cfg.targets) == 22 and len(cfg.sources) == 26
    units = plan.build(cfg)
    transfers = [u for u in units if u.stage == "transfer"]
    assert len(transfers) == 22  # one fused first-order group per target and regime
    assert all(len(u.params["source_sets"]) == 26 for u in transfers)  # 25 tasks + random


def test_keys_are_deterministic_and_change_with_the_config():
    a = [u.key for u in plan.build(small())]
    assert a == [u.key for u in plan.build(small())]
    b = {u.key for u in plan.build(small(transfer={"steps": 7}))}
    assert {k for k in a if k.startswith("transfer-")}.isdisjoint(b)
    assert {k for k in a if k.startswith("gold-")} <= b  # gold does not read transfer settings


def test_every_key_changes_with_the_method_version(monkeypatch):
    # Labels, losses or encoder inputs changed: no stored result may count as done.
    from taskonomy_ray import tasks

    before = {u.key for u in plan.build(small())}
    monkeypatch.setattr(tasks, "METHOD_VERSION", tasks.METHOD_VERSION + 1)
    assert before.isdisjoint(u.key for u in plan.build(small()) if u.key != "analysis")


def test_a_run_of_another_method_version_is_not_resumed_unless_forced(tmp_path):
    import taskonomy_ray
    from taskonomy_ray import tasks
    from taskonomy_ray.sweep import guard
    from taskonomy_ray.tables import Storage

    st, cfg = Storage(str(tmp_path / "store")), small(data={"root": str(tmp_path / "none")})
    guard.guard_run(st, cfg)
    assert st.read_json("run.json")["method"] == tasks.METHOD_VERSION
    old = {k: v for k, v in st.read_json("run.json").items() if k != "method"}
    st.write_json("run.json", {**old, "version": "0.0.9"})  # before versions were recorded: 1
    with pytest.raises(ConfigError, match="computed under method version 1; this taskonomy-ray "
                                          f"computes version {tasks.METHOD_VERSION}.*0.0.9"):
        guard.guard_run(st, cfg)
    guard.guard_run(st, cfg, force=True)  # recomputed under this release, which it now names
    assert st.read_json("run.json")["method"] == tasks.METHOD_VERSION
    assert st.read_json("run.json")["version"] == taskonomy_ray.__version__


def test_unknown_workflow_key_suggests_the_right_one():
    with pytest.raises(UnknownNameError, match="did you mean 'regimes'"):
        config.from_dict({"name": "t", "regime": [1]})


def test_target_without_gold_network_is_refused():
    with pytest.raises(ConfigError, match="not in `tasks`"):
        config.from_dict({"name": "t", "tasks": ["normal"], "targets": ["depth_zbuffer"]})


def test_bad_network_section_is_refused_at_load_with_suggestion():
    with pytest.raises(UnknownNameError, match="did you mean 'steps'"):
        small(network={"train": {"step": 3}})


@pytest.mark.parametrize("setting, message", [
    ({"seed": "abc"}, "seed must be an integer, got 'abc'"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"regimes": [8.5]}, r"regimes must be a list of integers, e.g. \[128, 512\], got \[8.5\]"),
    ({"max_order": 2.5}, "max_order must be an integer"),
    ({"resources": {"retries": True}}, "resources.retries must be an integer, got True"),
    ({"data": {"root": 5}}, "data.root must be a non-empty string"),
    ({"name": None}, "name must be a non-empty string"),
    ({"tasks": "normal"}, r"tasks must be a list of task names, e.g. \[normal, reshading\]"),
    ({"solve": {"budget": "4"}}, "solve.budget must be a number"),
    ({"solve": {"costs": ["normal"]}}, "solve.costs must be a mapping of task names to numbers"),
    ({"solve": {"importance": {"normal": "high"}}}, "solve.importance must be a mapping"),
    ({"data": {"root": "s3://bucket/data", "render": {"points": 2}}},
     "is a URI, but a dataset is read \\(and rendered\\) as a local folder"),
    ({"data": {"root": "gs://bucket/taskonomy"}}, "mount it on every node .* the mount.s path"),
    ({"data": {"root": "/data", "render": {"views": 2}}},
     "data.render.views must be >= 3: egomotion needs triples of views"),
    ({"resources": [1, 2]}, "resources must be a mapping, got list"),
])
def test_a_setting_of_the_wrong_type_is_refused_at_load_naming_it(setting, message):
    # Before, these loaded and failed on a worker (a TypeError, retried as if transient).
    raw = {"name": "t", "tasks": ["normal"], "regimes": [8], "max_order": 1,
           "data": {"root": "/data"}}
    with pytest.raises(ConfigError, match=message):
        config.from_dict({**raw, **setting})


def test_a_workflow_without_a_name_or_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="the workflow needs a `name`"):
        config.from_dict({"tasks": ["normal"]})
    listed = tmp_path / "wf.yaml"
    listed.write_text("- normal\n- reshading\n")
    with pytest.raises(ConfigError, match=r"workflow file .*wf\.yaml must hold a mapping"):
        config.load(listed)
    listed.write_bytes(b"\xff\xfename: t\n")  # (a traceback before)
    with pytest.raises(ConfigError, match=r"wf\.yaml is not UTF-8 text .*give a workflow YAML"):
        config.load(listed)
    with pytest.raises(ConfigError, match=r"cannot read workflow file .*: Is a directory"):
        config.load(tmp_path)


def test_a_workflow_reads_on_off_and_1e_3_as_yaml_1_2_does(tmp_path):
    # PyYAML reads YAML 1.1, where on/off/yes/no are booleans: `train.amp: on`, as the docs
    # write it, arrived as True and was refused ("should be a str, got True").
    wf = tmp_path / "wf.yaml"
    wf.write_text("name: t\ntasks: [normal]\nregimes: [8]\nmax_order: 1\n"
                  "network: {train: {amp: on, channels_last: true}}\ntransfer: {amp: off}\n")
    cfg = config.load(wf)
    assert cfg.gold_network().train.amp == "on" and cfg.gold_network().train.channels_last is True
    assert cfg.transfer_config().amp == "off"
    wf.write_text("name: t\ntasks: [normal]\nregimes: [8]\nmax_order: 1\n"
                  "network: {train: {lr: 2e-3, steps: 12}}\n")  # (1e-3 was a string)
    assert (cfg := config.load(wf)).gold_network().train.lr == 2e-3
    assert cfg.gold_network().train.steps == 12
    wf.write_text("name: t\ntasks: [normal]\nnetwork: {train: {channels_last: yes}}\n")
    with pytest.raises(ConfigError, match="network.train.channels_last should be a bool, got "
                                          "'yes'"):
        config.load(wf)


@pytest.mark.parametrize("setting, message", [
    ({"tasks": []}, r"tasks is an empty list: .* leave `tasks` out for the full dictionary"),
    ({"targets": []}, r"targets is an empty list"),
    ({"tasks": ["normal", "normal", "reshading"]}, r"tasks lists 'normal' more than once"),
    ({"tasks": ["colorization", "jigsaw"]}, r"no task in `tasks` \(colorization, jigsaw\) can be "
                                            r"a target: .* are source-only"),
])
def test_a_task_list_or_name_that_would_surprise_is_refused_at_load(setting, message):
    # Before: [] meant the full 26-task sweep, duplicates merged silently, and source-only
    # tasks trained for an analysis that then failed.
    raw = {"name": "t", "tasks": ["normal", "reshading"], "regimes": [8], "max_order": 1}
    with pytest.raises(ConfigError, match=message):
        config.from_dict({**raw, **setting})


def test_a_name_may_not_put_the_default_storage_outside_runs_but_old_names_still_load():
    raw = {"tasks": ["normal", "reshading"], "regimes": [8], "max_order": 1}
    with pytest.raises(ConfigError, match=r"name '../../elsewhere' would put the default "
                                          r"storage runs/<name> elsewhere: give --storage"):
        config.default_storage(config.from_dict({**raw, "name": "../../elsewhere"}))
    stored = config.from_dict({**raw, "name": "mini v2 (bf16)"}).to_json()  # as run.json holds
    assert config.default_storage(config.from_dict(stored)) == "runs/mini v2 (bf16)"


def test_bad_transfer_section_is_refused_at_load_not_on_a_worker():
    # Read by the feature and transfer units only, after every gold network has trained.
    with pytest.raises(UnknownNameError, match="did you mean 'steps'"):
        small(transfer={"stepz": 40})
    with pytest.raises(ConfigError, match="transfer.label_memory_gb must be >= 0"):
        small(transfer={"label_memory_gb": -1})
    with pytest.raises(ConfigError, match="transfer"):
        small(transfer={"steps": "many"})
    assert small(transfer={"steps": 7}).transfer_config().steps == 7


def test_a_beam_ranks_again_when_its_widths_top_order_or_sources_change():
    # Its key is what a resume trusts: a kept choice would train no order 3 after raising
    # max_order, keep order-3 groups after lowering it, and never rank an added task.
    def beams(**kw):
        return {u.params["target"]: u.key for u in plan.build(small(**kw)) if u.stage == "beam"}

    four = ["normal", "depth_zbuffer", "reshading", "edge_texture"]
    base = beams(tasks=four, max_order=2, beam=[3, 3, 3])
    assert base == beams(tasks=four, max_order=2, beam=[3, 3, 3])
    assert base == beams(tasks=four, max_order=2, beam=[3, 2, 3])  # order 3's width: unused
    for changed in (beams(tasks=four, max_order=3, beam=[3, 3, 3]),
                    beams(tasks=four, max_order=2, beam=[2, 3, 3]),
                    beams(tasks=[*four, "keypoints2d"], max_order=2, beam=[3, 3, 3])):
        assert set(changed.values()).isdisjoint(base.values())


@pytest.mark.parametrize("setting, message", [
    ({"max_order": 3, "beam": [4, 2, 5]}, r"beam \[4, 2, 5\]: beam width 2 for order 3 picks no "
                                          r"3-set; use a width of at least 3"),
    ({"max_order": 3}, r"max_order 3 combines 3 sources besides the target and `random`, and "
                       r"`tasks` leaves 2; set max_order to at most 2 or add tasks"),
])
def test_a_beam_that_cannot_choose_is_refused_at_load_not_after_first_order(
        setting, message, tmp_path):
    import yaml

    with pytest.raises(ConfigError, match=message):
        small(**setting).check_beam()
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump({"name": "t", "tasks": ["normal", "depth_zbuffer", "reshading"],
                                  **setting}))
    with pytest.raises(ConfigError, match=message):  # what `sweep` and `check` load
        config.load(wf)
    small(**setting)  # a stored run's config (an older version's) is still read
    small(max_order=2, beam=[4, 2, 5]).check_beam()  # an unused width is no error
    small(tasks=["normal"], max_order=1).check_beam()  # first order alone needs no other task


def test_execution_only_settings_leave_unit_keys_alone():
    # Label memory, loader processes and resources change how units run, not what they compute:
    # changing them on a resumed run must not recompute finished units.
    keys = [u.key for u in plan.build(small())]
    how = small(transfer={"label_memory_gb": 0.5, "num_workers": 2},
                resources={"cpus_per_unit": 2, "gpus_per_unit": 0.5, "transfer_memory_gb": 6,
                           "queue_slack": 4, "retries": 5})
    assert [u.key for u in plan.build(how)] == keys
    assert "transfer.num_workers" in config.EXECUTION_ONLY_SETTINGS
    assert "transfer.steps" not in config.EXECUTION_ONLY_SETTINGS
    assert "resources.gold_workers" not in config.EXECUTION_ONLY_SETTINGS  # per-worker BN


def test_resume_accepts_new_execution_settings_and_records_them(tmp_path):
    from taskonomy_ray.sweep.guard import guard_run
    from taskonomy_ray.tables import RUN_FILE, Storage

    st = Storage(str(tmp_path))
    guard_run(st, small())
    guard_run(st, small(transfer={"num_workers": 2}, resources={"transfer_memory_gb": 6}))
    recorded = st.read_json(RUN_FILE)["config"]
    assert recorded["transfer"] == {"num_workers": 2}
    assert recorded["resources"]["transfer_memory_gb"] == 6
    with pytest.raises(ConfigError, match=r"(?s)transfer.steps: \"<absent>\" -> 7"):
        guard_run(st, small(transfer={"num_workers": 2, "steps": 7}))


def test_a_relative_data_root_read_from_another_directory_is_refused(tmp_path, monkeypatch):
    from taskonomy_ray.sweep.guard import guard_run
    from taskonomy_ray.tables import RUN_FILE, Storage

    st = Storage(str(tmp_path / "store"))
    cfg = small(data={"root": "data/mini"})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    guard_run(st, cfg)
    assert st.read_json(RUN_FILE)["data_root"] == str(tmp_path / "a" / "data" / "mini")
    guard_run(st, cfg)  # the same place: a resume
    monkeypatch.chdir(tmp_path / "b")  # the same keys would now read another folder
    with pytest.raises(ConfigError, match=f"data root {tmp_path / 'a'}/data/mini.*Run from "
                                          "the directory the run started in.*--force-config to "
                                          "continue with it .* everything done is kept"):
        guard_run(st, cfg)
    # --data elsewhere changes the root as written, and with it every unit's key: the advice
    # is a link at the old path, not --force-config (which, followed, reran all 32 units).
    moved = small(data={"root": str(tmp_path / "b" / "data")})
    with pytest.raises(ConfigError, match=f"run from the directory the run started in with "
                                          f"data.root 'data/mini' and no --data.*ln -s "
                                          f"{tmp_path / 'b'}/data {tmp_path / 'a'}/data/mini.*"
                                          "every unit would run again"):
        guard_run(st, moved)
    # Following it keeps the run: the old path links to the data, the root reads as before.
    (tmp_path / "b" / "data").mkdir(parents=True)
    (tmp_path / "a" / "data").mkdir()
    (tmp_path / "a" / "data" / "mini").symlink_to(tmp_path / "b" / "data")
    monkeypatch.chdir(tmp_path / "a")
    guard_run(st, cfg)
    monkeypatch.chdir(tmp_path / "b")
    guard_run(st, cfg, force=True)  # the user says it is the same dataset, moved
    assert st.read_json(RUN_FILE)["data_root"] == str(tmp_path / "b" / "data" / "mini")


def test_a_split_file_becomes_building_lists_that_unit_keys_hash(tmp_path):
    from taskonomy_ray.sweep import units

    split = tmp_path / "train_val_test_tiny.csv"
    split.write_text("id,train,val,test\nb1,1,0,0\nb2,0,1,0\nb3,0,0,1\n")
    data = {"root": "x", "split_file": str(split)}
    cfg = small(data=data)
    assert cfg.to_json()["data"]["buildings"] == {"train": ["b1"], "val": ["b2"], "test": ["b3"]}
    assert units.splits(cfg).lists == {"train": ("b1",), "val": ("b2",), "test": ("b3",)}
    assert plan.gold_key(cfg, "normal") != plan.gold_key(small(data={"root": "x"}), "normal")
    assert config.from_dict(cfg.to_json()) == cfg  # what units receive: the lists themselves
    split.write_text("id,train,val,test\nb1,1,0,0\nb2,0,0,1\nb3,0,0,1\n")  # edited file
    assert config.diff(cfg.to_json(), small(data=data).to_json()) == [
        'data.buildings.test: ["b3"] -> ["b2", "b3"]', 'data.buildings.val: ["b2"] -> []']
    with pytest.raises(ConfigError, match="data.split_file or data.buildings, not both"):
        small(data={**data, "buildings": {"train": ["b1"], "val": [], "test": []}})
    with pytest.raises(ConfigError, match="cannot read the split file"):
        small(data={"root": "x", "split_file": str(tmp_path / "none.csv")})
    with pytest.raises(ConfigError, match="'b1' is in both train and test"):
        small(data={"root": "x", "buildings": {"train": ["b1"], "val": [], "test": ["b1"]}})


def test_a_resume_on_a_root_whose_buildings_changed_is_refused_naming_them(tmp_path):
    # Splits are fractions of the root's buildings: one more building moves images between
    # train, val and test under the same unit keys, mixing two splits in one run.
    import shutil

    from fixtures import make_root

    from taskonomy_ray.sweep.guard import guard_run, record_split
    from taskonomy_ray.tables import RUN_FILE, Storage

    root = make_root(tmp_path / "data", buildings=4, points=2, views=1, size=16)
    st = Storage(str(tmp_path / "store"))
    cfg = small(data={"root": str(root)})
    guard_run(st, cfg)
    first = st.read_json(RUN_FILE)["splits"]
    assert sorted(sum(first.values(), [])) == [f"building{i}" for i in range(4)]
    guard_run(st, cfg)  # unchanged: a resume
    shutil.copytree(root / "building0", root / "building9")
    with pytest.raises(ConfigError, match=r"building split .* \(.*\+building9.*new run"):
        guard_run(st, cfg)
    reseeded = small(data={"root": str(root), "split_seed": 5})  # a setting: said as such
    with pytest.raises(ConfigError, match=r"another config; differences:\n  data.split_seed"):
        guard_run(st, reseeded)
    guard_run(st, cfg, force=True)
    assert st.read_json(RUN_FILE)["splits"] != first
    run = st.read_json(RUN_FILE)
    st.write_json(RUN_FILE, {**run, "version": "0.0.1"})
    guard_run(st, cfg)  # a resume by a newer version keeps the version that started the run
    assert st.read_json(RUN_FILE)["version"] == "0.0.1"
    # A render's split is recorded once the render is complete, not from a partial one.
    rendered = small(data={"root": str(root), "render": {"points": 2, "views": 3, "size": 16}})
    other = Storage(str(tmp_path / "other"))
    guard_run(other, rendered)  # this root is not the workflow's finished render
    assert "splits" not in other.read_json(RUN_FILE)
    record_split(other, rendered)
    assert "splits" not in other.read_json(RUN_FILE)


def test_transfer_units_reserve_the_configured_memory():
    from taskonomy_ray.sweep.resources import options

    cfg = small(resources={"transfer_memory_gb": 6.5, "gold_trainer": "task"})
    by_stage = {u.stage: options(cfg)(u) for u in plan.build(cfg)}
    assert by_stage["transfer"]["memory"] == 6_500_000_000
    assert all("memory" not in o for s, o in by_stage.items() if s != "transfer")
    assert "memory" not in options(small())(next(u for u in plan.build(small())
                                                 if u.stage == "transfer"))
    with pytest.raises(ConfigError, match="transfer_memory_gb must be >= 0"):
        small(resources={"transfer_memory_gb": -1})


def test_scratch_networks_take_a_gold_workers_share_not_a_transfers():
    # A scratch network is the gold network's training on a regime's subset: at paper scale a
    # transfer's quarter or half of a GPU would not hold it.
    from taskonomy_ray.sweep.resources import cost, options

    cfg = small(resources={"gold_trainer": "task", "gold_cpus_per_worker": 6,
                           "gold_gpus_per_worker": 1, "cpus_per_unit": 2, "gpus_per_unit": 0.5})
    scratch = next(u for u in plan.build(cfg) if u.stage == "scratch")
    assert options(cfg)(scratch)["num_gpus"] == 1 and options(cfg)(scratch)["num_cpus"] == 6
    assert cost(cfg)(scratch) == 6


def test_data_parallel_gold_training_needs_ray_train_and_a_batch_that_splits():
    with pytest.raises(ConfigError, match="gold_trainer: ray_train"):
        small(resources={"gold_trainer": "task", "gold_workers": 2})
    with pytest.raises(ConfigError, match="multiple of the worker count"):
        small(resources={"gold_workers": 3}, network={"train": {"batch_size": 16}})
    assert small(resources={"gold_workers": 4}).resources.gold_workers == 4


def test_gold_networks_trained_data_parallel_are_other_units_and_so_is_all_built_on_them():
    # Replicas split each batch, so batch norm's statistics and the networks differ: a forced
    # resume from 1 to 2 workers kept the networks one worker had trained, under a run.json
    # that said 2. Scratch networks and the random encoder's features train alone either way.
    one = {u.key: u.stage for u in plan.build(small())}
    assert one == {u.key: u.stage for u in plan.build(small(resources={"gold_workers": 1}))}
    two = {u.key for u in plan.build(small(resources={"gold_workers": 2}))}
    kept = {k for k in one if k in two}
    assert all(one[k] in ("render", "scratch", "features", "analysis") for k in kept)
    assert {k for k in kept if one[k] == "features"} == {
        k for k, stage in one.items() if stage == "features" and k.startswith("features-random")}
    assert any(one[k] == "scratch" for k in kept)


@pytest.mark.parametrize(("workers", "gpus"), [(2, 0.5), (1, 2.0), (3, 1.5)])
def test_gold_workers_get_one_whole_gpu_each_or_a_share_when_alone(workers, gpus):
    # NCCL refuses two ranks on one GPU; a worker trains on one device, a second would idle.
    with pytest.raises(ConfigError, match="gold_gpus_per_worker is"):
        small(resources={"gold_workers": workers, "gold_gpus_per_worker": gpus})
    assert small(resources={"gold_workers": 2, "gold_gpus_per_worker": 1}).resources
    assert small(resources={"gold_gpus_per_worker": 0.5}).resources.gold_gpus_per_worker == 0.5


def test_config_diff_names_what_changed():
    a, b = small().to_json(), small(regimes=[32]).to_json()
    assert config.diff(a, b) == ["regimes: [16] -> [32]"]


def run_all(s, fail=None, digest=None):
    """Step the scheduler like the runner does; `fail(unit)` returns an error or None.

    `digest(unit)`: the digest of what the unit writes (records it and what it read).
    """
    order = []
    while not s.finished:
        ready = s.ready()
        assert ready, "scheduler stuck"
        assert len(order) < 20 * len(s.units) + 100, "scheduler never finishes"
        for u in ready:
            s.started(u)
            order.append(u.key)
            err = fail(u) if fail else None
            if err:
                s.failed(u, err, transient=err.startswith("transient"),
                         node_lost="lost node" in err)
            else:
                s.succeeded(u, Version(digest(u), s.inputs_of(u)) if digest else None)
    return order


def test_dependencies_run_first_and_the_analysis_last():
    order = run_all(Scheduler(plan.build(small()), is_done=lambda u: False))
    pos = {k: i for i, k in enumerate(order)}
    units = {u.key: u for u in plan.build(small())}
    for k, u in units.items():
        assert all(pos[d] < pos[k] for d in u.deps)
    assert order[-1] == "analysis"


def test_a_beam_waits_for_its_first_order_group_and_gold_network_only():
    # Ranking reads affinities alone: the scratch network (a whole training) is not its input.
    cfg = small()
    for beam in (u for u in plan.build(cfg) if u.stage == "beam"):
        target, regime = beam.params["target"], beam.params["regime"]
        first = plan.transfer_key(cfg, target, regime, 1, [[s] for s in cfg.sources])
        assert set(beam.deps) == {first, plan.gold_key(cfg, target)}


def test_beam_result_schedules_higher_orders_of_that_target_only():
    cfg = small()

    def expand(u):
        if u.stage != "beam":
            return []
        return plan.expand_beam(cfg, u, {"2": [["normal", "reshading"]]})

    s = Scheduler(plan.build(cfg), is_done=lambda u: False, expand=expand)
    beam = next(u for u in s.units.values() if u.stage == "beam")
    for d in beam.deps:  # finish only what this beam needs, and the representations
        s.state[d] = "done"
    for u in s.units.values():
        if u.stage in ("features", "gold", "render"):
            s.state[u.key] = "done"
    added = s.succeeded(beam)
    assert [u.params["order"] for u in added] == [2]
    assert added[0].params["target"] == beam.params["target"]
    assert added[0] in s.ready()  # no global barrier: ready while other targets are pending


def test_a_plan_whose_unit_depends_on_an_unplanned_one_is_refused_naming_both():
    units = [plan.Unit("transfer-x", "transfer", {}, deps=("gold-normal-y",))]
    with pytest.raises(ConfigError, match=r"unit transfer-x depends on unplanned units "
                                          r"\['gold-normal-y'\]"):
        Scheduler(units, is_done=lambda u: False)


def test_done_units_are_skipped_on_resume():
    cfg = small()
    done = {u.key for u in plan.build(cfg) if u.stage in ("render", "gold")}
    s = Scheduler(plan.build(cfg), is_done=lambda u: u.key in done)
    order = run_all(s)
    assert done.isdisjoint(order)


def test_an_adopted_analysis_runs_again_once_any_other_unit_finishes():
    # The analysis summarises every loss table: adopted from an earlier run (which may have had
    # failures, or another config), it is stale as soon as this run finishes any other unit.
    cfg = small()
    transfer = next(u.key for u in plan.build(cfg) if u.stage == "transfer")
    s = Scheduler(plan.build(cfg), is_done=lambda u: u.key != transfer)
    assert s.state["analysis"] == "done"
    assert run_all(s) == [transfer, "analysis"]
    unchanged = Scheduler(plan.build(cfg), is_done=lambda u: True)
    assert run_all(unchanged) == []  # nothing ran, nothing to redo


def test_deterministic_failure_fails_its_dependents_and_the_rest_goes_on():
    cfg = small()
    bad = plan.gold_key(cfg, "reshading")
    s = Scheduler(plan.build(cfg), is_done=lambda u: False)
    run_all(s, fail=lambda u: "non-finite loss" if u.key == bad else None)
    failures = s.failures()
    assert failures[bad] == "non-finite loss"
    assert all("reshading" in k or "its dependency" in e for k, e in failures.items() if k != bad)
    assert s.state[plan.gold_key(cfg, "normal")] == "done"
    assert s.tries[bad] == 1


def test_a_failed_source_costs_its_transfers_not_every_group_that_reads_it():
    # Every first-order group reads every source: without optional deps one failed gold
    # network failed every group of the sweep, and with them every target's ranking.
    cfg = small()
    bad = plan.gold_key(cfg, "reshading")
    s = Scheduler(plan.build(cfg), is_done=lambda u: False)
    run_all(s, fail=lambda u: "non-finite loss" if u.key == bad else None)
    lost = sorted(plan.features_key(cfg, "reshading", i) for i in ("r16", "test"))
    firsts = [k for k, u in s.units.items() if u.stage == "transfer"]
    assert len(firsts) == 3 and all(s.state[k] == "done" for k in firsts)
    assert {k: sorted(v) for k, v in s.partial.items()} == dict.fromkeys(firsts, lost)
    beams = {u.params["target"]: s.state[k] for k, u in s.units.items() if u.stage == "beam"}
    assert beams == {"normal": "done", "depth_zbuffer": "done", "reshading": "failed"}
    assert s.state["analysis"] == "done"
    assert all(s.failures()[k].startswith("not run") for k in lost)


def test_a_resume_that_completes_a_failed_source_retrains_only_the_groups_without_it():
    cfg = small()
    gold = plan.gold_key(cfg, "reshading")
    lost = {plan.features_key(cfg, "reshading", i) for i in ("r16", "test")}
    units = plan.build(cfg)
    beam = {u.params["target"]: u.key for u in units if u.stage == "beam"}
    group = next(u.key for u in units if u.stage == "transfer" and u.params["target"] == "normal")
    not_done = {gold, beam["reshading"]} | lost

    def resumed():  # `normal`'s first-order group ran without reshading in an earlier run
        return Scheduler(plan.build(cfg), is_done=lambda u: u.key not in not_done,
                         went_without=lambda u: lost if u.key == group else ())

    s = resumed()
    assert s.partial == {group: sorted(lost)}
    order = run_all(s)
    assert set(order) == not_done | {group, beam["normal"], "analysis"}
    assert order.index(group) < order.index(beam["normal"])  # its ranking reads the new group
    assert s.partial == {}
    again = resumed()  # the source fails again: the partial group is kept, not retrained
    order = run_all(again, fail=lambda u: "non-finite loss" if u.key == gold else None)
    assert group not in order and again.partial == {group: sorted(lost)}


def _partial_normal(cfg):
    """Keys of a resume in which `normal`'s first-order group ran without reshading."""
    units = plan.build(cfg)
    lost = sorted(plan.features_key(cfg, "reshading", i) for i in ("r16", "test"))
    group = next(u.key for u in units if u.stage == "transfer" and u.params["target"] == "normal")
    beam = next(u.key for u in units if u.stage == "beam" and u.params["target"] == "normal")
    return lost, group, beam, (lambda u: lost if u.key == group else ())


def test_a_partial_group_whose_missing_source_is_done_by_now_is_retrained():
    # A run that completed reshading and then died before retraining the group: all adopted.
    cfg = small()
    lost, group, beam, without = _partial_normal(cfg)
    s = Scheduler(plan.build(cfg), is_done=lambda u: True, went_without=without)
    assert run_all(s) == [group, beam, "analysis"] and s.partial == {}


def test_a_beam_ranked_on_a_partial_group_ranks_again_once_the_group_is_complete():
    # A run retrained the group and died before the beam: only the beam's record says so.
    cfg = small()
    lost, group, beam, _ = _partial_normal(cfg)
    s = Scheduler(plan.build(cfg), is_done=lambda u: True,
                  went_without=lambda u: lost if u.key == beam else ())
    assert run_all(s) == [beam, "analysis"]


def test_what_a_stored_result_lacked_is_not_waited_for_once_it_left_the_plan():
    # E.g. the failed source dropped from the workflow and the run resumed with --force-config.
    cfg = small()
    lost, group, beam, _ = _partial_normal(cfg)
    s = Scheduler(plan.build(cfg), is_done=lambda u: True,
                  went_without=lambda u: ["features-gone-r16-0"] if u.key == beam else ())
    assert s.partial == {} and run_all(s) == []


def test_a_beam_waits_for_a_partial_group_whose_missing_source_may_still_come():
    cfg = small()
    lost, group, beam, without = _partial_normal(cfg)
    not_done = {plan.gold_key(cfg, "reshading"), beam, "analysis", *lost,
                plan.beam_key(cfg, "reshading", 16)}
    s = Scheduler(plan.build(cfg), is_done=lambda u: u.key not in not_done,
                  went_without=without)
    order = run_all(s)
    assert order.count(beam) == 1 and order.index(group) < order.index(beam)
    # ...and, when the source fails for good, ranks what the partial group has.
    s = Scheduler(plan.build(cfg), is_done=lambda u: u.key not in not_done,
                  went_without=without)
    order = run_all(s, fail=lambda u: "non-finite loss" if u.stage == "gold" else None)
    assert beam in order and group not in order


def test_a_beam_ranked_again_drops_the_higher_orders_only_its_old_ranking_chose():
    # Kept, the old groups would cost training and could hold a transfer the new groups hold
    # too: the analysis would read it twice.
    cfg = small()
    lost, group, beam, without = _partial_normal(cfg)
    chosen = [["depth_zbuffer", "normal"], ["depth_zbuffer", "random"]]

    def expand(u):
        return plan.expand_beam(cfg, u, {"2": chosen}) if u.key == beam else []

    not_done = {plan.gold_key(cfg, "reshading"), *lost, plan.beam_key(cfg, "reshading", 16)}
    s = Scheduler(plan.build(cfg), is_done=lambda u: u.key not in not_done,
                  went_without=without, expand=expand)
    old = [k for k, u in s.units.items() if u.params.get("order") == 2]
    chosen = [["depth_zbuffer", "normal"], ["normal", "reshading"]]  # reshading ranks now
    run_all(s)
    now = [u.params["source_sets"] for u in s.units.values() if u.params.get("order") == 2]
    assert now == [plan.spelt(chosen)] and not set(old) & set(s.units)
    assert not set(old) & set(s.state)
    chosen = []  # ranked again, twice, choosing nothing: nothing left, nothing dropped twice
    for _ in range(2):
        s.succeeded(s.units[beam])
    assert not [u for u in s.units.values() if u.params.get("order") == 2]


def test_a_group_is_the_same_unit_whatever_order_a_beam_ranked_its_sets_in():
    # Each head trains as it would alone: a re-ranking that keeps the sets keeps the trained group.
    cfg = small()
    ranked = plan.transfer_unit(cfg, "normal", 16, 2, [["reshading", "normal"],
                                                       ["depth_zbuffer", "normal"]])
    other = plan.transfer_unit(cfg, "normal", 16, 2, [["depth_zbuffer", "normal"],
                                                      ["normal", "reshading"]])
    assert ranked.key == other.key
    # (each set, then the list, in registry order: reshading, normal, depth_zbuffer)
    assert ranked.params["source_sets"] == [["reshading", "normal"], ["normal", "depth_zbuffer"]]


def test_higher_orders_a_beam_may_drop_wait_for_it_to_rank_again():
    # The group the beam ranked was partial and its missing source comes in this run: the beam
    # ranks again, and the groups its old ranking chose must not train before it has.
    cfg = small()
    lost, group, beam, without = _partial_normal(cfg)
    picks = {"old": [["depth_zbuffer", "random"]], "new": [["reshading", "normal"]]}
    chosen = picks["old"]

    def expand(u):
        return plan.expand_beam(cfg, u, {"2": chosen}) if u.key == beam else []

    old = plan.expand_beam(cfg, plan.Unit(beam, "beam", {"target": "normal", "regime": 16}),
                           {"2": picks["old"]})[0].key
    not_done = {plan.gold_key(cfg, "reshading"), *lost, plan.beam_key(cfg, "reshading", 16), old}
    s = Scheduler(plan.build(cfg), is_done=lambda u: u.key not in not_done,
                  went_without=without, expand=expand)
    assert old in s.units and old not in {u.key for u in s.ready()}
    chosen = picks["new"]
    order = run_all(s)
    assert old not in order and order.index(group) < order.index(beam)
    assert [u.params["source_sets"] for u in s.units.values() if u.params.get("order") == 2] \
        == [picks["new"]]


def test_higher_orders_chosen_by_a_beam_that_then_fails_are_not_run():
    cfg = small()
    lost, group, beam, without = _partial_normal(cfg)

    def expand(u):
        return plan.expand_beam(cfg, u, {"2": [["depth_zbuffer", "random"]]}) if u.key == beam \
            else []

    s = Scheduler(plan.build(cfg), is_done=lambda u: u.key in (beam, group),
                  went_without=without, expand=expand)
    (old,) = s.expanded[beam]
    run_all(s, fail=lambda u: "no gold losses" if u.key == beam else None)
    assert s.state[old] == "failed" and s.errors[old] == f"not run: {beam}, which chose it, failed"


def test_an_analysis_of_another_plan_runs_again_though_every_unit_is_adopted():
    # A --force-config resume to config B, then back to A: A's units are all in storage, and
    # the analysis adopted as done held B's affinities.
    units = plan.build(small())
    others = [u.key for u in units if not u.barrier]

    def adopted(read):
        warns = []
        s = Scheduler(units, is_done=lambda u: True, warn=warns.append,
                      version=lambda u: Version("d", read if u.barrier else {}))
        return s.state["analysis"], warns

    assert adopted(dict.fromkeys(others, "d")) == ("done", [])
    state, warns = adopted(dict.fromkeys([*others[1:], "transfer-of-plan-b"], "d"))
    assert state == "planned"
    assert warns == ["analysis runs again: the plan has 1 units it did not read and lacks 1 it "
                     "read (the config changed since)"]
    assert adopted({})[0] == "done"  # an older run's analysis, with no record: not judged
    # Higher orders that adopted beams add back are units it read too: a plain resume keeps it.
    cfg = small()

    def expand(u):
        return plan.expand_beam(cfg, u, {"2": [["depth_zbuffer", "random"]]}) \
            if u.stage == "beam" else []

    def resume(read):
        return Scheduler(plan.build(cfg), is_done=lambda u: True, expand=expand,
                         version=lambda u: Version("d", read if u.barrier else {}))

    every = [k for k, u in resume({}).units.items() if not u.barrier]
    assert any(resume({}).units[k].params.get("order") == 2 for k in every)
    assert resume(dict.fromkeys(every, "d")).state["analysis"] == "done"


def test_a_failed_render_blocks_every_other_unit_instead_of_running_them_only_to_fail():
    # Transfer groups (every dep optional) and the analysis (a barrier) used to run anyway and
    # fail on missing inputs: one bad data root read as dozens of failures.
    s = Scheduler(plan.build(small()), is_done=lambda u: False)
    order = run_all(s, fail=lambda u: "DataError: bad root" if u.stage == "render" else None)
    (render,) = [k for k, u in s.units.items() if u.stage == "render"]
    assert order == [render]
    assert set(s.failures()) == set(s.units)
    assert set(s.blocked_units()) == set(s.units) - {render}
    transfers = [k for k, u in s.units.items() if u.stage == "transfer"]
    assert transfers and all(s.errors[k].startswith("not run: every input failed (the first: "
                                                    "features-") for k in transfers)
    assert s.errors["analysis"] == "not run: no unit that writes per-image losses succeeded"
    stages = [s.units[k].stage for k in s.blocked_units()]
    assert stages == sorted(stages, key=plan.STAGES.index)  # nearest the cause first
    # With the render kept from before and every network failing, the analysis still has
    # nothing to read: blocked too, not run only to fail.
    s = Scheduler(plan.build(small()), is_done=lambda u: u.stage == "render")
    run_all(s, fail=lambda u: "TrainingError: diverged" if u.stage in ("gold", "scratch")
            or u.key.startswith("features-random") else None)
    assert "analysis" in s.blocked_units()


def test_a_transfer_group_with_one_source_left_still_runs():
    cfg = small()
    gold = {plan.gold_key(cfg, t) for t in ("normal", "depth_zbuffer")}
    s = Scheduler(plan.build(cfg), is_done=lambda u: False)
    order = run_all(s, fail=lambda u: "TrainingError: diverged" if u.key in gold else None)
    group = plan.transfer_key(cfg, "reshading", 16, 1, [[t] for t in cfg.sources])
    assert group in order and s.state[group] == "done"  # from reshading itself and random
    assert group not in s.blocked_units() and not set(gold) & set(s.blocked_units())


@pytest.mark.parametrize("redo", ["group", "gold"])
def test_the_choice_of_a_done_beam_whose_input_fails_on_rerun_still_runs(redo):
    # A resume retrains the beam's first-order group (or gold network), whose file was set
    # aside, and it fails for good: the stored choice stands; held for ever, the sweep would
    # end with it planned and no analysis.
    cfg = small()
    lost, group, beam, _ = _partial_normal(cfg)
    redo = group if redo == "group" else plan.gold_key(cfg, "normal")
    pick = {"2": [["reshading", "depth_zbuffer"]]}

    def expand(u):
        return plan.expand_beam(cfg, u, pick) if u.key == beam else []

    o2 = plan.expand_beam(cfg, plan.Unit(beam, "beam", {"target": "normal", "regime": 16}),
                          pick)[0].key
    s = Scheduler(plan.build(cfg), is_done=lambda u: u.key not in {redo, o2, "analysis"},
                  expand=expand)
    order = run_all(s, fail=lambda u: "DataError: boom" if u.key == redo else None)
    assert s.finished and o2 in order and order[-1] == "analysis"


def test_transient_failures_are_retried_a_bounded_number_of_times():
    cfg = small(resources={"retries": 2})
    flaky = plan.gold_key(cfg, "normal")
    s = Scheduler(plan.build(cfg), is_done=lambda u: False, retries=2)
    run_all(s, fail=lambda u: "transient: node died" if u.key == flaky else None)
    assert s.tries[flaky] == 3 and s.state[flaky] == "failed"


def test_attempts_cut_short_by_a_lost_node_do_not_spend_the_retries():
    cfg = small()
    gold = plan.gold_key(cfg, "normal")
    s = Scheduler(plan.build(cfg), is_done=lambda u: False, retries=1, node_losses=3)
    lost = "transient: lost node"
    events = iter([lost, lost, "transient: crash", lost])
    run_all(s, fail=lambda u: next(events, None) if u.key == gold else None)
    # three preemptions and one crash, within node_losses 3 and retries 1: trained in the end
    assert s.state[gold] == "done" and s.tries[gold] == 2 and s.lost[gold] == 3

    s = Scheduler(plan.build(cfg), is_done=lambda u: False, retries=1, node_losses=2)
    run_all(s, fail=lambda u: lost if u.key == gold else None)
    # a unit that loses its node every time is not retried forever: node_losses, then retries
    assert s.state[gold] == "failed" and s.lost[gold] == 2 and s.tries[gold] == 2


def test_ledger_history_reads_running_done_and_failed(tmp_path):
    from taskonomy_ray.sweep import ledger
    from taskonomy_ray.tables import Storage

    st = Storage(str(tmp_path))
    assert ledger.history(st, "u").state == "planned"
    ledger.record(st, "u", "started")
    assert ledger.history(st, "u").state == "running"
    ledger.record(st, "u", "failed", error="boom")
    ledger.record(st, "u", "started")
    ledger.record(st, "u", "done")
    h = ledger.history(st, "u")
    assert (h.state, h.attempts, h.completions, h.last_error) == ("done", 2, 1, "boom")


def test_ledger_events_keep_their_order_when_a_later_hosts_clock_is_behind(tmp_path,
                                                                             monkeypatch):
    # Attempt started on a host whose clock is 60 s ahead; it died; another host reran the unit.
    from taskonomy_ray.sweep import ledger
    from taskonomy_ray.tables import Storage

    st = Storage(str(tmp_path))
    clock = iter([1_000_060.0, 1_000_000.0, 1_000_030.0])
    monkeypatch.setattr(ledger.time, "time", lambda: next(clock))
    ledger.record(st, "u", "started")
    ledger.record(st, "u", "started")
    ledger.record(st, "u", "done", digest="d1", inputs={})
    h = ledger.history(st, "u")
    assert [e["event"] for e in h.events] == ["started", "started", "done"]
    assert [e["time"] for e in h.events] == [1_000_060.0, 1_000_000.0, 1_000_030.0]  # as told
    assert h.state == "done" and ledger.version(st, "u").digest == "d1"


def test_a_stale_unit_whose_rerun_failed_or_died_stays_stale_for_the_next_resume(tmp_path):
    # Its outputs are still those computed from the old gold network: adopting them as they are
    # would keep the old representations (and all that reads them) for good.
    from taskonomy_ray.sweep import ledger
    from taskonomy_ray.tables import Storage

    st = Storage(str(tmp_path))
    gold = plan.Unit("gold-a", "gold", {}, (), ("g.json",))
    feats = plan.Unit("features-a", "features", {}, (gold.key,), ("f.json",))

    def resume():
        return Scheduler([gold, feats], is_done=lambda u: all(st.exists(o) for o in u.outputs),
                         version=lambda u: ledger.stored_version(st, u, ledger.version(st, u.key)))

    st.write_json("g.json", {"v": 1})
    st.write_json("f.json", {"v": 1})
    ledger.record(st, gold.key, "done", digest=ledger.outputs_digest(st, gold), inputs={})
    ledger.record(st, feats.key, "done", digest=ledger.outputs_digest(st, feats),
                  inputs={gold.key: ledger.outputs_digest(st, gold)})
    st.write_json("g.json", {"v": 2})  # the gold network ran again, with another result
    ledger.record(st, gold.key, "done", digest=ledger.outputs_digest(st, gold), inputs={})
    assert resume().state[feats.key] == "planned"
    ledger.record(st, feats.key, "started")  # its rerun is cut short (the driver died) ...
    assert resume().state[feats.key] == "planned"
    ledger.record(st, feats.key, "failed", error="TrainingError: x")  # ... or fails
    assert resume().state[feats.key] == "planned"


def test_the_analysis_runs_again_after_a_driver_died_between_a_rerun_and_the_analysis():
    # A unit the analysis alone reads (here a beam) ran again with another result, or one that
    # had failed finished; the driver died before the analysis ran again.
    units = plan.build(small())
    beam = next(u.key for u in units if u.stage == "beam")

    def first_run(fail=None):
        s = Scheduler(units, is_done=lambda u: False, expand=lambda u: [])
        run_all(s, digest=lambda u: f"d-{u.key}", fail=fail)
        return s, {k: Version(f"d-{k}", s.read.get(k, {})) for k in s.units}

    def resume(versions, done=lambda k: True):
        lines = []
        r = Scheduler(units, is_done=lambda u: done(u.key), expand=lambda u: [],
                      version=lambda u: versions[u.key], warn=lines.append)
        return r, lines

    _, stored = first_run()
    assert resume(stored)[0].finished  # nothing changed: nothing runs
    r, lines = resume({**stored, beam: Version("another", stored[beam].inputs)})
    assert [k for k, st in r.state.items() if st == "planned"] == ["analysis"]
    assert lines == [f"analysis runs again: {beam} ran again since, with another result"]

    s, stored = first_run(fail=lambda u: "bad" if u.key == beam else None)
    assert s.state[beam] == "failed" and s.read["analysis"][beam] == "absent"
    r, _ = resume(stored, done=lambda k: k != beam)  # (a resume that retries it ...)
    assert [k for k, st in r.state.items() if st == "planned"] == [beam]
    r, lines = resume(stored)  # (... or one after a run where it succeeded, then died)
    assert [k for k, st in r.state.items() if st == "planned"] == ["analysis"]
    assert lines == [f"analysis runs again: {beam} finished since"]


def test_an_analysis_that_read_a_failed_reruns_old_result_does_not_rerun_at_every_resume():
    # A stale unit's rerun fails for good: its old losses are still in storage, and the
    # analysis reads them. Noted ABSENT, they looked new when it ended: it ran again without
    # end in that run, and again at every resume.
    gold = plan.Unit("x", "gold", {}, (), ("x.pt",))
    group = plan.Unit("a", "transfer", {}, ("x",), ("losses/a.parquet",))
    analysis = plan.Unit("analysis", "analysis", {}, (), ("affinities.parquet",), True)
    stored = {"a": Version("a1", {"x": "x1"}), "analysis": Version("an1", {"x": "x1", "a": "a1"})}

    def resume(done):
        lines = []
        s = Scheduler([gold, group, analysis], is_done=done, version=lambda u: stored[u.key],
                      warn=lines.append, retries=0)
        run_all(s, digest=lambda u: {"x": "x2", "analysis": "an"}[u.key],
                fail=lambda u: "DataError: for good" if u.key == "a" else None)
        return s, lines

    s, _ = resume(lambda u: u.key != "x")  # x reran with another result; a, stale, failed
    assert s.state["a"] == "failed" and s.read["analysis"]["a"] == "a1"  # what it read
    stored.update(x=Version("x2", {}), analysis=Version("an", s.read["analysis"]))
    s, lines = resume(lambda u: True)  # a is stale still and fails again: the analysis waits
    assert s.tries["analysis"] == 0 and not any(line.startswith("analysis") for line in lines)


def test_a_partial_group_a_new_ranking_adds_is_retrained_if_its_missing_source_came_since():
    feats = plan.Unit("features-x", "features", {}, (), ("x",))
    first = plan.Unit("t1", "transfer", {}, (feats.key,), ("t",), optional=(feats.key,))
    beam = plan.Unit("beam", "beam", {}, (first.key,), ("b",))
    pair = plan.Unit("t2", "transfer", {"chosen_by": "beam"}, (feats.key,), ("h",),
                     optional=(feats.key,))
    ranked = []

    def expand(u):  # its first ranking (the adopted one) did not choose t2, the new one does
        if u.key != "beam":
            return []
        ranked.append(u.key)
        return [pair] if len(ranked) > 1 else []

    s = Scheduler([feats, first, beam], is_done=lambda u: u.key != feats.key, expand=expand,
                  went_without=lambda u: [feats.key] if u.key in ("t1", "t2") else [])
    order = run_all(s)
    assert order.count("t2") == 1 and s.state["t2"] == "done" and "t2" not in s.partial


def test_a_ready_beam_runs_before_waiting_transfer_groups():
    cfg = small()
    s = Scheduler(plan.build(cfg), is_done=lambda u: False)
    beam = next(u for u in s.units.values() if u.stage == "beam")
    for key, u in s.units.items():  # everything done but the beams and one transfer group
        if u.stage not in ("beam", "analysis"):
            s.state[key] = "done"
    other = next(u for u in s.units.values()
                 if u.stage == "transfer" and u.key not in beam.deps)
    s.state[other.key] = "planned"
    assert [u.stage for u in s.ready()][:2] == ["beam", "beam"]


def test_test_images_reaches_the_split_and_bad_values_are_refused():
    from taskonomy_ray.sweep.units import splits

    assert splits(small()).test_images is None
    assert splits(small(data={"root": "x", "test_images": 10000})).test_images == 10000
    for bad in (0, -3, 2.5, "all"):
        with pytest.raises(ConfigError, match="data.test_images must be a positive integer"):
            small(data={"root": "x", "test_images": bad})


def test_an_unset_later_setting_keeps_earlier_runs_resumable_with_their_keys():
    # Runs made before data.test_images existed recorded no such key: while it is unset, their
    # config and unit keys are unchanged, so they resume; set, it is a difference like any other.
    before = small().to_json()
    assert "test_images" not in before["data"]
    capped = small(data={"root": "x", "render": {"points": 4, "views": 3, "size": 16},
                         "test_images": 50})
    assert config.diff(before, capped.to_json()) == ['data.test_images: "<absent>" -> 50']
    scored = ("gold", "scratch", "features", "transfer")  # every unit that reads the test split
    assert {u.key for u in plan.build(small())}.isdisjoint(
        u.key for u in plan.build(capped) if u.stage in scored)


def test_status_counts_the_higher_orders_beams_will_choose_and_those_a_failed_beam_never_will(
        tmp_path, capsys):
    from taskonomy_ray import cli
    from taskonomy_ray.sweep import ledger
    from taskonomy_ray.sweep import status as sweep_status
    from taskonomy_ray.tables import Storage

    cfg = small(max_order=2, beam=[3, 3, 3])  # each target: the pair of its 2 other tasks
    st = Storage(str(tmp_path))
    units = plan.build(cfg)
    st.write_json(plan.PLAN_FILE, {"units": [u.to_json() for u in units]})
    failed = plan.beam_key(cfg, "normal", 16)
    ledger.record(st, failed, "started")
    ledger.record(st, failed, "failed", error="no gold losses")
    o2 = sweep_status.status(str(tmp_path))["transfer_orders"]["2"]
    assert (o2["planned"], o2["transfers_planned"], o2["blocked"], o2["done"]) == (3, 3, 1, 0)
    cli.main(["status", str(tmp_path)])
    assert ("transfers of order 2: 0 of 3 trained; groups: 3 planned, 0 done, 0 failed, "
            "1 blocked") in capsys.readouterr().out


def test_status_shows_a_beam_that_failed_ranking_again_as_failed_and_its_choice_blocked(
        tmp_path):
    # Its JSON from the earlier ranking is still there; the ledger says the last try failed.
    from taskonomy_ray.sweep import ledger
    from taskonomy_ray.sweep import status as sweep_status
    from taskonomy_ray.tables import Storage

    cfg = small()
    st = Storage(str(tmp_path))
    units = plan.build(cfg)
    beam = next(u for u in units if u.stage == "beam" and u.params["target"] == "normal")
    (chosen,) = plan.expand_beam(cfg, beam, {"2": [["reshading", "depth_zbuffer"]]})
    st.write_json(plan.PLAN_FILE, {"units": [u.to_json() for u in [*units, chosen]]})
    st.write_json(beam.outputs[0], {"chosen": {"2": [["reshading", "depth_zbuffer"]]}})
    ledger.record(st, beam.key, "started")
    ledger.record(st, beam.key, "failed", error="DataError: no gold losses")
    status = sweep_status.status(str(tmp_path))
    assert status["failures"][beam.key] == "DataError: no gold losses"
    assert status["blocked"][chosen.key] == f"not run: {beam.key}, which chose it, failed"


def test_status_calls_a_group_whose_every_source_failed_and_the_analysis_blocked(tmp_path):
    from taskonomy_ray.sweep import ledger
    from taskonomy_ray.sweep import status as sweep_status
    from taskonomy_ray.tables import Storage

    cfg = small()
    st = Storage(str(tmp_path))
    units = plan.build(cfg)
    st.write_json(plan.PLAN_FILE, {"units": [u.to_json() for u in units]})
    (render,) = [u.key for u in units if u.stage == "render"]
    ledger.record(st, render, "started")
    ledger.record(st, render, "failed", error="DataError: bad root")
    status = sweep_status.status(str(tmp_path))
    assert status["failures"] == {render: "DataError: bad root"}
    assert set(status["blocked"]) == {u.key for u in units} - {render}
    assert status["blocked"]["analysis"] == ("not run: no unit that writes per-image losses "
                                             "succeeded")
    assert status["stages"]["transfer"]["blocked"] == 3 and status["stages"]["analysis"] == {
        **status["stages"]["analysis"], "blocked": 1, "pending": 0}


def _versions(cfg, digest):
    """Every unit as an earlier run recorded it: its digest, and its inputs' as they were."""
    units = plan.build(cfg)
    return {u.key: Version(digest(u.key), {d: digest(d) for d in u.deps}) for u in units}


def test_a_unit_whose_input_ran_again_with_another_result_runs_again():
    # The gold network's checkpoint was lost and retrained, not bit for bit (a GPU): the
    # features cached from the old one, and what read them, must not stay in the results.
    cfg = small()
    gold = plan.gold_key(cfg, "normal")
    stored = _versions(cfg, lambda k: f"old-{k}")
    lines = []
    s = Scheduler(plan.build(cfg), is_done=lambda u: u.key != gold,
                  version=lambda u: stored[u.key], warn=lines.append)
    order = run_all(s, digest=lambda u: f"new-{u.key}")
    features = [k for k, u in s.units.items()
                if u.stage == "features" and u.params["source"] == "normal"]
    assert order[0] == gold and set(features) <= set(order)
    assert {s.units[k].stage for k in order} == {"gold", "features", "transfer", "beam",
                                                   "analysis"}
    untouched = [k for k, u in s.units.items()
                 if u.stage == "features" and u.params["source"] != "normal"]
    assert not set(untouched) & set(order)
    assert any(f"{features[0]} runs again: {gold} ran again since" in line for line in lines)


def test_a_unit_that_ran_again_with_the_same_result_reruns_nothing_that_read_it():
    cfg = small()
    gold = plan.gold_key(cfg, "normal")
    stored = _versions(cfg, lambda k: f"same-{k}")
    s = Scheduler(plan.build(cfg), is_done=lambda u: u.key != gold,
                  version=lambda u: stored[u.key])
    assert run_all(s, digest=lambda u: f"same-{u.key}") == [gold, "analysis"]


def test_a_dependent_left_stale_by_a_driver_that_died_runs_again_on_resume():
    # The input ran again (another result) and the driver died before its dependents reran:
    # the ledger alone says so (the dependents read another version than is there now).
    cfg = small()
    feature = next(u.key for u in plan.build(cfg) if u.stage == "features")
    stored = _versions(cfg, lambda k: f"old-{k}")
    stored[feature] = Version("new", stored[feature].inputs)
    s = Scheduler(plan.build(cfg), is_done=lambda u: True, version=lambda u: stored[u.key])
    readers = {k for k, u in s.units.items() if feature in u.deps}
    assert readers and {k for k in readers if s.state[k] == "planned"} == readers
    assert s.changed_inputs(next(iter(readers))) == [feature]


def test_results_of_an_older_version_without_digests_are_taken_as_they_are():
    cfg = small()
    s = Scheduler(plan.build(cfg), is_done=lambda u: True,
                  version=lambda u: Version())
    assert run_all(s) == []
    # ...and a unit that read an input before digests were recorded is not judged by it.
    feature = next(u.key for u in plan.build(cfg) if u.stage == "features")
    stored = _versions(cfg, lambda k: None if k == feature else f"d-{k}")
    stored[feature] = Version("new", {})
    s = Scheduler(plan.build(cfg), is_done=lambda u: True, version=lambda u: stored[u.key])
    assert all(st == "done" for st in s.state.values())


def test_a_unit_starts_with_the_digests_of_the_inputs_it_will_read():
    cfg = small()
    gold = plan.gold_key(cfg, "normal")
    s = Scheduler(plan.build(cfg), is_done=lambda u: False)
    run_all(s, digest=lambda u: f"d-{u.key}",
            fail=lambda u: "bad labels" if u.key == gold else None)
    t = next(u for u in s.units.values() if u.stage == "transfer")
    seen = s.inputs_of(t)
    normal = {d for d in t.deps if s.units[d].params["source"] == "normal"}
    assert all(seen[d] is None for d in normal)  # failed: nothing was read from them
    assert all(seen[d] == f"d-{d}" for d in set(t.deps) - normal)


def test_a_unit_that_read_an_input_which_ran_again_meanwhile_runs_again():
    # A group started on the old representations while the gold network retrained; the
    # representations came back another, and the group ended on the old ones.
    cfg = small(max_order=1)
    gold = plan.gold_key(cfg, "normal")
    groups = {u.key for u in plan.build(cfg) if u.stage == "transfer"}
    stored = _versions(cfg, lambda k: f"old-{k}")
    s = Scheduler(plan.build(cfg), is_done=lambda u: u.key not in {gold, "analysis", *groups},
                  version=lambda u: stored[u.key])
    group = s.units[sorted(groups)[0]]
    s.started(s.units[gold])
    s.started(group)  # (as a runner whose first ready() held both)
    read = s.inputs_of(group)
    s.succeeded(s.units[gold], Version("new", {}))
    for u in s.ready():
        if u.stage == "features":
            s.started(u)
            s.succeeded(u, Version(f"new-{u.key}", s.inputs_of(u)))
    s.succeeded(group, Version("g", read))
    assert s.state[group.key] == "planned"
    run_all(s, digest=lambda u: f"new-{u.key}")
    assert all(s.changed_inputs(k) == [] for k, st in s.state.items() if st == "done")


def test_what_reads_a_done_unit_whose_input_will_run_again_waits_instead_of_running_twice():
    # The gold network retrains; its old representations and first-order groups are done,
    # the beams are not: a beam ranking now would rank again once the groups have rerun.
    cfg = small()
    gold = plan.gold_key(cfg, "normal")
    beams = {u.key for u in plan.build(cfg) if u.stage == "beam"}
    stored = _versions(cfg, lambda k: f"old-{k}")
    s = Scheduler(plan.build(cfg), is_done=lambda u: u.key not in {gold, "analysis", *beams},
                  version=lambda u: stored[u.key])
    assert not beams & {u.key for u in s.ready()}
    order = run_all(s, digest=lambda u: f"new-{u.key}")
    assert beams <= set(order) and len(order) == len(set(order))


def test_a_beam_that_will_rank_again_holds_the_higher_orders_it_chose_before():
    # A source's gold network retrains: the beam's first-order group reruns, so may the beam;
    # the group its old ranking chose, not trained yet, waits for the new choice.
    cfg = small()
    gold = plan.gold_key(cfg, "reshading")
    beam = next(u for u in plan.build(cfg) if u.stage == "beam" and u.params["target"] == "normal")
    choice = {"2": [["depth_zbuffer", "random"]]}
    (old,) = plan.expand_beam(cfg, beam, choice)

    def expand(u):
        return plan.expand_beam(cfg, u, choice) if u.key == beam.key else []

    stored = _versions(cfg, lambda k: f"old-{k}")
    s = Scheduler(plan.build(cfg), is_done=lambda u: u.key not in {gold, old.key, "analysis"},
                  version=lambda u: stored.get(u.key, Version()), expand=expand)
    assert old.key in s.units and old.key not in {u.key for u in s.ready()}
    choice = {"2": [["depth_zbuffer", "reshading"]]}  # reshading ranks now
    assert old.key not in run_all(s, digest=lambda u: f"new-{u.key}")


def test_solve_costs_and_importance_are_checked_against_the_sweeps_tasks_at_load():
    # The sweep's own taxonomy is solved after every training: a misspelt or impossible
    # setting found then would cost the whole run's wait.
    with pytest.raises(UnknownNameError, match="solve.costs 'nromal'; did you mean 'normal'"):
        small(solve={"costs": {"nromal": 2}})
    with pytest.raises(UnknownNameError, match="`random` is never supervised"):
        small(solve={"costs": {"random": 2}})
    with pytest.raises(UnknownNameError, match="target in solve.importance 'autoencoding'"):
        small(targets=["normal"], solve={"importance": {"autoencoding": 2}})
    with pytest.raises(ConfigError, match="solve.costs: normal is -1; it must be >= 0"):
        small(solve={"costs": {"normal": -1}})
    with pytest.raises(ConfigError, match="budget 1 cannot supervise any task: the cheapest "
                                          "costs 2"):
        small(solve={"budget": 1, "costs": {n: 2 for n in ("normal", "depth_zbuffer",
                                                            "reshading")}})
    cfg = small(solve={"budget": 1.5, "costs": {"normal": 0.5}, "importance": {"normal": 2}})
    assert cfg.to_json()["solve"] == {"budget": 1.5, "max_order": 3, "costs": {"normal": 0.5},
                                      "importance": {"normal": 2}}


def test_a_run_made_before_solve_costs_existed_records_the_same_config():
    # run.json of an older run has no solve.costs or solve.importance: left out while empty,
    # they leave its config (and so its resume check) as it was.
    assert small().to_json()["solve"] == {"budget": 4, "max_order": 3}
