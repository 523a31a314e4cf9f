"""Sweep-layer overhead and scaling, with stand-in units of known cost (no training).

    .venv/bin/python benchmarks/bench_sweep.py [--units-seconds 0.3] [--mini-storage runs/mini]

1. Overhead: the mini plan (the 26-task sweep, with a stand-in beam choosing one pair per
   target: 375 units) run with units that busy-wait a fixed time on 2 CPUs; overhead share
   = 1 - (sum of unit time / CPUs) / wall time.
2. Scaling: the same on a simulated cluster of 1 node x 1 CPU against 2 nodes x 1 CPU
   (ray.cluster_utils.Cluster), units per second of each, and their ratio.
3. If --mini-storage names a finished mini sweep, its wall time and per-stage breakdown.
Prints one JSON line of figures last. Takes about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import ray
from ray import cloudpickle
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import sweep_fakes  # noqa: E402

from taskonomy_ray.sweep import driver  # noqa: E402
from taskonomy_ray.tables import Storage  # noqa: E402

cloudpickle.register_pickle_by_value(sweep_fakes)
REPO = Path(__file__).resolve().parents[1]


def fake_sweep(workflow: Path, seconds: float, tmp: Path) -> dict:
    """Run `workflow`'s plan with units that busy-wait `seconds`; returns wall and unit time."""
    storage = tmp / f"store-{time.time_ns()}"
    st = Storage(str(storage))
    st.ensure_writable()
    st.write_json("fake.json", {"busy_seconds": seconds})
    result = driver.run_sweep(workflow, storage_uri=str(storage), data_root=str(tmp / "data"),
                              execute=sweep_fakes.fake_execute, progress=False, report=False)
    unit_s = sum(result.stats["unit_s"].values())
    units = sum(c["done"] for c in result.counts.values())
    return {"wall_s": result.wall_s, "unit_s": unit_s, "units": units,
            "driver_s": result.stats["driver_s"]}


def overhead(workflow: Path, seconds: float, tmp: Path) -> dict:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        r = fake_sweep(workflow, seconds, tmp)
    finally:
        ray.shutdown()
    ideal = r["unit_s"] / 2
    return {**r, "overhead_share": 1 - ideal / r["wall_s"]}


def scaling(workflow: Path, seconds: float, tmp: Path) -> dict:
    out = {}
    for nodes in (1, 2):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        for _ in range(nodes):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            r = fake_sweep(workflow, seconds, tmp)
        finally:
            ray.shutdown()
            cluster.shutdown()
        out[f"{nodes}_node_units_per_s"] = r["units"] / r["wall_s"]
    out["two_node_speedup"] = out["2_node_units_per_s"] / out["1_node_units_per_s"]
    return out


def mini_breakdown(storage: str) -> dict:
    st = Storage(storage)
    summary = st.read_json("sweep.json")
    return {"mini_wall_s": summary["wall_s"], "mini_stage_span_s": summary["stats"]["stage_span_s"],
            "mini_unit_s": summary["stats"]["unit_s"],
            "mini_driver_share": summary["stats"]["driver_s"] / summary["wall_s"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--units-seconds", type=float, default=0.3)
    p.add_argument("--mini-storage", default=None)
    args = p.parse_args()
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        wf = Path(tmp) / "mini.yaml"
        wf.write_text((REPO / "workflows" / "mini.yaml").read_text())
        figures["overhead"] = overhead(wf, args.units_seconds, Path(tmp))
        print("overhead", figures["overhead"], flush=True)
        small = Path(tmp) / "smoke.yaml"
        small.write_text((REPO / "workflows" / "smoke.yaml").read_text())
        figures["scaling"] = scaling(small, args.units_seconds, Path(tmp))
        print("scaling", figures["scaling"], flush=True)
    if args.mini_storage:
        figures["mini"] = mini_breakdown(args.mini_storage)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
