"""The Ray runner's mechanics with stand-in units: ledger, resume, failures, status."""

import json
import textwrap

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sweep_fakes
import torch
from ray import cloudpickle

from taskonomy_ray.errors import ConfigError, NodeSetupError, TaskonomyError, TrainingError
from taskonomy_ray.sweep import driver, ledger, plan, runner
from taskonomy_ray.sweep import status as sweep_status
from taskonomy_ray.tables import Storage

cloudpickle.register_pickle_by_value(sweep_fakes)
pytestmark = pytest.mark.ray

WORKFLOW = textwrap.dedent("""
    name: fake
    data: {root: DATA, render: {points: 4, views: 3, size: 32, buildings: 2}}
    tasks: [normal, depth_zbuffer, reshading]
    regimes: [8]
    max_order: 2
    resources: {gold_trainer: task, retries: 1}
""")


def workflow(tmp_path, **replace):
    text = WORKFLOW.replace("DATA", str(tmp_path / "data"))
    for k, v in replace.items():
        text = text.replace(k, v)
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    return path


def sweep(tmp_path, wf=None, **kw):
    return driver.run_sweep(wf or workflow(tmp_path), storage_uri=str(tmp_path / "store"),
                            execute=sweep_fakes.fake_execute, progress=False, report=False, **kw)


def test_sweep_runs_every_unit_once_and_expands_the_beam(ray_session, tmp_path):
    result = sweep(tmp_path)
    assert result.ok, result.failures
    st = Storage(str(tmp_path / "store"))
    units = [plan.Unit.from_json(u) for u in st.read_json("plan.json")["units"]]
    assert {u.params.get("order") for u in units if u.stage == "transfer"} == {1, 2}
    for u in units:
        assert ledger.history(st, u.key).completions == 1, u.key


def test_units_on_a_share_of_a_gpu_run_in_workers_recycled_after_max_calls(ray_session,
                                                                           tmp_path):
    # Ray takes max_calls only where a function is made remote: in .options() the driver
    # crashed at its first GPU unit (every feature unit of workflows/paper.yaml).
    wf = workflow(tmp_path, **{"retries: 1}": "retries: 1, gpus_per_unit: 0.5, max_calls: 1}"})
    result = sweep(tmp_path, wf)
    assert result.ok, result.failures
    st = Storage(str(tmp_path / "store"))
    pids = [e["pid"] for u in st.read_json("plan.json")["units"]
            if u["stage"] in ("features", "transfer")
            for e in ledger.history(st, u["key"]).events if e["event"] == "done"]
    assert len(pids) > 4 and len(set(pids)) == len(pids)  # a fresh worker for every GPU unit


def test_rerun_recomputes_nothing(ray_session, tmp_path):
    first = sweep(tmp_path)
    st = Storage(str(tmp_path / "store"))
    keys = [u["key"] for u in st.read_json("plan.json")["units"]]
    assert first.stats["units_run"] == len(keys)
    before = {k: ledger.history(st, k).attempts for k in keys}
    result = sweep(tmp_path)
    assert result.ok and result.stats["units_run"] == 0
    assert {k: ledger.history(st, k).attempts for k in keys} == before


def test_resume_with_another_config_is_refused_naming_the_difference(ray_session, tmp_path):
    sweep(tmp_path)
    other = workflow(tmp_path, **{"regimes: [8]": "regimes: [16]"})
    with pytest.raises(ConfigError, match=r"(?s)regimes: \[8\] -> \[16\].*--force-config"):
        sweep(tmp_path, other)


def test_deterministic_failure_is_recorded_and_the_rest_goes_on(ray_session, tmp_path):
    st = Storage(str(tmp_path / "store"))
    st.write_json("fake.json", {"fail": ["gold-reshading"]})
    result = sweep(tmp_path)
    assert not result.ok
    bad = [k for k in result.failures if k.startswith("gold-reshading")]
    assert bad and "non-finite loss" in result.failures[bad[0]]
    assert ledger.history(st, bad[0]).attempts == 1  # not retried: it would fail again
    assert result.counts["gold"]["done"] == 2
    status = sweep_status.status(str(tmp_path / "store"))
    assert status["stages"]["gold"]["failed"] == 1
    assert "non-finite loss" in status["failures"][bad[0]]


def test_a_failed_source_leaves_partial_groups_that_a_fixed_resume_completes(ray_session,
                                                                             tmp_path, capsys):
    from taskonomy_ray import cli

    st = Storage(str(tmp_path / "store"))
    st.write_json("fake.json", {"fail": ["gold-reshading"]})
    first = sweep(tmp_path)
    firsts = [u["key"] for u in st.read_json("plan.json")["units"]
              if u["stage"] == "transfer" and u["params"]["order"] == 1]
    assert first.counts["transfer"]["done"] >= 3 and set(firsts) <= set(first.partial)
    status = sweep_status.status(str(tmp_path / "store"))
    assert status["partial"] == dict.fromkeys(firsts, ["reshading"])
    o1 = status["transfer_orders"]["1"]  # each group lacks its transfer from reshading
    assert (o1["transfers_planned"], o1["transfers_done"], o1["done"]) == (12, 9, 3)
    features = [k for k in status["blocked"] if k.startswith("features-reshading")]
    never_ran = "not run: its dependency gold-reshading"  # blocked by it, not just "pending"
    assert len(features) == 2 and all(status["blocked"][k].startswith(never_ran)
                                      for k in features)
    assert status["stages"]["features"]["pending"] == 0
    assert status["stages"]["features"]["blocked"] == 2
    assert ledger.history(st, "analysis").completions == 1
    capsys.readouterr()
    cli.main(["status", str(tmp_path / "store")])
    out = capsys.readouterr().out
    assert f"PARTIAL {firsts[0]}: trained without the transfers from reshading" in out
    assert "transfers of order 1: 9 of 12 trained; groups: 3 planned, 3 done, 0 failed" in out
    assert f"BLOCKED {features[0]}: not run" in out
    st.write_json("fake.json", {})
    second = sweep(tmp_path)
    assert second.ok and second.partial == {}, (second.failures, second.partial)
    assert all(ledger.history(st, k).completions == 2 for k in firsts)
    assert sweep_status.status(str(tmp_path / "store"))["partial"] == {}


