"""The sweep-only parts of the report: run facts, the gold networks' sanity, sample predictions.

Everything comes from the sweep's storage (run.json, plan.json, sweep.json, the ledger, the loss
tables, the gold checkpoints) and, for the samples, its dataset root. What a sweep has not written
yet is said in the page, not guessed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .affinity import win_rate
from .errors import StorageError, TaskonomyError
from .sweep.plan import PLAN_FILE
from .tables import LOSSES_SCHEMA, RUN_FILE, Storage

if TYPE_CHECKING:
    from .report import ReportConfig

SUMMARY_FILE = "sweep.json"  # written by sweep.driver
TRIVIAL_NOTE = ("The trivial constant-prediction baseline (the training split's best constant: "
                "median label under L1, mean under L2, class frequencies) is not "
                "measured by a sweep, so it is not available here; "
                "`benchmarks/sanity_gold.py` measures it and writes docs/sanity.md.")
SANITY_ABOUT = ("Fraction of test images on which each target's gold network (full training set) "
                "has a lower loss than the random-encoder readout (the frozen random encoder "
                "with a readout trained on the regime's images) and than the scratch network "
                "(trained from pixels on the same images); ties count half. Above 0.5: the gold "
                "network learned something the baselines did not.")


def sweep_sections(storage: Storage, cfg: ReportConfig, out: Path) -> dict[str, Any]:
    """The three sweep sections of the page (samples, sanity, run facts) as template data."""
    units = _plan_units(storage)
    run = storage.read_record(RUN_FILE, "config") if storage.exists(RUN_FILE) else None
    return {"run": run_facts(storage, run, units),
            "sanity": {"about": SANITY_ABOUT, "trivial": TRIVIAL_NOTE,
                       "rows": sanity_rows(storage, units)},
            "samples": samples(storage, run, units, cfg, out)}


def _plan_units(storage: Storage) -> list[dict[str, Any]]:
    return storage.read_record(PLAN_FILE, "units")["units"] if storage.exists(PLAN_FILE) else []


# --- run facts -------------------------------------------------------------------------------


def run_facts(storage: Storage, run: dict[str, Any] | None,
              units: list[dict[str, Any]]) -> dict[str, Any]:
    """Config, units per stage (planned, done, failed), failures, wall time per stage."""
    notes = []
    if run is None:
        notes.append(f"{RUN_FILE} is missing: this storage was not written by `taskonomy-ray "
                     "sweep`, so its configuration is unknown")
    summary = storage.read_json(SUMMARY_FILE) if storage.exists(SUMMARY_FILE) else None
    if summary is None:
        notes.append(f"{SUMMARY_FILE} is missing: the sweep is still running or was interrupted, "
                     "so stage timings are not available yet")
    counts = _unit_counts(storage, units, notes)
    stats = (summary or {}).get("stats", {})
    span, busy = stats.get("stage_span_s", {}), stats.get("unit_s", {})
    for s in counts["stages"]:
        s["span_s"] = _seconds(span.get(s["stage"]))
        s["unit_s"] = _seconds(busy.get(s["stage"]))
    return {"notes": notes, **counts,
            "version": (run or {}).get("version", "unknown"),
            "config": json.dumps((run or {}).get("config", {}), indent=1, sort_keys=True),
            "data_root": ((run or {}).get("data_root")
                          or (run or {}).get("config", {}).get("data", {}).get("root", "unknown")),
            "wall_s": _seconds((summary or {}).get("wall_s"))}


def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _unit_counts(storage: Storage, units: list[dict[str, Any]], notes: list[str]
                 ) -> dict[str, list[dict[str, Any]]]:
    """Units per stage, transfers per order, failures, partial groups, diverged and short."""
    from .sweep import ledger
    from .sweep.status import status

    if not units:
        notes.append(f"{PLAN_FILE} is missing: no unit counts or failures to show")
        return {"stages": [], "orders": [], "failures": [], "partial": [], "diverged": [],
                "short": []}
    st = status(storage.uri)
    stages = [{"stage": name, "planned": c["planned"], "done": c["done"], "failed": c["failed"],
               "blocked": c["blocked"], "open": c["planned"] - c["done"] - c["failed"]
               - c["blocked"]}
              for name, c in st["stages"].items() if c["planned"]]
    orders = [{"order": order, **c} for order, c in sorted(st["transfer_orders"].items())]
    failures = [{"key": key, "error": err, "attempts": ledger.history(storage, key).attempts}
                for key, err in sorted(st["failures"].items())]
    partial = [{"key": key, "sources": ", ".join(sources)}
               for key, sources in sorted(st["partial"].items())]
    diverged = [{"key": key, "sources": "+".join(d["sources"]), "why": d["why"]}
                for key, heads in sorted(st["diverged"].items()) for d in heads]
    short = [{"key": key, "orders": ", ".join(str(o) for o in v["orders"]), "ranked": v["ranked"]}
             for key, v in sorted(st["short"].items())]
    return {"stages": stages, "orders": orders, "failures": failures, "partial": partial,
            "diverged": diverged, "short": short}


# --- sanity: gold against the baselines the sweep trained --------------------------------------


def _losses(storage: Storage, units: list[dict[str, Any]]) -> pa.Table | None:
    """Loss rows of gold, scratch and first-order transfer units (those hold `random`)."""
    keep = [u for u in units if u["stage"] in ("gold", "scratch")
            or (u["stage"] == "transfer" and u["params"].get("order") == 1)]
    files = [o for u in keep for o in u["outputs"] if o.startswith("losses/")]
    parts = [storage.read_table(f, LOSSES_SCHEMA) for f in files if storage.exists(f)]
    return pa.concat_tables(parts) if parts else None


def sanity_rows(storage: Storage, units: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Per target and regime: gold's win rate against the random-encoder readout and scratch."""
    table = _losses(storage, units)
    if table is None:
        return []
    by: dict[tuple[str, str, int], dict[str, float]] = {}
    for unit_kind, target, sources, regime, image, loss in zip(
            *(table.column(c).to_pylist() for c in ("kind", "target", "sources", "regime",
                                                    "image", "loss"))):
        role = {"gold": "gold", "scratch": "scratch"}.get(unit_kind)
        if unit_kind == "transfer" and sources == ["random"]:
            role = "random"
        if role:
            by.setdefault((role, target, -1 if role == "gold" else regime), {})[image] = loss
    rows = []
    for (role, target, _), gold in sorted(by.items()):
        if role != "gold":
            continue
        for regime in sorted({r for (k, t, r) in by if t == target and k != "gold"}):
            rows.append({"target": target, "regime": str(regime), "images": str(len(gold)),
                         "vs_random": _win(gold, by.get(("random", target, regime))),
                         "vs_scratch": _win(gold, by.get(("scratch", target, regime)))})
    return rows


