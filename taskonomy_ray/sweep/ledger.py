"""The ledger of unit events in storage: what started, finished or failed, append-only.

Each event is its own small JSON file (`ledger/<unit>/<time>-<id>.json`, named later than the
unit's last event whatever the host's clock says), so appending is safe on object stores too; a
unit's outputs in storage, not the ledger, decide whether it is done.
"""

from __future__ import annotations

import hashlib
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import StorageError
from ..tables import Storage
from .plan import Unit
from .scheduler import Version

LEDGER_DIR = "ledger"
EVENTS = ("started", "done", "failed")


@dataclass
class UnitHistory:
    """Every event of one unit, oldest first."""

    key: str
    events: list[dict[str, Any]] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # event files that could not be read

    @property
    def state(self) -> str:
        """`done`, `failed`, `running` (started, not ended: running or interrupted), `planned`."""
        if not self.events:
            return "planned"
        last = self.events[-1]["event"]
        return "running" if last == "started" else last

    @property
    def completions(self) -> int:
        """How many times the unit finished: more than once would mean work was redone."""
        return sum(e["event"] == "done" for e in self.events)

    @property
    def attempts(self) -> int:
        """How many times the unit was started."""
        return sum(e["event"] == "started" for e in self.events)

    @property
    def last_error(self) -> str | None:
        """The error of the latest failure, if any."""
        fails = [e for e in self.events if e["event"] == "failed"]
        return fails[-1].get("error") if fails else None


def record(storage: Storage, key: str, event: str, **info: Any) -> None:
    """Append one event for unit `key` (with time and host) to the ledger."""
    if event not in EVENTS:
        raise ValueError(f"ledger event must be one of {EVENTS}, got {event!r}")
    now = time.time()
    stamp = max(now, _last_stamp(storage, key) + 1e-6)
    name = f"{stamp:017.6f}-{uuid.uuid4().hex[:8]}.json"
    storage.write_json(f"{LEDGER_DIR}/{key}/{name}",
                       {"event": event, "time": now, "host": socket.gethostname(), **info})


def _last_stamp(storage: Storage, key: str) -> float:
    """The time stamp that names unit `key`'s last event (0 if none).

    A new event is named after it even if this host's clock is behind the host that wrote it:
    events are read in name order, and a `done` sorted before the `started` of the same attempt
    would make the unit look interrupted and hide the digests it recorded.
    """
    for name in reversed(storage.list(f"{LEDGER_DIR}/{key}", ".json")):
        try:
            return float(name.split("-", 1)[0])
        except ValueError:
            continue  # not an event's name: skipped, as `history` lists it damaged
    return 0.0


def history(storage: Storage, key: str) -> UnitHistory:
    """All events of one unit; a damaged event file is listed in `damaged` and skipped.

    Events only describe the unit (its outputs decide whether it is done), so one cut short by a
    copy of the run costs its line of history, not `status` or the sweep.
    """
    out = UnitHistory(key)
    for name in storage.list(f"{LEDGER_DIR}/{key}", ".json"):
        rel = f"{LEDGER_DIR}/{key}/{name}"
        try:
            event = storage.read_json(rel)
        except StorageError:
            event = None
        if isinstance(event, dict) and event.get("event") in EVENTS:
            out.events.append(event)
        else:
            out.damaged.append(storage.path(rel))
    return out


def version(storage: Storage, key: str) -> Version | None:
    """What unit `key` wrote and read as its last event says (`run_unit` records both at its end).

    None when the last event is not a readable `done` (or there is none): the outputs there may
    be newer than any recorded digest (a unit that wrote them and died before saying so), so the
    caller digests them (`stored_version`). A `done` of an older version, without digests, is
    unknown (`Version()`): taken as it is. Reads one event, the last.
    """
    names = storage.list(f"{LEDGER_DIR}/{key}", ".json")
    if not names:
        return None
    try:
        last = storage.read_json(f"{LEDGER_DIR}/{key}/{names[-1]}")
    except StorageError:
        return None
    if not isinstance(last, dict) or last.get("event") != "done":
        return None
    return Version(last["digest"] if isinstance(last.get("digest"), str) else None,
                   _inputs(last))


def _inputs(event: dict[str, Any]) -> dict[str, str | None]:
    inputs = event.get("inputs")
    return {str(k): v if isinstance(v, str) else None
            for k, v in inputs.items()} if isinstance(inputs, dict) else {}


def last_done_inputs(storage: Storage, key: str) -> dict[str, str | None]:
    """What unit `key` read the last time it finished ({} if no readable `done` says).

    For a unit whose later attempt failed or was cut short: its outputs are that `done`'s, or
    newer ones written from inputs no older, so judging them by these inputs never keeps a
    result computed from an input that has changed since (at worst it runs once more).
    """
    for name in reversed(storage.list(f"{LEDGER_DIR}/{key}", ".json")):
        try:
            event = storage.read_json(f"{LEDGER_DIR}/{key}/{name}")
        except StorageError:
            continue
        if isinstance(event, dict) and event.get("event") == "done":
            return _inputs(event)
    return {}


def versions(storage: Storage, keys: list[str], threads: int = 16) -> dict[str, Version | None]:
    """`version` of many units, read concurrently (on an object store each is two requests)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return dict(zip(keys, pool.map(lambda k: version(storage, k), keys), strict=True))


def outputs_digest(storage: Storage, unit: Unit) -> str | None:
    """One digest of a unit's outputs as they are in storage, or None for a render.

    (A render's output is its data root, the same files for the same key; its marker holds
    timings, which differ from run to run.)
    """
    if unit.stage == "render":
        return None
    h = hashlib.sha256()
    for rel in unit.outputs:
        h.update(f"{rel}\0{storage.digest(rel)}\0".encode())
    return h.hexdigest()[:32]


def stored_version(storage: Storage, unit: Unit, known: Version | None) -> Version:
    """A done unit's version: its last event's if that is a `done`, else computed from storage.

    That is its outputs' digest, judged by what it read when it last finished
    (`last_done_inputs`): a stale unit whose rerun failed, or died, still holds the result of
    its old inputs, and stays stale for the next resume.
    """
    if known is not None:
        return known
    return Version(outputs_digest(storage, unit), last_done_inputs(storage, unit.key))