def test_a_unit_that_returns_without_writing_its_outputs_is_failed_not_done(tmp_path):
    # Done means "outputs exist": a unit that returns without them must not be recorded done,
    # or the next resume would skip it and the analysis would miss its losses.
    st = Storage(str(tmp_path / "store"))
    unit = plan.Unit("gold-normal-x", "gold", {}, outputs=("losses/gold-normal-x.parquet",))
    with pytest.raises(TaskonomyError, match=r"finished without writing \['losses/gold-normal"):
        runner.run_unit(unit, {"storage": st.uri}, lambda u, ctx: {"steps": 3})
    h = ledger.history(st, unit.key)
    assert h.state == "failed" and h.completions == 0
    assert h.events[-1]["deterministic"] is True  # a retry would write nothing either


def test_a_unit_on_a_node_that_does_not_see_the_drivers_storage_or_data_refuses_to_run(
        tmp_path, monkeypatch):
    # A local --storage that is not on a shared disk is another, empty storage on each node.
    monkeypatch.setattr(runner.time, "sleep", lambda s: None)  # (it reads the claim 3 times)
    st = Storage(str(tmp_path / "store"))
    gold = plan.Unit("gold-normal-x", "gold", {}, outputs=("g.json",))
    render = plan.Unit("render-x", "render", {}, outputs=("r.json",))
    ran = []

    def execute(u, ctx):
        ran.append(u.key)
        Storage(ctx["storage"]).write_json(u.outputs[0], {})

    ctx = {"storage": st.root, "claim": "ours", "data_root": str(tmp_path / "data")}
    with pytest.raises(NodeSetupError, match=r"node \S+ does not see this sweep's storage .*"
                       r"no driver's claim in driver.json"):
        runner.run_unit(gold, ctx, execute)
    st.write_json("driver.json", {"token": "another"})
    with pytest.raises(NodeSetupError, match=r"finds another driver's claim .* if another "
                       r"sweep took it over \(--takeover\), this one stops here"):
        runner.run_unit(gold, ctx, execute)
    assert ran == [] and ledger.history(st, gold.key).events == []  # not the unit's failure
    st.write_json("driver.json", {"token": "ours"})
    runner.run_unit(render, ctx, execute)  # the render writes the dataset root: not checked
    beam = plan.Unit("beam-normal-x", "beam", {}, outputs=("b.json",))
    runner.run_unit(beam, ctx, execute)  # (nor what reads storage only)
    with pytest.raises(NodeSetupError, match=f"sees no dataset root at {tmp_path}/data: check "
                       "--data .*mount the dataset at that path on every node"):
        runner.run_unit(gold, ctx, execute)
    (tmp_path / "data").mkdir()
    runner.run_unit(gold, ctx, execute)
    assert ran == [render.key, beam.key, gold.key]
    # A network file system that shows the previous driver's claim for a moment: read again.
    st.write_json("driver.json", {"token": "previous"})
    monkeypatch.setattr(runner.time, "sleep",
                        lambda s: st.write_json("driver.json", {"token": "now"}))
    runner.run_unit(gold, {**ctx, "claim": "now"}, execute)
    assert ran[-1] == gold.key and len(ran) == 4


def test_a_unit_cancelled_by_a_stopped_driver_is_interrupted_not_failed(tmp_path):
    # Ctrl-C on the driver cancels its units (KeyboardInterrupt in each): `status` showed them
    # FAILED, and everything after them BLOCKED, though a resume simply runs them.
    import os
    import socket
    import time

    st = Storage(str(tmp_path / "store"))
    gold = plan.Unit("gold-normal-x", "gold", {}, outputs=("g.json",))
    after = plan.Unit("features-normal-x", "features", {}, (gold.key,), ("f.json",))
    st.write_json(plan.PLAN_FILE, {"units": [gold.to_json(), after.to_json()]})

    def cancelled(u, ctx):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run_unit(gold, {"storage": st.root}, cancelled)
    assert [e["event"] for e in ledger.history(st, gold.key).events] == ["started"]
    found = sweep_status.status(st.root)
    assert found["failures"] == {} and found["blocked"] == {}
    assert found["stages"]["gold"]["pending"] == 1 and found["stages"]["gold"]["running"] == 0
    st.write_json("driver.json", {"token": "t", "host": socket.gethostname(),
                                  "pid": os.getpid(), "renewed": time.time()})
    assert sweep_status.status(st.root)["stages"]["gold"]["running"] == 1  # a live sweep's


