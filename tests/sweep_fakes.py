"""A stand-in for the unit executors, for tests of the runner's mechanics (not of training).

It writes each unit's promised outputs after an optional delay, so scheduling, the ledger,
resumption and node failures can be exercised in seconds.
"""

from __future__ import annotations

import json
import os
import time

from taskonomy_ray.errors import DataError
from taskonomy_ray.tables import Storage


class UnpicklableError(DataError):
    """A project error that pickle rebuilds from its message alone, and so cannot (BadFile's
    two-argument __init__ was one)."""

    def __init__(self, key, detail):
        super().__init__(f"unit {key}: {detail}")
        self.key = key


def fake_execute(unit, ctx):
    storage = Storage(ctx["storage"])
    knobs = storage.read_json("fake.json") if storage.exists("fake.json") else {}
    if knobs.get("mark_nodes"):  # tell a fault test which node runs what
        import ray

        storage.write_json(f"running/{unit.key}.json",
                           {"node": ray.get_runtime_context().get_node_id()})
    time.sleep(knobs.get("seconds", 0.0))
    busy = knobs.get("busy_seconds", 0.0)  # CPU work: takes longer when cores are shared
    t0 = time.thread_time()
    while time.thread_time() - t0 < busy:
        pass
    if knobs.get("steal_claim") and unit.stage == "gold":  # another driver takes the storage
        storage.write_json("driver.json", {"token": "another", "host": "elsewhere", "pid": 1,
                                           "started": time.time(), "renewed": time.time()})
    if any(part in unit.key for part in knobs.get("die", [])):
        os._exit(1)  # the worker process dies, as one killed for memory would
    if any(part in unit.key for part in knobs.get("fail", [])):
        from taskonomy_ray.errors import TrainingError

        raise TrainingError(f"unit {unit.key}: non-finite loss at step 3")
    if any(part in unit.key for part in knobs.get("fail_unpicklable", [])):
        raise UnpicklableError(unit.key, "a corrupt file")
    if unit.stage == "render":  # a stand-in dataset: what the render's done check looks for
        from taskonomy_ray import layout
        from taskonomy_ray.render.synth import dataset_info
        from taskonomy_ray.sweep import config, units

        synth = units.render_config(config.from_dict(ctx["config"]), ctx["data_root"])
        layout.write_info(ctx["data_root"], {**dataset_info(synth), "complete": True})
    if unit.stage == "transfer":  # as run_transfer: train what has its sources, record the rest
        from taskonomy_ray.sweep import config, partial

        kept, record = partial.trainable_sets(unit, config.from_dict(ctx["config"]), storage)
    # What the result depends on: a transfer group's losses, on the sources it trained; any
    # unit's, on the time when it is told to vary (a retraining that is not bit-identical).
    content = unit.key + (f" {kept}" if unit.stage == "transfer" else "")
    if any(part in unit.key for part in knobs.get("vary", [])):
        content += f" {time.time()}"
    for out in unit.outputs:
        if unit.stage == "beam":
            srcs = [s for s in ctx["config"]["tasks"] if s != unit.params["target"]][:2]
            storage.write_json(out, {"chosen": {"2": [srcs]}})
        elif out == "taxonomy.json":  # (a resume checks it was solved as the workflow asks)
            from taskonomy_ray.sweep import config

            solve = config.from_dict(ctx["config"]).solve
            storage.write_json(out, {"unit": content, "budget": solve.budget,
                                     "max_order": solve.max_order,
                                     "regime": max(ctx["config"]["regimes"]),
                                     "workflow_solve": solve.weighing()})
        else:
            storage.write_bytes(out, stand_in(out, content))
    if unit.stage == "transfer":
        partial.record_partial(storage, unit, record)
    return {"pid": os.getpid()}


def stand_in(rel: str, key: str) -> bytes:
    """A small whole file of `rel`'s kind (a resume checks Parquet footers and zip directories)."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if rel.endswith(".parquet"):
        sink = pa.BufferOutputStream()
        if rel == "affinities.parquet":  # (a resume reads its scores): one row, keyed
            from taskonomy_ray.tables import AFFINITIES_SCHEMA

            table = pa.table({"regime": [8], "target": [key], "sources": [["self"]], "order": [1],
                              "affinity": [0.5], "quality": [0.5], "gain": [0.5]}
                             ).cast(AFFINITIES_SCHEMA)
        else:
            table = pa.table({"unit": [key]})
        pq.write_table(table, sink)
        return sink.getvalue().to_pybytes()
    if rel.endswith((".npz", ".pt")):
        buf = io.BytesIO()
        np.savez(buf, unit=np.asarray([key]))
        return buf.getvalue()
    return json.dumps({"unit": key}).encode()