def _win(gold: dict[str, float], other: dict[str, float] | None) -> str:
    """Gold's win rate on the images both were tested on ('-' when the baseline is missing)."""
    if not other:
        return "- (not trained)"
    shared = sorted(set(gold) & set(other))
    if not shared:
        return "- (no common test images)"
    rate = win_rate(np.array([[gold[i] for i in shared]]), np.array([other[i] for i in shared]))
    return f"{float(rate[0]):.2f}"


# --- samples -----------------------------------------------------------------------------------


def samples(storage: Storage, run: dict[str, Any] | None, units: list[dict[str, Any]],
            cfg: ReportConfig, out: Path) -> dict[str, Any]:
    """Sample predictions of every gold network, or a note saying why there are none."""
    empty: dict[str, Any] = {"images": [], "skipped": []}
    if cfg.samples == 0:
        return {**empty, "note": "samples were turned off (samples=0)"}
    if run is None:
        return {**empty, "note": f"no {RUN_FILE}: the dataset of this storage is unknown"}
    from .sweep import config as sweep_config
    from .sweep import units as sweep_units

    try:
        swept = sweep_config.from_dict(run["config"])
    except (TaskonomyError, KeyError, TypeError) as e:
        raise StorageError(f"{storage.path(RUN_FILE)} holds no readable sweep config ({e}); "
                           "it was written by another version") from e
    # The absolute root run.json recorded: the config's may be relative to where the sweep ran.
    root = cfg.data_root or run.get("data_root") or swept.data.root
    if not os.path.isdir(root):
        return {**empty, "note": f"the dataset root {root!r} of this sweep is not here, so no "
                                 "test images can be shown; pass the dataset with "
                                 "`taskonomy-ray report STORAGE --data DIR`"}
    gold = [u for u in units if u["stage"] == "gold"]
    if not gold:
        return {**empty, "note": "the plan has no gold networks"}
    from .report_samples import gold_samples

    return gold_samples(storage, gold, root, sweep_units.splits(swept), cfg.samples, out)