def test_a_node_that_does_not_see_the_storage_stops_the_sweep_keeping_what_is_done(
        ray_session, tmp_path):
    from taskonomy_ray.sweep.scheduler import Scheduler

    st = Storage(str(tmp_path / "store"))
    st.write_json("driver.json", {"token": "another"})  # what that node sees there
    cfg = driver.sweep_config.load(workflow(tmp_path))
    sched = Scheduler(plan.build(cfg), is_done=lambda u: False)
    ctx = {**driver.make_context(cfg, st), "claim": "ours"}
    with pytest.raises(NodeSetupError, match="^node .* finds another driver's claim"):
        runner.run(sched, ctx, sweep_fakes.fake_execute, lambda u: {"num_cpus": 1},
                   cost=lambda u: 1.0, capacity=lambda: 2.0, progress=False)
    assert sched.failures() == {}  # no unit failed: none even started
    assert all(ledger.history(st, u.key).events == [] for u in plan.build(cfg))


def test_a_project_error_pickle_cannot_rebuild_still_fails_once_and_names_itself(ray_session,
                                                                                 tmp_path):
    # Ray delivers an exception it cannot unpickle as a crash, which the driver retries: a
    # corrupt dataset file (BadFile) was read three times and reported as UnserializableException.
    st = Storage(str(tmp_path / "store"))
    st.write_json("fake.json", {"fail_unpicklable": ["gold-normal"]})
    result = sweep(tmp_path)
    key = next(k for k in result.failures if k.startswith("gold-normal"))
    assert ledger.history(st, key).attempts == 1
    assert result.failures[key].startswith("TaskonomyError: UnpicklableError: unit gold-normal")
    assert "Unserializable" not in result.failures[key]


def test_a_worker_that_dies_is_retried_as_configured_and_status_says_failed(ray_session,
                                                                             tmp_path):
    st = Storage(str(tmp_path / "store"))
    st.write_json("fake.json", {"die": ["transfer-normal-r8-o1"]})
    result = sweep(tmp_path)  # resources.retries: 1
    key = next(k for k in result.failures if k.startswith("transfer-normal-r8-o1"))
    history = ledger.history(st, key)
    assert history.attempts == 2  # 1 + retries, none added by Ray itself
    assert history.state == "failed" and "Worker" in history.last_error
    status = sweep_status.status(str(tmp_path / "store"))
    assert key in status["failures"] and status["stages"]["transfer"]["running"] == 0


def test_a_sweep_without_an_address_starts_its_own_ray_and_joins_none_running_here(ray_session):
    # Ray's default joins any instance on the machine: a sweep started as another one (or a
    # test's cluster) shut down joined it and waited forever for its stopped GCS.
    import os
    import subprocess
    import sys

    code = ("import ray; from taskonomy_ray.sweep import driver; driver.connect(None, num_cpus=1);"
            "print(ray.get_runtime_context().gcs_address)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    running = ray_session.get_runtime_context().gcs_address
    assert r.stdout.strip().splitlines()[-1] != running


def test_the_sweep_command_ends_only_the_ray_it_started_deaf_to_ctrl_c_while_ray_shuts_down(
        monkeypatch):
    # A Ctrl-C during Ray's own exit-hook shutdown printed a KeyboardInterrupt traceback under
    # the sweep's summary; a test's or a notebook's Ray must outlive the sweep.
    import signal

    import ray

    seen = []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "shutdown", lambda: seen.append(signal.getsignal(signal.SIGINT)))
    monkeypatch.setattr(driver, "_STARTED_RAY", False)
    driver.disconnect()
    assert seen == []  # not ours: left running
    monkeypatch.setattr(driver, "_STARTED_RAY", True)
    before = signal.getsignal(signal.SIGINT)
    driver.disconnect()
    assert seen == [signal.SIG_IGN] and signal.getsignal(signal.SIGINT) is before
    driver.disconnect()
    assert len(seen) == 1  # once only


def test_the_sweep_command_disconnects_from_ray_when_the_sweep_is_interrupted_too(monkeypatch):
    from taskonomy_ray import cli

    calls = []

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "run_sweep", interrupted)
    monkeypatch.setattr(driver, "disconnect", lambda: calls.append("disconnect"))
    assert cli.main(["sweep", "workflows/smoke.yaml"]) == 130
    assert calls == ["disconnect"]


def test_a_data_root_that_is_a_file_is_refused_before_ray_starts(tmp_path):
    # It started Ray, then the render failed on a bare FileExistsError and blocked the rest.
    (tmp_path / "data").write_text("not a dataset")

    def never(unit, ctx):
        raise AssertionError("no unit may run")

    with pytest.raises(ConfigError, match=f"dataset root {tmp_path}/data is a file, not a "
                                          "folder: give --data"):
        driver.run_sweep(workflow(tmp_path), storage_uri=str(tmp_path / "store"),
                         execute=never, report=False)
    assert not (tmp_path / "store" / "plan.json").exists()


def test_a_sweep_whose_analysis_or_report_failed_points_to_no_earlier_report(tmp_path):
    st = Storage(str(tmp_path))
    st.write_bytes("report/index.html", b"<html>an earlier run's</html>")
    ok = driver.SweepResult(st.uri, {}, {}, 1.0, {})
    assert ok.report_path == st.path("report/index.html")
    for failed in ("analysis", "report"):
        assert driver.SweepResult(st.uri, {}, {failed: "DataError: x"}, 1.0, {}).report_path \
            is None


