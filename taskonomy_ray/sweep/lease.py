"""One driver per storage: a lease in `driver.json`, renewed while the sweep runs.

Two sweeps on one storage would train the same units twice and overwrite each other's resume
checkpoints. A driver claims the storage at start, renews the claim every RENEW_S seconds while
it schedules, and gives it up when it ends. A claim is stale, and taken over, once it has not
been renewed for LEASE_S seconds, or at once when it names a process of this host that is gone
(a driver killed a moment ago need not be waited for).
"""

from __future__ import annotations

import os
import socket
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


@dataclass
class Lease:
    """A driver's claim on a storage (its token tells its own claim from another's)."""

    storage: Storage
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    renewed: float = 0.0

    def _write(self, started: float) -> None:
        self.renewed = time.time()
        self.storage.write_json(DRIVER_FILE, {
            "token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
            "started": started, "renewed": self.renewed})

    def renew(self) -> None:
        """Renew the claim if RENEW_S have passed (called from the scheduling loop).

        A claim another driver took over (`--takeover`, this one thought gone) stops this one.
        """
        if time.time() - self.renewed < RENEW_S:
            return
        held = self._read()
        if held is not None and held.get("token") != self.token:
            raise ConfigError(f"storage {self.storage.display} was taken over by another sweep "
                              f"(host {held.get('host')}, pid {held.get('pid')}); this one stops "
                              "scheduling")
        self._write(held.get("started", self.renewed) if held else self.renewed)

    def release(self) -> None:
        """Give the storage up, if the claim is still ours."""
        claim = self._read()
        if claim is not None and claim.get("token") == self.token:
            self.storage.delete(DRIVER_FILE)

    def _read(self) -> dict[str, Any] | None:
        if not self.storage.exists(DRIVER_FILE):
            return None
        try:
            claim = self.storage.read_json(DRIVER_FILE)
        except StorageError:
            return None  # a damaged claim claims nothing
        return claim if isinstance(claim, dict) else None


def claim(storage: Storage, takeover: bool = False) -> Lease:
    """Claim `storage` for this driver, or refuse while another live driver holds it."""
    lease = Lease(storage)
    held = lease._read()
    if held is not None and not takeover:
        age = time.time() - float(held.get("renewed", 0.0))
        if age < LEASE_S and _alive_here(held):
            raise ConfigError(
                f"another sweep drives storage {storage.display} (host {held.get('host')}, pid "
                f"{held.get('pid')}, last renewed {age:.0f} s ago): two would train the same "
                f"units twice. Wait for it to end, stop it, or, if it is gone, wait "
                f"{LEASE_S - age:.0f} s for its claim to lapse or pass --takeover")
    lease._write(time.time())
    mine = lease._read()  # two drivers starting at once: the later write wins, the other stops
    if mine is None or mine.get("token") != lease.token:
        raise ConfigError(f"another sweep claimed storage {storage.display} at the same moment; "
                          "run one sweep per storage")
    return lease


def holder(storage: Storage) -> dict[str, Any] | None:
    """The live claim on `storage` (host, pid, seconds since renewed), or None: for `status`."""
    held = Lease(storage)._read()
    if held is None:
        return None
    age = time.time() - float(held.get("renewed", 0.0))
    if age >= LEASE_S or not _alive_here(held):
        return None
    return {"host": held.get("host"), "pid": held.get("pid"), "renewed_s_ago": round(age, 1)}
