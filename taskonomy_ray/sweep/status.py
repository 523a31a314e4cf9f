"""`taskonomy-ray status`: a sweep's progress read from its storage alone, live or after a crash.

Each unit's state comes from its outputs and, if it has none yet, its ledger; `verify` checks
the done units' files as a resume would (moving nothing) and finds the ones left stale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import StorageError, TaskonomyError
from ..tables import Storage
from . import lease, ledger
from . import plan as planning
from .driver import damaged_files, outputs_exist
from .plan import PLAN_FILE
from .scheduler import changed_inputs

# Per stage: planned = all of them; blocked = waiting on a failed unit (never run).
STATUS_STATES = ("planned", "pending", "running", "done", "failed", "blocked")


def status(storage_uri: str, verify: bool = False) -> dict[str, Any]:
    """Per stage planned/pending/running/done/failed/blocked, and per transfer order.

    `verify` also checks every done unit's files as a resume does (`damaged_files`: Parquet
    footers, zip directories, JSON, partial records, a beam's choice), moving nothing, and
    lists the damaged ones, and the done units whose inputs changed since they ran (`stale`).
    """
    storage = Storage(storage_uri)
    if not storage.exists(PLAN_FILE):
        raise StorageError(f"no sweep found in {storage.display} ({PLAN_FILE} missing); start one "
                           "with `taskonomy-ray sweep CONFIG --storage ...`")
    units = [planning.Unit.from_json(u) for u in storage.read_record(PLAN_FILE, "units")["units"]]
    found = _look(storage, units, verify)
    driver = lease.holder(storage)
    if driver is None:  # started, never ended, and no sweep drives it: interrupted, to resume
        found["state"].update({k: "pending" for k, s in found["state"].items() if s == "running"})
    blocked = _block(units, found["state"],
                     lambda key: storage.exists(planning.losses_path(key)))
    stale = _stale(storage, units, found["state"]) if verify else None
    stages, orders = _count(units, found["state"], found["left_out"])
    return {"storage": storage.display, "stages": stages, "transfer_orders": orders,
            "failures": found["failures"], "blocked": blocked, "partial": found["partial"],
            "diverged": found["diverged"], "short": found["short"],
            "driver": driver, "damaged": found["damaged"] if verify else None,
            "stale": stale}


def _look(storage: Storage, units: list[planning.Unit], verify: bool) -> dict[str, dict]:
    """Each unit's state and what its stored records say; one look at storage per unit.

    (On an object store each look is a request.)
    """
    from .partial import read_partial

    out: dict[str, dict] = {k: {} for k in ("state", "failures", "partial", "diverged", "short",
                                            "left_out", "damaged")}
    state = out["state"]
    for u in units:
        if not outputs_exist(storage, u):
            h = ledger.history(storage, u.key)
            # `running`: started, not ended (pending instead when no sweep drives the storage).
            state[u.key] = {"done": "pending", "planned": "pending"}.get(h.state, h.state)
            if state[u.key] == "failed":
                out["failures"][u.key] = h.last_error or ""
            continue
        state[u.key] = "done"
        bad = damaged_files(storage, u) if verify else []
        if bad:
            out["damaged"][u.key] = [f"{storage.path(rel)} ({why})" for rel, why in bad]
        if u.stage == "beam":
            skipped = None if bad else _skipped_orders(storage, u)
            if skipped:
                out["short"][u.key] = skipped
            h = ledger.history(storage, u.key)  # ranked again and failed: the old choice
            if h.state == "failed":  # stands no more
                state[u.key] = "failed"
                out["failures"][u.key] = h.last_error or ""
        cut = planning.partial_path(u.key) in {rel for rel, _ in bad}
        record = read_partial(storage, u.key) if u.optional and not cut else None
        if record is not None:
            if record["sources"]:
                out["partial"][u.key] = record["sources"]
            if record.get("diverged"):  # transfers left out: non-finite losses
                out["diverged"][u.key] = record["diverged"]
            out["left_out"][u.key] = len(record["left_out"])
    return out


def _block(units: list[planning.Unit], state: dict[str, str],
           has_losses: Callable[[str], bool]) -> dict[str, str]:
    """Mark pending units waiting on a failed one `blocked` (until a resume runs it again).

    `has_losses(key)`: whether a unit's losses are in storage (a failed rerun's earlier ones).
    """
    blocked: dict[str, str] = {}

    def bad(key: str) -> str | None:
        s = state.get(key)
        return s if s in ("failed", "blocked") else None

    changed = True
    while changed:
        changed = False
        writers = [o.key for o in units
                   if not o.barrier and planning.losses_path(o.key) in o.outputs]
        none_done = all(bad(k) for k in writers) and not any(map(has_losses, writers))
        for u in units:
            if state[u.key] != "pending":
                continue
            why = planning.blocked_reason(u, bad, u.params.get("chosen_by"), none_done)
            if why is None:
                continue
            blocked[u.key] = why
            state[u.key] = "blocked"
            changed = True
    return blocked


def _stale(storage: Storage, units: list[planning.Unit], state: dict[str, str]
           ) -> dict[str, list[str]]:
    """Done units whose inputs changed since they ran (a driver died before rerunning them)."""
    done = [u for u in units if state[u.key] == "done"]
    found = ledger.versions(storage, [u.key for u in done])
    versions = {u.key: ledger.stored_version(storage, u, found[u.key]) for u in done}
    digests = {k: v.digest for k, v in versions.items()}
    return {k: inputs for k, v in versions.items() if (inputs := changed_inputs(v.inputs, digests))}


def _count(units: list[planning.Unit], state: dict[str, str], left_out: dict[str, int]
           ) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """Units per stage and state; transfer groups and their transfers per order.

    A beam not yet done counts the groups it will choose (`expects`; older plans lack it).
    """
    stages = {s: dict.fromkeys(STATUS_STATES, 0) for s in planning.STAGES}
    orders: dict[str, dict[str, int]] = {}

    def order(k: Any) -> dict[str, int]:
        return orders.setdefault(str(k), dict.fromkeys(
            ("planned", "done", "failed", "blocked", "transfers_planned", "transfers_done"), 0))

    for u in units:
        stages[u.stage]["planned"] += 1
        stages[u.stage][state[u.key]] += 1
        if u.stage == "transfer":
            o = order(u.params["order"])
            o["planned"] += 1
            for s in ("done", "failed", "blocked"):
                o[s] += state[u.key] == s
            n = len(u.params["source_sets"])
            o["transfers_planned"] += n
            o["transfers_done"] += (n - left_out.get(u.key, 0)) if state[u.key] == "done" else 0
        elif u.stage == "beam" and state[u.key] != "done":
            for k, n in u.params.get("expects", {}).items():
                o = order(k)
                o["planned"] += 1
                o["blocked"] += state[u.key] in ("failed", "blocked")
                o["transfers_planned"] += n
    return stages, orders


def _skipped_orders(storage: Storage, beam: planning.Unit) -> dict[str, Any] | None:
    """A done beam's orders it could not fill ({"orders", "ranked"}), or None if it filled all.

    (An unreadable JSON is `--verify`'s to report, not a reason to stop the listing.)
    """
    try:
        doc = storage.read_json(beam.outputs[0])
    except (TaskonomyError, ValueError):
        return None
    skipped = doc.get("skipped") if isinstance(doc, dict) else None
    return {"orders": skipped, "ranked": len(doc.get("ranked", []))} if skipped else None
