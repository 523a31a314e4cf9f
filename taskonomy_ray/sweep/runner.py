"""The Ray runner: submits ready units as Ray tasks, collects them with `ray.wait`.

A thin layer over `Scheduler`: all decisions live there. Each unit runs `run_unit` on a worker,
which records its start, end or failure in the ledger itself, so a driver killed at any moment
loses nothing: a rerun adopts every unit whose outputs exist.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from tqdm import tqdm

from ..errors import NodeSetupError, TaskonomyError
from ..tables import Storage, forget_written
from . import lease, ledger
from .plan import STAGES, Unit
from .scheduler import Scheduler, Version

Execute = Callable[[Unit, dict[str, Any]], dict[str, Any]]


class NodeLostError(RuntimeError):
    """A unit's work died with a node (raised where Ray itself reports it otherwise)."""


@dataclass
class RunStats:
    """What the runner measured: wall time, unit time per stage, and the driver's own share."""

    wall_s: float = 0.0
    unit_s: dict[str, float] = field(default_factory=dict)
    driver_s: float = 0.0  # time spent in the driver outside ray.wait (scheduling, bookkeeping)
    first_start: dict[str, float] = field(default_factory=dict)
    last_end: dict[str, float] = field(default_factory=dict)
    ran: set[str] = field(default_factory=set)  # units that finished in this run


def run_unit(unit: Unit, ctx: dict[str, Any], execute: Execute,
             inputs: dict[str, str | None] | None = None) -> dict[str, Any]:
    """Run one unit on a worker, recording its start, end or failure in the ledger.

    Its end records the digest of what it wrote and `inputs`, the digests of what it read
    (`Scheduler.inputs_of`): a resume runs it again if an input changes.
    """
    storage = Storage(ctx["storage"])
    check_node(unit, ctx, storage)
    forget_written(storage, unit.outputs)  # (digests only what this run of it writes)
    ledger.record(storage, unit.key, "started", attempt_of=unit.stage)
    t0 = time.time()
    try:
        info = execute(unit, ctx) or {}
    except KeyboardInterrupt:  # the driver stopped (Ctrl-C) and cancelled it: not a failure
        raise  # (its last event stays `started`: interrupted, and the next sweep runs it)
    except BaseException as e:
        ledger.record(storage, unit.key, "failed", error=f"{type(e).__name__}: {e}",
                      deterministic=isinstance(e, TaskonomyError), node_lost=is_node_lost(e),
                      traceback=traceback.format_exc(limit=8), seconds=time.time() - t0)
        if isinstance(e, TaskonomyError) and not _picklable(e):
            # Ray would deliver it as an UnserializableException: a crash, retried in vain.
            raise TaskonomyError(f"{type(e).__name__}: {e}") from None
        raise
    missing = [o for o in unit.outputs if not storage.exists(o)]
    if missing:
        err = f"unit {unit.key} finished without writing {missing}"
        ledger.record(storage, unit.key, "failed", error=err, deterministic=True)
        raise TaskonomyError(err)
    info = {**info, "seconds": time.time() - t0, "start": t0,
            "digest": ledger.outputs_digest(storage, unit), "inputs": dict(inputs or {})}
    ledger.record(storage, unit.key, "done", **info)
    return info


_SEEN_NODE_SETUP: set[tuple[str, str, str]] = set()  # what this worker process has checked
DATA_STAGES = ("gold", "scratch", "features", "transfer")  # the units that read the dataset


def check_node(unit: Unit, ctx: dict[str, Any], storage: Storage) -> None:
    """Refuse to run on a node that does not see the driver's storage or dataset root.

    The storage must hold the driver's claim (`ctx["claim"]`, its token in `driver.json`): a
    local path that is not on a shared disk is another, empty storage on each node, where units
    would train and then look lost. A local dataset root must be there for the units that read
    it (not the render, which writes it, nor beams and the analysis, which read storage only).
    Once per worker process (and claim); raises `NodeSetupError`, which stops the sweep: it
    names the node, and whatever is done stays done.
    """
    token = ctx.get("claim")
    root = ctx.get("data_root") or ""
    check_root = bool(root) and unit.stage in DATA_STAGES
    key = (ctx["storage"], str(token), root if check_root else "")
    if key in _SEEN_NODE_SETUP:
        return
    node = f"node {socket.gethostname()}"
    if token is not None:
        held = _claim_seen(storage, token)
        shared = ("every node must see the same storage: give --storage as an absolute path "
                  "on a disk every node mounts, or an s3:// / gs:// URI")
        if not isinstance(held, dict):
            raise NodeSetupError(
                f"{node} does not see this sweep's storage {storage.display} (it finds no "
                f"driver's claim in {lease.DRIVER_FILE} there): {shared}; the sweep stopped, "
                "and a resume keeps what is done")
        if held.get("token") != token:
            raise NodeSetupError(
                f"{node} finds another driver's claim on the storage {storage.display} "
                f"({lease.DRIVER_FILE}: host {held.get('host')}, pid {held.get('pid')}): if "
                "another sweep took it over (--takeover), this one stops here; if none did, "
                f"the node sees another storage than the driver's, and {shared}; a resume "
                "keeps what is done")
    if check_root and not os.path.isdir(root):
        raise NodeSetupError(
            f"{node} sees no dataset root at {root}: check --data (or the workflow's "
            "data.root); on a cluster, mount the dataset at that path on every node "
            "(cluster.yaml's initialization_commands); the sweep stopped, and a resume keeps "
            "what is done")
    _SEEN_NODE_SETUP.add(key)