def test_the_sweep_summary_names_the_failure_apart_from_the_units_it_left_unrun(
        monkeypatch, capsys):
    from taskonomy_ray import cli

    blocked = [f"gold-t{i}" for i in range(7)]
    result = driver.SweepResult(
        "/s", {"gold": {"planned": 0, "running": 0, "done": 0, "failed": 7}}, {
            "render-1": "DataError: bad root",
            **{k: "not run: its dependency render-1 failed" for k in blocked}}, 2.0,
        {"units_run": 0}, blocked=blocked)
    monkeypatch.setattr(driver, "run_sweep", lambda *a, **k: result)
    monkeypatch.setattr(driver, "disconnect", lambda: None)
    assert cli.main(["sweep", "workflows/smoke.yaml"]) == 1
    out, err = capsys.readouterr()
    assert "0 units done (0 run now, 0 kept from before), 1 failed, 7 not run for want of " \
        "their inputs; storage /s" in out
    lines = err.splitlines()
    assert lines[0] == "  FAILED render-1: DataError: bad root"
    assert lines[1] == "  NOT RUN gold-t0: its dependency render-1 failed"
    assert len(lines) == 1 + cli.BLOCKED_SHOWN + 1 and "and 2 more not run" in lines[-1]


def test_an_address_where_no_ray_listens_is_refused_at_once_not_retried_for_minutes():
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # closed again: nothing listens there
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ConfigError, match=f"cannot reach a Ray cluster at {address}"):
            driver.check_reachable(address)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        driver.check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
    driver.check_reachable("auto")  # (left to Ray)


def test_a_gold_runs_own_error_is_found_in_any_workers_failure_and_is_not_retried():
    # Ray Train reports a worker's exception inside WorkerGroupError.worker_failures; found
    # there, fit_gold fails the unit as deterministic (a retry would fail the same way).
    from ray.train import WorkerGroupError

    from taskonomy_ray.sweep.train_runner import _our_error

    ours = TrainingError("normal: non-finite loss at step 3")
    wrapped = WorkerGroupError("worker 1 failed", {0: RuntimeError("peer gone"), 1: ours})
    try:
        raise RuntimeError("Training failed") from wrapped
    except RuntimeError as e:
        assert _our_error(e) is ours
    assert _our_error(WorkerGroupError("worker 0 failed", {0: RuntimeError("oom")})) is None


def test_only_a_lost_node_counts_as_a_node_loss_however_ray_wraps_it():
    import ray.exceptions as rx

    died = rx.NodeDiedError("Task failed because the node it was running on is dead")
    in_task = rx.RayTaskError("run_unit", "tb", runner.NodeLostError("gold-x: node n lost"))
    assert runner.is_node_lost(died) and runner.is_node_lost(in_task.as_instanceof_cause())
    drained = rx.RayActorError(error_msg="drained", preempted=True)
    chained = RuntimeError("training failed")
    chained.__cause__ = drained
    assert runner.is_node_lost(chained)
    # a crashed worker, an actor dead of its own accord, our own errors: ordinary failures
    for err in (rx.WorkerCrashedError(), rx.RayActorError(error_msg="segfault"),
                rx.RayTaskError("run_unit", "tb", ValueError("bad")).as_instanceof_cause(),
                TrainingError("non-finite loss")):
        assert not runner.is_node_lost(err), err


def test_a_resume_that_completes_failed_work_redoes_the_analysis(ray_session, tmp_path):
    st = Storage(str(tmp_path / "store"))
    st.write_json("fake.json", {"fail": ["transfer-normal-r8-o1"]})
    first = sweep(tmp_path)
    assert list(first.failures) != [] and ledger.history(st, "analysis").completions == 1
    st.write_json("fake.json", {})
    second = sweep(tmp_path)
    assert second.ok, second.failures
    assert ledger.history(st, "analysis").completions == 2  # not the partial one kept


def _analyse(tmp_path, table, tasks="[normal, depth_zbuffer, reshading]", stale=False,
             solve="", regimes="[1000]"):
    """Run the analysis unit on `table`'s units (with a replaced copy of each when `stale`).

    Returns the storage and the unit's result, which also holds the workflow's config (`cfg`).
    """
    from taskonomy_ray.sweep import config as sweep_config
    from taskonomy_ray.sweep import units

    st = Storage(str(tmp_path / "store"))
    keys = sorted(set(table.column("unit").to_pylist()))
    for k in keys:
        part = table.filter(pa.compute.equal(table.column("unit"), k))
        st.write_losses(k, part)
        if stale:  # what a config change leaves behind: the same transfer under an old key
            st.write_losses(f"{k}-old", part.set_column(0, "unit", pa.array([f"{k}-old"] *
                                                                              part.num_rows)))
    st.write_json(plan.PLAN_FILE, {"units": [
        {"key": k, "outputs": [plan.losses_path(k)]} for k in keys]})
    cfg = sweep_config.load(workflow(tmp_path, **{
        "regimes: [8]": f"regimes: {regimes}", "max_order: 2": "max_order: 1",  # no beams here
        "tasks: [normal, depth_zbuffer, reshading]": f"tasks: {tasks}",
        "resources:": f"{solve}\nresources:" if solve else "resources:"}))
    info = units.run_analysis(plan.Unit("analysis", "analysis", {}), {
        "storage": st.uri, "config": cfg.to_json(), "data_root": str(tmp_path / "data")})
    return st, {**info, "cfg": cfg}


