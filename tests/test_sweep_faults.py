"""Fault tolerance for real: a worker node removed mid-sweep, and a driver killed with SIGKILL."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_sweep_runner import WORKFLOW

HERE = Path(__file__).resolve().parent
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def run_script(args, timeout=600):
    env = {**os.environ, "PYTHONPATH": f"{HERE}:{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_units_of_a_removed_worker_node_are_retried_elsewhere(tmp_path):
    wf = tmp_path / "wf.yaml"
    # No retries: a unit whose node is lost runs again all the same (resources.node_losses).
    assert "retries: 1}" in WORKFLOW
    wf.write_text(WORKFLOW.replace("DATA", str(tmp_path / "data")).replace("retries: 1}",
                                                                            "retries: 0}"))
    r = run_script([str(HERE / "cluster_scenario.py"), str(wf), str(tmp_path / "store")])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["killed"], "the node was never removed: the scenario did not test anything"
    assert out["ok"], out["failures"]
    assert out["missing"] == []
    assert out["killed"] in out["retried"]  # the killed unit ran again, on another node
    assert out["lost"] == [out["killed"]]  # its failure was recorded as the node's, not its own


def test_a_gold_run_whose_worker_node_is_removed_fails_as_a_lost_node(tmp_path):
    from taskonomy_ray.render import SynthConfig, synthesize

    data = tmp_path / "data"
    synthesize(SynthConfig(str(data), points=3, views=3, size=32, buildings=4, workers=1),
               progress=False)
    r = run_script([str(HERE / "train_node_scenario.py"), str(data), str(tmp_path / "store")])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["killed"], "the node was never removed: the scenario did not test anything"
    # Ray Train saw a failed health check; fit_gold names the node Ray then declared dead, so
    # the scheduler retries the unit (from its checkpoint) without spending resources.retries.
    assert out["raised"] == "NodeLostError" and out["node_lost"], out
    assert out["node"] in out["message"]


def sweep_cmd(storage, data):
    return [sys.executable, "-m", "taskonomy_ray", "sweep", str(HERE.parent / "workflows" /
            "smoke.yaml"), "--storage", str(storage), "--data", str(data), "--no-progress"]


def kill_group(proc):
    """SIGKILL the driver and everything it started (its local Ray), like a crashed machine."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def test_driver_killed_at_random_points_resumes_without_redoing_work(tmp_path):
    from taskonomy_ray.sweep import ledger, plan
    from taskonomy_ray.tables import Storage

    clean = subprocess.run(sweep_cmd(tmp_path / "clean", tmp_path / "data-clean"),
                           capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-3000:]

    # Killed at random points of its progress, not of time: on a faster machine the resumed
    # sweeps finished before a timed kill came. (Keys differ from the clean run's: its data
    # root is another.)
    total = len(Storage(str(tmp_path / "clean")).read_json("plan.json")["units"])
    rng = random.Random(7)
    storage, data = tmp_path / "killed", tmp_path / "data-killed"
    st = Storage(str(storage))

    def done() -> int:
        if not st.exists("plan.json"):
            return 0
        units = [plan.Unit.from_json(u) for u in st.read_json("plan.json")["units"]]
        return sum(all(st.exists(o) for o in u.outputs) for u in units)

    kills = 0
    for lo, hi in ((0.1, 0.3), (0.35, 0.6), (0.65, 0.9)):
        target = int(total * rng.uniform(lo, hi))
        proc = subprocess.Popen(sweep_cmd(storage, data), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 600
        while proc.poll() is None and done() < target:
            assert time.monotonic() < deadline, "the sweep made no progress for 10 minutes"
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 1.0))  # (other units are part-way through)
        if proc.poll() is None:
            kill_group(proc)
            kills += 1
    assert kills >= 2, "the sweep finished before it could be killed"
    final = subprocess.run(sweep_cmd(storage, data), capture_output=True, text=True,
                           timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]

    st = Storage(str(storage))
    units = [plan.Unit.from_json(u) for u in st.read_json("plan.json")["units"]]
    done_twice = [u.key for u in units if ledger.history(st, u.key).completions > 1]
    assert done_twice == []
    assert all(st.exists(o) for u in units for o in u.outputs)
    order = [("target", "ascending"), ("order", "ascending"), ("affinity", "ascending")]
    a = pq.read_table(tmp_path / "clean" / "affinities.parquet").sort_by(order)
    b = pq.read_table(storage / "affinities.parquet").sort_by(order)
    assert a.equals(b)


def test_a_sweep_whose_source_failed_ends_fixed_and_resumed_as_if_it_never_had(ray_session,
                                                                              tmp_path):
    # Real units at smoke scale: edge_texture's labels are missing, so its gold network fails;
    # every other target's transfers train without it (partial groups, re-ranked beams later).
    # Once the files are back, a resume retrains what lacked it and ends with the affinities
    # of a sweep that never failed.
    import shutil

    from taskonomy_ray.render import SynthConfig, synthesize
    from taskonomy_ray.sweep import driver

    data, hidden = tmp_path / "data", tmp_path / "hidden"
    synthesize(SynthConfig(out=str(data), points=10, views=3, size=32, seed=0, buildings=4),
               progress=False)
    text = (HERE.parent / "workflows" / "smoke.yaml").read_text()
    wf = tmp_path / "wf.yaml"
    wf.write_text(text.replace("root: data/smoke", f"root: {data}").replace(
        "render: {points: 10, views: 3, size: 32, seed: 0, buildings: 4}", "render: null"))
    labels = sorted(data.glob("*/edge_texture"))
    for folder in labels:
        shutil.move(folder, hidden / folder.parent.name)

    def sweep(store):
        return driver.run_sweep(wf, storage_uri=str(tmp_path / store), progress=False)

    first = sweep("store")
    assert any(k.startswith("gold-edge_texture") for k in first.failures)
    assert len(first.partial) == 3  # the other targets' first-order groups
    assert first.counts["analysis"]["done"] == 1  # affinities and report of what could run
    for folder in labels:
        shutil.move(hidden / folder.parent.name, folder)
    second = sweep("store")
    assert second.ok and second.partial == {}, second.failures
    clean = sweep("clean")
    assert clean.ok
    order = [("target", "ascending"), ("order", "ascending"), ("affinity", "ascending")]
    a = pq.read_table(tmp_path / "clean" / "affinities.parquet").sort_by(order)
    b = pq.read_table(tmp_path / "store" / "affinities.parquet").sort_by(order)
    assert a.equals(b)
