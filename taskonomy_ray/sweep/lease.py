"""One driver per storage: a lease in `driver.json`, renewed while the sweep runs.

Two sweeps on one storage would train the same units twice and overwrite each other's resume
checkpoints. A driver claims the storage at start, renews the claim every RENEW_S seconds while
it schedules, and gives it up when it ends. A claim is stale, and taken over, once it has not
been renewed for LEASE_S seconds, or at once when it names a process of this host that is gone
(a driver killed a moment ago need not be waited for).
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, StorageError
from ..tables import Storage

DRIVER_FILE = "driver.json"
LEASE_S = 120.0  # a claim not renewed for this long belongs to a driver that is gone
RENEW_S = 30.0


def _alive_here(claim: dict[str, Any]) -> bool:
    """Whether the claim's process is alive, for a claim of this host (else assume it is)."""
    if claim.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(claim["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True


def _age(claim: dict[str, Any]) -> float:
    """Seconds since `claim` was renewed (infinite for a claim without a readable time)."""
    try:
        return time.time() - float(claim["renewed"])
    except (KeyError, TypeError, ValueError):
        return math.inf


def _live(claim: dict[str, Any]) -> bool:
    return _age(claim) < LEASE_S and _alive_here(claim)


@dataclass
class Lease:
    """A driver's claim on a storage (its token tells its own claim from another's)."""

    storage: Storage
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    renewed: float = 0.0
    started: float = field(default_factory=time.time)

    def _record(self) -> bytes:
        self.renewed = time.time()
        return (json.dumps({"token": self.token, "host": socket.gethostname(),
                            "pid": os.getpid(), "started": self.started,
                            "renewed": self.renewed}) + "\n").encode()

    def _write(self) -> None:
        self.storage.write_bytes(DRIVER_FILE, self._record())

    def _create(self) -> bool:
        """Write the first claim only if there is none (atomically on a local storage)."""
        if not self.storage.local:  # object stores: best effort, checked again by `renew`
            self._write()
            return True
        path = self.storage.path(DRIVER_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(self._record())
        return True

    def renew(self, now: bool = False) -> None:
        """Renew the claim if RENEW_S have passed, or `now` (the scheduling loop calls it).

        A claim another driver holds (`--takeover`, or one that claimed the storage at the same
        moment) stops this one; a storage error while renewing is reported and retried next time.
        """
        if not now and time.time() - self.renewed < RENEW_S:
            return
        held = self._read()
        if held is not None and held.get("token") != self.token:
            raise ConfigError(f"storage {self.storage.display} is claimed by another sweep "
                              f"(host {held.get('host')}, pid {held.get('pid')}); this one stops "
                              "scheduling")
        try:
            self._write()
        except StorageError as e:
            print(f"taskonomy-ray: could not renew the claim on {self.storage.display} ({e}); "
                  "retrying", file=sys.stderr)

    def release(self) -> None:
        """Give the storage up, if the claim is still ours."""
        held = self._read()
        if held is not None and held.get("token") == self.token:
            self.storage.delete(DRIVER_FILE)

    def _read(self) -> dict[str, Any] | None:
        if not self.storage.exists(DRIVER_FILE):
            return None
        try:
            held = self.storage.read_json(DRIVER_FILE)
        except StorageError:
            return None  # a damaged claim claims nothing
        return held if isinstance(held, dict) else None


def claim(storage: Storage, takeover: bool = False) -> Lease:
    """Claim `storage` for this driver, or refuse while another live driver holds it."""
    lease = Lease(storage)
    for _ in range(3):
        held = lease._read()
        if held is not None and not takeover and _live(held):
            age = _age(held)
            when, lapse = (f"last renewed {age:.0f} s ago", f"wait {LEASE_S - age:.0f} s for "
                           "its claim to lapse or pass --takeover") if age >= 0 else (
                f"its last renewal dated {-age:.0f} s ahead of this host's clock: the hosts' "
                "clocks differ, or the file was edited", "pass --takeover")
            raise ConfigError(
                f"another sweep drives storage {storage.display} (host {held.get('host')}, pid "
                f"{held.get('pid')}, {when}): two would train the same units twice. Wait for "
                f"it to end, stop it, or, if it is gone, {lapse}")
        if held is not None or storage.exists(DRIVER_FILE):  # lapsed, dead, damaged or taken
            lease._write()
        elif not lease._create():  # another driver created it a moment ago: look again
            continue
        mine = lease._read()
        if mine is not None and mine.get("token") == lease.token:
            return lease
    raise ConfigError(f"another sweep claimed storage {storage.display} at the same moment; "
                      "run one sweep per storage")


def holder(storage: Storage) -> dict[str, Any] | None:
    """The live claim on `storage` (host, pid, seconds since renewed), or None: for `status`."""
    held = Lease(storage)._read()
    if held is None or not _live(held):
        return None
    return {"host": held.get("host"), "pid": held.get("pid"),
            "renewed_s_ago": round(_age(held), 1)}