def test_the_analysis_reads_only_the_losses_of_the_current_plan(tmp_path):
    # A config change (--force-config) leaves the replaced units' loss files in storage; read
    # as well, they would count every transfer twice.
    from test_affinity import _run

    st, info = _analyse(tmp_path, _run("normal"), stale=True)
    assert info["transfers"] == 6  # 5 transfers into normal and its gold row, once each
    assert "normal" not in info["left_out"]  # the workflow's other targets have no losses here
    # ... and `losses/`, which users read whole (pandas, duckdb), then holds the plan's only:
    # the replaced ones are kept under superseded/.
    current = {f"{k}.parquet" for k in st.read_losses().column("unit").to_pylist()}
    assert set(st.list("losses")) == current and not any(k.endswith("-old") for k in current)
    assert set(st.list("superseded/losses")) == {n.replace(".parquet", "-old.parquet")
                                                 for n in current}


def test_a_unit_planned_again_takes_its_superseded_table_back_instead_of_training(tmp_path):
    # A --force-config resume back to an earlier config plans the unit of the same key again.
    from test_affinity import _run

    from taskonomy_ray.sweep import config, superseded

    st = Storage(str(tmp_path))
    unit = plan.Unit("transfer-normal-x", "transfer", {},
                     outputs=(plan.losses_path("transfer-normal-x"),))
    table = _run("normal")
    st.write_losses(unit.key, table)
    assert superseded.set_aside_superseded(st, ["another"]) == [unit.outputs[0]]
    assert not st.exists(unit.outputs[0])
    is_done = driver.done_check(st, config.from_dict({"name": "t", "tasks": ["normal"]}), "x")
    assert is_done(unit)
    assert st.read_losses([unit.key]).equals(table) and st.list("superseded/losses") == []
    assert not superseded.take_back(st, unit)  # (nothing left to take back)


def test_a_resume_with_other_solve_settings_solves_the_taxonomy_again(tmp_path, published_csv):
    # The analysis' key does not hash `solve`: a --force-config resume to budget 3 kept the
    # budget-2 taxonomy.json and reported the sweep finished.
    from taskonomy_ray.published import load_published
    from taskonomy_ray.sweep import config

    st = Storage(str(tmp_path))
    st.write_affinities(load_published(published_csv))
    st.write_json("taxonomy.json", {"regime": 16000, "budget": 2, "max_order": 2,
                                    "supervised": ["normal"]})
    unit = plan.Unit("analysis", "analysis", {}, (), ("affinities.parquet", "taxonomy.json"),
                     barrier=True)

    def cfg(**solve):
        return config.from_dict({"name": "t", "tasks": ["normal"], "regimes": [1000, 16000],
                                 "solve": {"budget": 2, "max_order": 2, **solve}})

    assert driver.done_check(st, cfg(), "x")(unit)
    assert not driver.done_check(st, cfg(budget=3), "x")(unit)
    assert not driver.done_check(st, cfg(max_order=3), "x")(unit)
    assert not driver.done_check(st, cfg(costs={"normal": 2}), "x")(unit)
    assert not driver.done_check(st, cfg(importance={"normal": 3}), "x")(unit)
    assert driver.done_check(st, cfg(costs={"normal": 1}), "x")(unit)  # (1 is every default)
    assert st.exists("taxonomy.json")  # (not damage: nothing is moved aside, it is redone)


def test_the_sweeps_taxonomy_is_solved_under_the_workflows_costs_and_importance(tmp_path):
    # `solve: {costs, importance}` are solve's --cost and --importance for the sweep's own
    # taxonomy: with normal costing more than the budget, cheaper sources are supervised.
    from test_affinity import _run

    solve = "solve: {budget: 1, max_order: 2, SETTINGS}"
    plain = _analyse(tmp_path / "a", _run("normal"), solve=solve.replace(", SETTINGS", ""))
    assert plain[0].read_json("taxonomy.json")["supervised"] == ["normal"]
    st, _ = _analyse(tmp_path / "b", _run("normal"), solve=solve.replace("SETTINGS", (
        "costs: {normal: 2, reshading: 0.5, depth_zbuffer: 0.5}, importance: {normal: 3}")))
    doc = st.read_json("taxonomy.json")
    assert doc["costs"] == {"normal": 2, "reshading": 0.5, "depth_zbuffer": 0.5}
    assert doc["importance"] == {"normal": 3} and doc["objective"] > 0
    assert doc["budget"] == 1 and "normal" not in doc["supervised"]  # it alone costs 2
    assert doc["cost"] == 0.5 * len(doc["supervised"]) <= 1


def test_what_the_analysis_cannot_weigh_is_dropped_and_a_resume_still_adopts_it(tmp_path):
    # reshading's scratch network failed, so it is left out as a target, and every transfer
    # from it failed at the solved regime (1000; at 100 they are in): its importance and cost
    # have nothing to weigh there. Neither may fail the solve, nor make every resume solve again
    # for want of what the analysis dropped (taxonomy.json records what was asked).
    from test_affinity import _run

    top = _run("normal")
    top = top.filter(pa.array(["reshading" not in s for s in top.column("sources").to_pylist()]))
    low = _run("normal", regime=100, seed=1)
    low = low.filter(pa.compute.not_equal(low.column("kind"), "gold"))  # (one gold network)
    shading = _run("reshading", seed=2).filter(pa.compute.not_equal(
        pa.compute.field("kind"), "scratch"))
    st, info = _analyse(tmp_path, pa.concat_tables([top, low, shading]), regimes="[100, 1000]",
                        solve="solve: {budget: 2, max_order: 1, importance: {reshading: 2},"
                              " costs: {reshading: 0.5, normal: 1.5}}")
    assert info["left_out"] == ["depth_zbuffer", "reshading"]  # (no depth network at all)
    doc = st.read_json("taxonomy.json")
    assert doc["importance"] == {} and doc["costs"] == {"normal": 1.5}
    assert doc["workflow_solve"] == {"costs": {"reshading": 0.5, "normal": 1.5},
                                     "importance": {"reshading": 2}}
    unit = plan.Unit("analysis", "analysis", {}, (), ("affinities.parquet", "taxonomy.json"),
                     barrier=True)
    assert driver.done_check(st, info["cfg"], "x")(unit)