def _claim_seen(storage: Storage, token: str, tries: int = 3, wait_s: float = 2.0) -> Any:
    """The claim in the storage's `driver.json` as this node reads it (None if unreadable).

    Read again a few times before it counts as another's: a network file system may show a
    node the file of the previous driver for a moment.
    """
    held = None
    for i in range(tries):
        try:
            held = storage.read_json(lease.DRIVER_FILE)
        except TaskonomyError:
            held = None
        if isinstance(held, dict) and held.get("token") == token:
            break
        if i < tries - 1:
            time.sleep(wait_s)
    return held


def causes(err: BaseException) -> Iterator[BaseException]:
    """`err` and every error inside it: the chain of causes Ray's wrappers keep.

    (`__cause__`, `__context__`, a RayTaskError's `cause`, a Ray Train run's
    `worker_failures`.)
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            todo += list(failures.values())


def _node_setup_error(err: BaseException) -> NodeSetupError | None:
    """The NodeSetupError inside Ray's wrappers of a unit's failure, if that is what it was.

    (The node's own, not Ray's wrapper, which is one too but prints a traceback first.)
    """
    return next((e for e in causes(err) if isinstance(e, NodeSetupError)
                 and not isinstance(e, ray.exceptions.RayTaskError)), None)


def _picklable(err: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:
        return False
    return True


def is_deterministic(err: BaseException) -> bool:
    """Whether a unit's failure would recur on retry (our own errors do; crashes may not)."""
    cause = getattr(err, "cause", None)
    return isinstance(err, TaskonomyError) or isinstance(cause, TaskonomyError)


def is_node_lost(err: BaseException) -> bool:
    """Whether a unit failed because a node it ran on was lost (preempted, crashed, removed).

    Ray reports a task's dead node as `NodeDiedError` and a drained actor's as `preempted`; a
    Ray Train run reports a dead worker's node through a health check, which `train_runner`
    turns into `NodeLostError`. Follows the chain of causes Ray's wrappers keep.
    """
    return any(isinstance(e, (ray.exceptions.NodeDiedError, NodeLostError)) or (
        isinstance(e, ray.exceptions.RayActorError) and e.preempted) for e in causes(err))


def describe(err: BaseException) -> str:
    """A one-line description of a unit's failure, the original error first.

    Our own errors lead with what went wrong (details follow on later lines); anything else may
    carry a traceback, whose last line is the message. The ledger keeps the whole text.
    """
    cause = getattr(err, "cause", None) or err
    lines = str(cause).strip().splitlines() or [""]
    if isinstance(cause, TaskonomyError):
        more = f" (+{len(lines) - 1} more lines: taskonomy-ray status)" if len(lines) > 1 else ""
        return f"{type(cause).__name__}: {lines[0]}{more}"
    return f"{type(cause).__name__}: {lines[-1]}"


