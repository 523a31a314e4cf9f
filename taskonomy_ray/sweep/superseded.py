"""Loss tables of units the plan no longer has: kept out of `losses/`, taken back if planned again.

Readers take `losses/` whole as the run's per-image losses (pandas, duckdb, DESIGN.md). A resume
with `--force-config`, or a beam that ranks again, drops units whose tables are already there;
the analysis, which sees the complete plan, moves those to `superseded/losses/`. A unit planned
again later (the same key: the same computation) takes its table back instead of training again.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..tables import LOSSES_DIR, Storage
from . import plan as planning

SUPERSEDED_DIR = "superseded"  # tables of units no longer planned, at their own relative paths


def set_aside_superseded(storage: Storage, planned: Iterable[str]) -> list[str]:
    """Move the loss tables of units not in `planned` (unit keys) out of `losses/`; their paths."""
    keep = {f"{key}.parquet" for key in planned}
    moved = []
    for name in storage.list(LOSSES_DIR, ".parquet"):
        if name not in keep:
            rel = f"{LOSSES_DIR}/{name}"
            storage.move(rel, f"{SUPERSEDED_DIR}/{rel}", "the superseded table")
            moved.append(rel)
    return moved


def take_back(storage: Storage, unit: planning.Unit) -> bool:
    """Move a planned unit's superseded loss table back to `losses/`; whether one was there."""
    rel = planning.losses_path(unit.key)
    if rel not in unit.outputs or storage.exists(rel) \
            or not storage.exists(f"{SUPERSEDED_DIR}/{rel}"):
        return False
    storage.move(f"{SUPERSEDED_DIR}/{rel}", rel, "the superseded table")
    return True