def test_the_analysis_ranks_the_targets_it_can_when_a_scratch_network_failed(tmp_path):
    from test_affinity import _run

    table = pa.concat_tables([_run("normal"), _run("reshading", seed=1).filter(
        pa.compute.not_equal(pa.compute.field("kind"), "scratch"))])  # its scratch failed
    st, info = _analyse(tmp_path, table, tasks="[normal, reshading]")
    assert info["left_out"] == ["reshading"]
    assert set(st.read_affinities().column("target").to_pylist()) == {"normal"}


@pytest.mark.parametrize("step", ["compute_affinities", "solve_taxonomy"])
def test_an_analysis_that_fails_leaves_no_taxonomy_to_adopt(tmp_path, monkeypatch, step):
    # Its outputs are the affinities and the taxonomy: an earlier run's pair left in place
    # would make a resume adopt the failed analysis as done.
    from test_affinity import _run

    from taskonomy_ray import affinity, taxonomy
    from taskonomy_ray.errors import SolverError

    st = Storage(str(tmp_path / "store"))
    st.write_json("taxonomy.json", {"budget": 1, "from": "an earlier analysis"})

    def fail(*a, **k):
        raise SolverError("infeasible")

    monkeypatch.setattr(affinity if step == "compute_affinities" else taxonomy, step, fail)
    with pytest.raises(SolverError):
        _analyse(tmp_path, _run("normal"))
    assert not st.exists("taxonomy.json")


def test_a_resume_reruns_units_whose_outputs_were_cut_short(ray_session, tmp_path, capsys):
    sweep(tmp_path)
    st = Storage(str(tmp_path / "store"))
    units = [plan.Unit.from_json(u) for u in st.read_json("plan.json")["units"]]
    gold = next(u for u in units if u.stage == "gold")
    beam = next(u for u in units if u.stage == "beam")
    for rel in (gold.outputs[1], beam.outputs[0]):  # a copy of the run stopped half-way
        st.write_bytes(rel, st.read_bytes(rel)[:10])
    result = sweep(tmp_path)
    assert result.ok, result.failures
    assert ledger.history(st, gold.key).completions == 2
    assert ledger.history(st, beam.key).completions == 2
    assert st.damage(gold.outputs[1]) is None and st.damage(beam.outputs[0]) is None
    assert st.list("damaged/losses") and all(".damaged" not in n for n in st.list("losses"))
    assert len(pd.read_parquet(st.path("losses")))  # the README's read of the whole folder
    assert f"{gold.key} runs again" in capsys.readouterr().err
    # The gold network came back as it was: nothing that read it is recomputed.
    readers = [u for u in units if gold.key in u.deps and u.key != beam.key]
    assert readers and all(ledger.history(st, u.key).completions == 1 for u in readers)


def _units(st):
    return [plan.Unit.from_json(u) for u in st.read_json("plan.json")["units"]]


def test_a_resume_reruns_what_read_a_unit_that_came_back_with_another_result(
        ray_session, tmp_path, capsys):
    # A lost gold checkpoint retrained not bit for bit (as on a GPU): the representations
    # cached from the old network, and the transfers and beams that read them, run again.
    sweep(tmp_path)
    st = Storage(str(tmp_path / "store"))
    gold = next(u for u in _units(st) if u.stage == "gold" and u.params["task"] == "normal")
    st.delete(gold.outputs[0])
    st.write_json("fake.json", {"vary": [gold.key, "features-normal-"]})
    assert sweep(tmp_path).ok
    runs = {u.key: ledger.history(st, u.key).completions for u in _units(st)}
    features = [u for u in _units(st) if u.stage == "features" and gold.key in u.deps]
    groups = [u for u in _units(st)
              if u.stage == "transfer" and any(f.key in u.deps for f in features)]
    beams = [u for u in _units(st) if u.stage == "beam"]
    again = [b for b in beams if gold.key in b.deps]  # the others' groups came back the same
    assert features and groups and again and len(beams) > len(again)
    assert all(runs[u.key] == 2 for u in features + groups + again)
    others = [u for u in _units(st) if u.stage == "features" and u not in features]
    assert all(runs[u.key] == 1 for u in others + [b for b in beams if b not in again])
    assert f"runs again: {gold.key} ran again since, with another result" in \
        capsys.readouterr().err
    # What each unit read is in its ledger: the digests its inputs had when it ran.
    done = [e for e in ledger.history(st, groups[0].key).events if e["event"] == "done"][-1]
    assert done["inputs"] == {d: ledger.version(st, d).digest for d in groups[0].deps}