class Bars:
    """Progress of a sweep: one bar per stage on a terminal (units done / total, rate, ETA).

    Elsewhere (a log file, `ray job logs` of a submitted sweep) a line of counts is printed
    instead when they change, at most every `every_s`, and every `heartbeat_s` regardless, so
    a sweep of hours is not silent until its end. `enabled` False: nothing; True: bars.
    """

    def __init__(self, sched: Scheduler, enabled: bool | None = None, *, every_s: float = 30.0,
                 heartbeat_s: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        tty = sys.stderr.isatty()
        on = tty if enabled is None else enabled
        self.lines = enabled is None and not tty
        self.every_s, self.heartbeat_s, self._clock = every_s, heartbeat_s, clock
        self._t0 = clock()
        self._printed: tuple[float, str] | None = None  # when, and what
        self.bars = {s: tqdm(total=0, desc=f"{s:>9}", unit="unit", position=i, leave=True,
                             disable=not on, dynamic_ncols=True) for i, s in enumerate(STAGES)}
        self.update(sched)

    def update(self, sched: Scheduler) -> None:
        """Refresh totals and done counts from the scheduler."""
        counts = sched.counts()
        for stage, c in counts.items():
            bar = self.bars[stage]
            bar.total = sum(c.values())
            bar.n = c["done"] + c["failed"]
            bar.set_postfix_str(f"running {c['running']} failed {c['failed']}", refresh=False)
            bar.refresh()
        if self.lines:
            self._line(counts)

    def _line(self, counts: dict[str, dict[str, int]], final: bool = False) -> None:
        parts = [f"{stage} {c['done']}/{sum(c.values())}"
                 + (f" ({c['running']} running)" if c["running"] else "")
                 for stage, c in counts.items() if sum(c.values())]
        failed = sum(c["failed"] for c in counts.values())
        text = ", ".join(parts) + (f"; {failed} failed" if failed else "")
        now = self._clock()
        if self._printed is not None:
            when, last = self._printed
            due = now - when >= self.heartbeat_s or (
                text != last and (final or now - when >= self.every_s))
            if not due:
                return
        elapsed = int(now - self._t0)
        print(f"sweep {elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d} {text}",
              file=sys.stderr, flush=True)
        self._printed = (now, text)

    def close(self, sched: Scheduler | None = None) -> None:
        """Close every bar (and print the last counts, if they were not)."""
        for bar in self.bars.values():
            bar.close()
        if self.lines and sched is not None:
            self._line(sched.counts(), final=True)


def run(sched: Scheduler, ctx: dict[str, Any], execute: Execute,
        options: Callable[[Unit], dict[str, Any]], *, cost: Callable[[Unit], float],
        capacity: Callable[[], float], queue_slack: int = 0, progress: bool | None = None,
        on_done: Callable[[Unit, dict[str, Any]], None] | None = None,
        on_tick: Callable[[], None] | None = None) -> RunStats:
    """Drive `sched` to the end on the connected Ray cluster; returns what was measured.

    Units are admitted while their CPU `cost` fits the cluster's `capacity` (plus `queue_slack`
    units waiting inside Ray, which an autoscaler sees as demand). Ray's own queue thus stays
    short and the scheduler's stage order decides what runs next: gold networks, on the critical
    path, are not starved by a queue of scratch trainings. `on_tick` runs every loop (at least
    every 5 s): the driver renews its claim on the storage there.
    """
    remotes: dict[int | None, Any] = {}
    storage = Storage(ctx["storage"])
    stats = RunStats()
    bars = Bars(sched, progress)
    in_flight: dict[ray.ObjectRef, Unit] = {}
    t_start = time.time()
    try:
        while True:
            t0 = time.time()
            if on_tick is not None:
                on_tick()
            cap = capacity()
            used = sum(cost(u) for u in in_flight.values())
            waiting = max(0, len(in_flight) - int(cap))
            for unit in sched.ready():
                c = cost(unit)
                fits = used + c <= cap + 1e-9 or not in_flight
                if not fits and waiting >= queue_slack:
                    continue
                waiting += 0 if fits else 1
                used += c
                sched.started(unit)
                task = remote_for(remotes, {"name": unit.key, **options(unit)})
                ref = task.remote(unit, ctx, execute, sched.inputs_of(unit))
                in_flight[ref] = unit
            bars.update(sched)
            stats.driver_s += time.time() - t0
            if not in_flight:
                break
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=5.0)
            t0 = time.time()
            for ref in done:
                unit = in_flight.pop(ref)
                _collect(sched, unit, ref, stats, on_done, storage)
            stats.driver_s += time.time() - t0
    except BaseException:  # the driver stops (taken over, interrupted): so does its work
        for ref in in_flight:
            ray.cancel(ref)
        raise
    finally:
        bars.close(sched)
    stats.wall_s = time.time() - t_start
    return stats


def remote_for(remotes: dict[int | None, Any], options: dict[str, Any]) -> Any:
    """`run_unit` as a Ray task with `options`, made once per `max_calls` in `remotes`.

    Ray takes `max_calls` (how many units one worker process runs before a fresh one) only
    where the function is made remote, not in `.options()`, which refuses it.
    """
    opts = dict(options)
    calls = opts.pop("max_calls", None)
    if calls not in remotes:
        remotes[calls] = (ray.remote(run_unit) if calls is None
                          else ray.remote(max_calls=calls)(run_unit))
    return remotes[calls].options(**opts)


def _collect(sched: Scheduler, unit: Unit, ref: ray.ObjectRef, stats: RunStats,
             on_done: Callable[[Unit, dict[str, Any]], None] | None, storage: Storage) -> None:
    try:
        info = ray.get(ref)
    except Exception as e:  # a RayTaskError wraps the unit's own exception
        setup = _node_setup_error(e)
        if setup is not None:  # the node's fault, not the unit's: stop, and say which node
            raise NodeSetupError(str(setup)) from None
        error, deterministic, lost = describe(e), is_deterministic(e), is_node_lost(e)
        if not isinstance(e, ray.exceptions.RayTaskError):
            # The worker died (killed for memory, a crash, a lost node) before it could record
            # the failure: record it here, so `status` agrees with the sweep.
            ledger.record(storage, unit.key, "failed", error=error, deterministic=deterministic,
                          node_lost=lost, recorded_by="driver")
        sched.failed(unit, error, transient=not deterministic, node_lost=lost)
        return
    sched.succeeded(unit, Version(info.get("digest"), info.get("inputs", {})))
    stats.ran.add(unit.key)
    stats.unit_s[unit.stage] = stats.unit_s.get(unit.stage, 0.0) + info.get("seconds", 0.0)
    start, end = info.get("start", 0.0), info.get("start", 0.0) + info.get("seconds", 0.0)
    stats.first_start[unit.stage] = min(stats.first_start.get(unit.stage, start), start)
    stats.last_end[unit.stage] = max(stats.last_end.get(unit.stage, end), end)
    if on_done is not None:
        on_done(unit, info)
