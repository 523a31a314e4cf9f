"""Run a stand-in sweep on a simulated 3-node Ray cluster and kill a worker node mid-sweep.

Run by tests/test_sweep_faults.py in its own process (a second Ray cannot share the test
session's). Prints one JSON line: the sweep's outcome.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import ray
import sweep_fakes
from ray import cloudpickle
from ray.cluster_utils import Cluster

from taskonomy_ray.sweep import driver, ledger, plan
from taskonomy_ray.tables import Storage

cloudpickle.register_pickle_by_value(sweep_fakes)


def start_cluster() -> Cluster:
    """The simulated head; started again once if its GCS is slow to come up on a busy machine.

    Start-up is not what this scenario tests (it timed out once in a full `make test`, waiting
    for the GCS port file, and passed alone).
    """
    try:
        return Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    except RuntimeError as e:
        print(f"cluster start-up failed ({e}); starting it once more", file=sys.stderr)
        ray.shutdown()
        return Cluster(initialize_head=True, head_node_args={"num_cpus": 0})


def main(workflow: str, storage_uri: str) -> None:
    cluster = start_cluster()
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    storage = Storage(storage_uri)
    storage.ensure_writable()
    storage.write_json("fake.json", {"seconds": 1.0, "mark_nodes": True})
    killed = {}

    def kill_when_busy() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            # kill the node of the first gold unit seen running (each unit takes 1 s)
            running = [n for n in storage.list("running") if n.startswith("gold-")]
            if running:
                node_id = storage.read_json(f"running/{running[0]}")["node"]
                victim = next((w for w in workers if w.node_id == node_id), None)
                if victim is None:  # on the head? it has no CPUs, so this cannot happen
                    return
                cluster.remove_node(victim, allow_graceful=False)
                killed["unit"] = running[0][: -len(".json")]
                cluster.add_node(num_cpus=1)  # capacity comes back, as an autoscaler would
                return
            time.sleep(0.02)

    t = threading.Thread(target=kill_when_busy, daemon=True)
    t.start()
    result = driver.run_sweep(workflow, storage_uri=storage_uri,
                              execute=sweep_fakes.fake_execute, progress=False, report=False)
    t.join()
    units = [plan.Unit.from_json(u) for u in storage.read_json("plan.json")["units"]]
    missing = [u.key for u in units if not driver.outputs_exist(storage, u)]
    retried = [u.key for u in units if ledger.history(storage, u.key).attempts > 1]
    lost = [u.key for u in units if any(e.get("node_lost") for e in
                                        ledger.history(storage, u.key).events)]
    print(json.dumps({"ok": result.ok, "failures": result.failures, "killed": killed.get("unit"),
                      "missing": missing, "retried": retried, "lost": lost,
                      "units": len(units)}))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
