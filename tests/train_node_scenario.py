"""A gold network's Ray Train run loses its worker's node: the run fails as a lost node.

Run by tests/test_sweep_faults.py in its own process (a second Ray cannot share the test
session's). Prints one JSON line: what `fit_gold` raised.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray
from cluster_scenario import start_cluster

from taskonomy_ray.sweep import config, driver, plan, runner
from taskonomy_ray.tables import Storage


def main(data: str, store: str) -> None:
    cluster = start_cluster()
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    from taskonomy_ray.sweep.train_runner import fit_gold

    cfg = config.from_dict({
        "name": "t", "tasks": ["normal"], "regimes": [4], "max_order": 1, "data": {"root": data},
        "network": {"model": {"image_size": 32},
                    "train": {"steps": 100_000, "batch_size": 4, "checkpoint_every": 2}}})
    unit = next(u for u in plan.build(cfg) if u.stage == "gold")
    storage = Storage(store)
    runs = Path(storage.uri_for("ray_train")) / unit.key
    killed: dict[str, float] = {}

    def kill_after_first_checkpoint() -> None:
        deadline = time.time() + 240
        while time.time() < deadline:
            if list(runs.glob("checkpoint_*")):
                cluster.remove_node(worker, allow_graceful=False)
                killed["at"] = time.time()
                return
            time.sleep(0.2)

    t = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    t.start()
    out: dict[str, object] = {"node": worker.node_id}
    try:
        fit_gold(unit, driver.make_context(cfg, storage))
        out["raised"] = None
    except Exception as e:
        out.update(raised=type(e).__name__, message=str(e).splitlines()[0],
                   node_lost=runner.is_node_lost(e),
                   seconds_after_kill=time.time() - killed.get("at", time.time()))
    t.join()
    out["killed"] = "at" in killed
    print(json.dumps(out))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