def test_a_first_order_group_retrained_without_a_source_has_its_beam_rank_again(
        ray_session, tmp_path):
    # Its losses were cut short and, on the retraining, one source's representation failed:
    # the beam had ranked the complete group, which is no longer what the losses hold.
    sweep(tmp_path)
    st = Storage(str(tmp_path / "store"))
    beam = next(u for u in _units(st) if u.stage == "beam")
    group = next(u for u in _units(st) if u.key == beam.deps[0])
    lost = group.deps[0]
    st.write_bytes(group.outputs[0], st.read_bytes(group.outputs[0])[:10])
    st.delete(plan.features_path(lost))
    st.write_json("fake.json", {"fail": [lost]})
    result = sweep(tmp_path)
    assert set(result.failures) == {lost}
    assert ledger.history(st, group.key).completions == 2
    assert ledger.history(st, beam.key).completions == 2


def test_a_driver_whose_storage_is_claimed_by_another_stops_scheduling(ray_session, tmp_path,
                                                                        monkeypatch):
    from taskonomy_ray.sweep import lease

    st = Storage(str(tmp_path / "store"))
    st.write_json("fake.json", {"steal_claim": True})
    monkeypatch.setattr(lease, "RENEW_S", 0.0)  # renew on every scheduling round
    with pytest.raises(ConfigError, match="claimed by another sweep"):
        sweep(tmp_path)
    assert st.read_json("driver.json")["token"] == "another"  # left to its holder
    assert not st.exists("affinities.parquet")  # the rest of the sweep was not scheduled


def test_a_sweep_whose_stderr_is_not_a_terminal_logs_its_counts_as_they_change(capsys):
    # `ray job logs` of a submitted sweep, or `make demo > log`: no bars, but not silent either.
    from taskonomy_ray.sweep.scheduler import Scheduler

    sched = Scheduler(plan.build(driver.sweep_config.from_dict(
        {"name": "t", "tasks": ["normal", "depth_zbuffer"], "regimes": [8], "max_order": 1,
         "data": {"root": "x"}})), is_done=lambda u: False)
    now = [0.0]
    bars = runner.Bars(sched, None, every_s=30, heartbeat_s=600, clock=lambda: now[0])
    gold = next(u for u in sched.units.values() if u.stage == "gold")
    sched.started(gold)
    now[0] = 10.0
    bars.update(sched)  # changed, but within 30 s of the last line
    now[0] = 31.0
    bars.update(sched)
    bars.update(sched)  # nothing new
    now[0] = 700.0
    bars.update(sched)  # a heartbeat: still alive
    sched.succeeded(gold)
    bars.close(sched)  # the last counts, whenever they came
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ", 2)[1] for line in lines] == ["0:00:00", "0:00:31", "0:11:40",
                                                         "0:11:40"]
    assert lines[0] == ("sweep 0:00:00 gold 0/2, scratch 0/2, features 0/6, transfer 0/2, "
                        "analysis 0/1")
    assert "gold 0/2 (1 running)" in lines[1] and "gold 1/2," in lines[3]
    assert runner.Bars(sched, False).lines is False and capsys.readouterr().err == ""


def test_status_reads_progress_from_storage_alone(ray_session, tmp_path):
    sweep(tmp_path)
    st = sweep_status.status(str(tmp_path / "store"))
    assert st["stages"]["gold"] == {"planned": 3, "pending": 0, "running": 0, "done": 3,
                                    "failed": 0, "blocked": 0}
    assert st["transfer_orders"]["2"]["done"] == st["transfer_orders"]["2"]["planned"] > 0
    o1 = st["transfer_orders"]["1"]
    assert o1["transfers_done"] == o1["transfers_planned"] == 3 * 4  # targets x sources
    json.dumps(st)


def test_status_of_an_empty_path_says_how_to_start(tmp_path):
    from taskonomy_ray.errors import StorageError

    with pytest.raises(StorageError, match="taskonomy-ray sweep"):
        sweep_status.status(str(tmp_path))


def test_a_beam_ranked_on_a_partial_group_records_what_that_group_lacked(tmp_path):
    # So that a resume which completes those sources ranks again (driver.went_without).
    from test_affinity import _run

    from taskonomy_ray.sweep import config as sweep_config
    from taskonomy_ray.sweep import units

    cfg = sweep_config.load(workflow(tmp_path, **{"regimes: [8]": "regimes: [1000]"}))
    beam = next(u for u in plan.build(cfg) if u.stage == "beam" and
                u.params["target"] == "normal")
    group, gold = beam.deps  # (ranking reads no scratch network)
    st = Storage(str(tmp_path / "store"))
    table = _run("normal")
    st.write_losses(group, table)
    st.write_losses(gold, table.slice(0, 0))  # the run's rows are all in the group's file here
    ctx = {"storage": st.uri, "config": cfg.to_json(), "data_root": str(tmp_path / "data")}
    units.run_beam(beam, ctx)
    assert st.read_json(beam.outputs[0])["without"] == []
    assert driver.went_without(st)(beam) == []
    st.write_json(plan.partial_path(group), {"without": ["features-x"], "left_out": [["x"]],
                                             "sources": ["x"]})
    units.run_beam(beam, ctx)
    assert driver.went_without(st)(beam) == ["features-x"]


