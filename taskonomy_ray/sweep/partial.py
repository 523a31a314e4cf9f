"""A transfer group's partial record: the transfers it trained without, and why.

A group trains without sources whose representations failed, and leaves out heads that
diverged; `partial/<unit>.json` says so until a later run trains the group whole. Pure.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import DataError
from ..tables import Storage
from . import config as sweep_config
from . import plan as planning


def trainable_sets(unit: planning.Unit, cfg: sweep_config.SweepConfig,
                   storage: Storage) -> tuple[list[list[str]], dict[str, Any] | None]:
    """A transfer group's source sets whose representations are all in storage, and a record.

    The record names the rest (None: none left out); `record_partial` stores it once the
    losses are written. Before any training the stored record becomes what both the old loss
    table (if any) and the new one lack, so a crash at any point never leaves a table that
    looks more complete than it is.
    """
    p = unit.params
    missing = [d for d in unit.optional if not storage.exists(planning.features_path(d))]
    absent = {s for ss in p["source_sets"] for s in ss
              if any(planning.features_key(cfg, s, i) in missing
                     for i in planning.imagesets(p["target"], p["regime"]))}
    kept = [ss for ss in p["source_sets"] if absent.isdisjoint(ss)]
    left_out = [ss for ss in p["source_sets"] if not absent.isdisjoint(ss)]
    if not kept:
        raise DataError(f"no transfer of {unit.key} can train: the representations of "
                        f"{', '.join(sorted(absent))} are missing (their units failed; see the "
                        "sweep's failures). Fix those and resume")
    record = ({"without": missing, "left_out": left_out, "sources": sorted(absent)}
              if left_out else None)
    old = read_partial(storage, unit.key)
    if old is not None or record is not None:
        both = [r for r in (old, record) if r is not None]
        storage.write_json(planning.partial_path(unit.key),
                           {k: sorted({json.dumps(x): x for r in both for x in r.get(k, [])}
                                      .values(), key=json.dumps)
                            for k in ("without", "left_out", "sources", "diverged")})
    return kept, record


def read_partial(storage: Storage, key: str) -> dict[str, Any] | None:
    """A transfer group's partial record (`without`, `left_out`, `sources`, `diverged`), or None.

    `diverged`: transfers left out because their loss turned non-finite, each with why.
    """
    path = planning.partial_path(key)
    return storage.read_json(path) if storage.exists(path) else None


def record_partial(storage: Storage, unit: planning.Unit, record: dict[str, Any] | None) -> None:
    """After a transfer group's losses are written: what they lack, or no record if nothing."""
    if record is None:
        storage.delete(planning.partial_path(unit.key))
    else:
        storage.write_json(planning.partial_path(unit.key), record)
