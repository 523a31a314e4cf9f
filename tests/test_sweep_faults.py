"""Fault tolerance for real: a worker node removed mid-sweep, and a driver killed with SIGKILL."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
    wf.write_text(WORKFLOW.replace("DATA", str(tmp_path / "data")))
    r = run_script([str(HERE / "cluster_scenario.py"), str(wf), str(tmp_path / "store")])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["killed"], "the node was never removed: the scenario did not test anything"
    assert out["ok"], out["failures"]
    assert out["missing"] == []
    assert out["killed"] in out["retried"]  # the killed unit ran again, on another node