def test_a_beam_with_too_few_ranked_sources_chooses_the_orders_it_can_and_says_so(tmp_path,
                                                                                  capsys):
    # reshading's transfer into normal diverged: one source left to rank, no pair to choose.
    # The beam must not fail (that would cost the target every higher order for one transfer).
    from test_affinity import _run

    from taskonomy_ray import cli
    from taskonomy_ray.sweep import config as sweep_config
    from taskonomy_ray.sweep import units

    cfg = sweep_config.load(workflow(tmp_path, **{"regimes: [8]": "regimes: [1000]"}))
    built = plan.build(cfg)
    beam = next(u for u in built if u.stage == "beam" and u.params["target"] == "normal")
    group, gold = beam.deps
    st = Storage(str(tmp_path / "store"))
    table = _run("normal")
    keep = [("reshading" not in s) for s in table.column("sources").to_pylist()]
    st.write_losses(group, table.filter(pa.array(keep)))
    st.write_losses(gold, table.slice(0, 0))
    ctx = {"storage": st.uri, "config": cfg.to_json(), "data_root": str(tmp_path / "data")}
    assert units.run_beam(beam, ctx) == {"chosen": 0, "skipped": [2]}
    doc = st.read_json(beam.outputs[0])
    assert doc["ranked"] == ["depth_zbuffer"] and doc["chosen"] == {} and doc["skipped"] == [2]
    assert driver.beam_expander(st, cfg)(beam) == []
    st.write_json(plan.PLAN_FILE, {"units": [u.to_json() for u in built]})
    assert sweep_status.status(st.uri)["short"] == {beam.key: {"orders": [2], "ranked": 1}}
    cli.main(["status", st.uri])
    assert f"SHORT {beam.key}: ranked 1 sources, too few for order 2" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a GPU Ray reserves but torch lacks")
def test_a_unit_given_a_gpu_torch_cannot_see_fails_instead_of_training_on_the_cpu(ray_session):
    # This machine's torch is a CPU build and the session declares one GPU: as a worker whose
    # torch wheel does not match its driver, which would train on the CPU while holding the GPU.
    unit = plan.Unit("features-normal-test", "features", {})

    def probe(gpus):
        @ray_session.remote(num_gpus=gpus)
        def check():
            from taskonomy_ray.sweep import units

            units.check_gpu_visible(unit)
            return "ok"

        return ray_session.get(check.remote())

    assert probe(0) == "ok"  # a CPU unit: nothing to see
    with pytest.raises(TrainingError, match=r"Ray gave it GPU \[0\] on .* sees no CUDA device; "
                                            r"install a CUDA build of torch"):
        probe(0.5)


def test_paths_inside_a_ray_jobs_working_dir_copy_are_refused(tmp_path, monkeypatch):
    # ray job submit --working-dir runs the driver in an unpacked copy keyed by the files' hash:
    # a relative --storage there is lost to the next submission, which starts over.
    copy = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_0a1b2c"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    with pytest.raises(ConfigError, match=r"storage .*_ray_pkg_0a1b2c/runs/smoke is inside this "
                                          r"Ray job's copy.*pass --storage an absolute path"):
        driver.check_lasting(Storage("runs/smoke"), str(tmp_path / "data"))
    with pytest.raises(ConfigError, match=r"dataset root .*/data/smoke is inside .*pass --data"):
        driver.check_lasting(Storage(str(tmp_path / "store")), "data/smoke")
    driver.check_lasting(Storage(str(tmp_path / "store")), str(tmp_path / "data"))  # lasting
    monkeypatch.chdir(tmp_path)  # not a job: a relative path is the user's own folder
    driver.check_lasting(Storage("runs/smoke"), "data/smoke")


def test_status_verify_lists_units_left_stale_and_the_resume_reruns_them(ray_session, tmp_path,
                                                                        capsys):
    # A feature unit ran again with another result and its driver died before the transfers
    # that read it reran: only the ledger knows (every output is a whole file).
    from taskonomy_ray import cli

    sweep(tmp_path)
    st = Storage(str(tmp_path / "store"))
    assert sweep_status.status(str(tmp_path / "store"), verify=True)["stale"] == {}
    feature = next(u for u in _units(st) if u.stage == "features")
    ledger.record(st, feature.key, "done", digest="another", inputs={})
    readers = sorted(u.key for u in _units(st) if feature.key in u.deps)
    stale = sweep_status.status(str(tmp_path / "store"), verify=True)["stale"]
    # (the analysis read every unit's result)
    assert readers and stale == {k: [feature.key] for k in [*readers, "analysis"]}
    assert cli.main(["status", str(tmp_path / "store"), "--verify"]) == 0
    assert f"STALE {readers[0]}: {feature.key} ran again since" in capsys.readouterr().out
    assert sweep(tmp_path).ok
    assert all(ledger.history(st, k).completions == 2 for k in [*readers, "analysis"])
    assert sweep_status.status(str(tmp_path / "store"), verify=True)["stale"] == {}


def test_a_unit_that_wrote_another_result_and_died_before_saying_so_has_its_readers_rerun(
        ray_session, tmp_path):
    # Its ledger's last word is `started`: the recorded digest may be older than the files.
    from taskonomy_ray.features import Features, to_bytes

    sweep(tmp_path)
    st = Storage(str(tmp_path / "store"))
    feature = next(u for u in _units(st) if u.stage == "features")
    readers = [u.key for u in _units(st) if feature.key in u.deps]
    assert ledger.version(st, feature.key) is not None
    ledger.record(st, feature.key, "started", attempt_of="features")
    st.write_bytes(feature.outputs[0], to_bytes(Features(["x"], np.zeros((1, 2, 1, 1)))))
    assert ledger.version(st, feature.key) is None  # digested from storage instead
    assert sweep(tmp_path).ok
    assert ledger.history(st, feature.key).completions == 1  # its files are whole: kept
    assert readers and all(ledger.history(st, k).completions == 2 for k in readers)
