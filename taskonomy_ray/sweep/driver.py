"""The sweep driver: resolve the config, guard the run, plan, run on Ray, summarise.

`taskonomy-ray sweep` calls `run_sweep`; re-running it on the same storage resumes (done units are
adopted from storage, half-trained networks resume from their last checkpoint).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, StorageError, TaskonomyError
from ..tables import AFFINITIES_FILE, AFFINITIES_SCHEMA, REPORT_ERROR, Storage, bad_scores
from . import config as sweep_config
from . import lease, ledger
from . import plan as planning
from .guard import check_root_kind, data_root, guard_run, record_split
from .plan import PLAN_FILE
from .scheduler import Scheduler
from .superseded import take_back

SUMMARY_FILE = "sweep.json"
REPORT_INDEX = "report/index.html"


@dataclass
class SweepResult:
    """How a sweep ended: unit counts per stage, failures, timings."""

    storage: str
    counts: dict[str, dict[str, int]]
    failures: dict[str, str]
    wall_s: float
    stats: dict[str, Any]
    # Units that ran without some optional deps (failed): unit key -> those deps' keys.
    partial: dict[str, list[str]] = field(default_factory=dict)
    # The failed units that never ran: another unit's failure left them nothing to run on.
    blocked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no unit failed."""
        return not self.failures

    @property
    def report_path(self) -> str | None:
        """The report's index.html, when this sweep wrote one (not an earlier run's, left over)."""
        if "analysis" in self.failures or "report" in self.failures:
            return None
        st = Storage(self.storage)
        return st.path(REPORT_INDEX) if st.exists(REPORT_INDEX) else None


def outputs_exist(storage: Storage, unit: planning.Unit) -> bool:
    """A unit is done when every output it promises is in storage."""
    return all(storage.exists(o) for o in unit.outputs)


def set_aside_damaged(storage: Storage, unit: planning.Unit) -> list[str]:
    """Move a unit's damaged outputs (and partial record) aside; one line per file moved.

    On a local storage a file can be cut short outside the sweep's atomic writes (a copy of the
    run that stopped half-way, a disk fault): such a unit is not done, and runs again instead of
    every unit reading it failing on every resume. The file is renamed, not deleted. Object stores
    make an object visible only whole, so there existence suffices (and costs one request), but
    for the analysis, whose two files are also checked inside (impossible scores, a taxonomy
    that is not an object).
    """
    if not storage.local and unit.stage != "analysis":
        return []
    moved = []
    for rel, why in damaged_files(storage, unit):
        dest = storage.set_aside(rel)
        moved.append(f"{storage.path(rel)} is damaged ({why}): moved to {dest}; "
                     f"{unit.key} runs again")
    return moved


def damaged_files(storage: Storage, unit: planning.Unit) -> list[tuple[str, str]]:
    """(file, why) for each of a unit's files a resume would not accept, moving nothing.

    Its outputs and a transfer group's partial record, checked whole (`Storage.damage`); a
    beam's JSON must also hold its choice of higher orders. Files not there are left out.
    """
    files = list(unit.outputs)
    if unit.stage == "transfer" and storage.exists(planning.partial_path(unit.key)):
        files.append(planning.partial_path(unit.key))
    found = []
    for rel in files:
        why = storage.damage(rel)
        if why is None:
            why = _content_damage(storage, unit, rel)
        if why is not None and why != "missing":
            found.append((rel, why))
    return found


def _content_damage(storage: Storage, unit: planning.Unit, rel: str) -> str | None:
    """What is wrong inside a whole file that its unit's readers rely on, or None."""
    if unit.stage == "beam" and not _has_chosen(storage.read_json(rel)):
        return "no 'chosen' higher orders"
    if unit.stage == "analysis" and rel == AFFINITIES_FILE:
        try:
            return bad_scores(storage.read_table(rel, AFFINITIES_SCHEMA))
        except StorageError as e:  # another version's columns: computed again, like damage
            return str(e).split(": ", 1)[-1]
    if unit.stage == "analysis" and rel.endswith(".json") and not isinstance(
            storage.read_json(rel), dict):
        return "not a taxonomy (a JSON object)"
    return None


def _has_chosen(doc: Any) -> bool:
    """Whether a beam's JSON holds its choice of higher orders (target -> source sets)."""
    return isinstance(doc, dict) and isinstance(doc.get("chosen"), dict)


def done_check(storage: Storage, cfg: sweep_config.SweepConfig, data_root: str,
               warn=None):
    """The scheduler's is_done hook: outputs in storage; a render also needs its data in place.

    A render's marker outlives its data root (deleted, or a resume from another machine): the
    render then runs again (the same files), instead of every later unit failing on them. A unit
    with a damaged output is not done (`set_aside_damaged`; `warn` gets each line).
    """

    def is_done(unit: planning.Unit) -> bool:
        if not outputs_exist(storage, unit) and not (
                take_back(storage, unit) and outputs_exist(storage, unit)):
            return False
        moved = set_aside_damaged(storage, unit)
        for line in moved:
            (warn or _stderr)(line)
        if moved:
            return False
        if unit.stage == "render":
            from ..render.synth import render_state
            from .units import render_config

            return render_state(render_config(cfg, data_root))[0] == "complete"
        if unit.stage == "analysis":  # the taxonomy of the settings asked for, or solved again
            return _solved_as_asked(storage.read_json("taxonomy.json"), cfg)
        return True

    return is_done


def _solved_as_asked(doc: dict[str, Any], cfg: sweep_config.SweepConfig) -> bool:
    """Whether a stored taxonomy is the one the workflow's `solve` section asks for.

    The analysis' key does not hash those settings: a resume that changes them (with
    --force-config) would otherwise keep the old taxonomy and report the sweep finished.
    """
    asked = {"budget": cfg.solve.budget, "max_order": cfg.solve.max_order,
             "regime": max(cfg.regimes)}
    # (the analysis drops the costs and importance of tasks it left out, so it records what
    # was asked; a taxonomy.json written before costs existed was solved under none)
    weighed = doc.get("workflow_solve", {"costs": {}, "importance": {}})
    return all(doc.get(k) == v for k, v in asked.items()) and weighed == cfg.solve.weighing()


def _stderr(line: str) -> None:
    print(f"taskonomy-ray: {line}", file=sys.stderr)


def went_without(storage: Storage):
    """The scheduler's went_without hook: what a stored partial result lacked.

    A transfer group's partial record; a beam's own output, which names what the first-order
    group it ranked lacked.
    """
    from .partial import read_partial

    def without(unit: planning.Unit) -> list[str]:
        if unit.stage == "beam":
            return list(storage.read_json(unit.outputs[0]).get("without", []))
        record = read_partial(storage, unit.key) if unit.stage == "transfer" else None
        return list(record["without"]) if record else []

    return without


def beam_expander(storage: Storage, cfg: sweep_config.SweepConfig):
    """The scheduler's expand hook: a finished beam unit adds its chosen higher orders."""

    def expand(unit: planning.Unit) -> list[planning.Unit]:
        if unit.stage != "beam":
            return []
        doc = storage.read_json(unit.outputs[0])
        if not _has_chosen(doc):
            raise StorageError(f"{storage.path(unit.outputs[0])} has no 'chosen' higher orders; "
                               "delete it and resume: the beam search runs again")
        return planning.expand_beam(cfg, unit, doc["chosen"])

    return expand


def make_context(cfg: sweep_config.SweepConfig, storage: Storage) -> dict[str, Any]:
    """What every unit receives: storage URI (absolute path when local), config, data root."""
    root = data_root(cfg)
    # Local paths absolute: workers may start in another directory than the driver.
    return {"storage": storage.root if storage.local else storage.uri, "config": cfg.to_json(),
            "data_root": root}


_STARTED_RAY = False  # whether `connect` called ray.init here (then `disconnect` ends it)


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to a Ray cluster (`--address`, RAY_ADDRESS) or start a local instance."""
    global _STARTED_RAY
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:  # "local": a new instance; with no address Ray joins any Ray running here
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=False)
        _STARTED_RAY = True
    except (ConnectionError, RuntimeError) as e:
        raise ConfigError(f"cannot connect to Ray at {address or 'a new local instance'}: {e}; "
                          "check --address / RAY_ADDRESS (and RAY_AUTH_MODE=token with a "
                          "token-auth head)") from e


def disconnect() -> None:
    """End the Ray connection `connect` made, with Ctrl-C ignored for that second or two.

    Everything is in storage by then. Left to Ray's exit hook, a Ctrl-C that lands during its
    shutdown prints a KeyboardInterrupt traceback over the sweep's summary. Ray that this
    process did not start (a test's, a notebook's) is left running.
    """
    global _STARTED_RAY
    import ray

    if not (_STARTED_RAY and ray.is_initialized()):
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ray.shutdown()
    finally:
        signal.signal(signal.SIGINT, previous)
        _STARTED_RAY = False


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a Ray address (`host:port`, `ray://host:port`) that nothing listens at.

    `ray.init` would retry such an address for minutes, printing warnings about its own
    connection attempts; `auto` and other forms are left to Ray.
    """
    import re
    import socket

    m = re.fullmatch(r"(?:ray://)?\[?([^\[\]/]+?)\]?:(\d+)", address.strip())
    if m is None:
        return
    host, port = m.group(1), int(m.group(2))
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}): start "
                          "one there (`ray start --head`, `ray up cluster.yaml`) or fix "
                          "--address / RAY_ADDRESS; without either the sweep starts its own") \
            from None


def run_sweep(config_path: str | Path, *, storage_uri: str | None = None,
              data_root: str | None = None, address: str | None = None,
              force_config: bool = False, progress: bool | None = None,
              execute=None, report: bool = True, takeover: bool = False) -> SweepResult:
    """Run (or resume) a whole sweep; returns its summary. Failures are reported, not raised.

    One driver per storage (`lease.py`): `takeover` claims a storage whose driver is thought
    gone before its claim lapses.
    """
    cfg = sweep_config.load(config_path, data_root=data_root)
    check_root_kind(cfg)  # before Ray starts and every unit fails on it
    storage = Storage(storage_uri or sweep_config.default_storage(cfg))
    check_lasting(storage, cfg.data.root)
    storage.ensure_writable()
    claim = lease.claim(storage, takeover)
    try:
        return _drive(cfg, storage, claim, address=address, force_config=force_config,
                      progress=progress, execute=execute, report=report)
    finally:
        claim.release()


JOB_COPY = "_ray_pkg_"  # how Ray names a job's unpacked --working-dir upload


def check_lasting(storage: Storage, data_root: str, cwd: str | Path | None = None) -> None:
    """Refuse local storage or data inside a Ray job's copy of its working directory.

    `ray job submit --working-dir .` runs the driver in an unpacked copy named by a hash of the
    uploaded files: a relative `--storage` (or the default `runs/<name>`) lands there, so the
    next submission, with any file changed, starts over, and Ray deletes old copies.
    """
    here = Path(cwd or Path.cwd()).resolve()
    if not any(part.startswith(JOB_COPY) for part in here.parts):
        return
    paths = [("storage", storage.root, "--storage") if storage.local else None,
             ("dataset root", data_root, "--data")]
    for what, path, option in filter(None, paths):
        full = Path(path).resolve()
        if full == here or here in full.parents:
            raise ConfigError(
                f"the {what} {full} is inside this Ray job's copy of its working directory, "
                "which the next submission does not reuse and Ray deletes: pass "
                f"{option} an absolute path on a disk every node shares"
                + (", or an s3:// or gs:// URI" if what == "storage" else ""))


def _drive(cfg: sweep_config.SweepConfig, storage: Storage, claim: lease.Lease, *,
           address: str | None, force_config: bool, progress: bool | None, execute,
           report: bool) -> SweepResult:
    from . import resources, runner, units

    guard_run(storage, cfg, force_config)
    connect(address)
    t0 = time.time()
    ctx = {**make_context(cfg, storage), "claim": claim.token}  # (a node checks it sees it)
    planned = planning.build(cfg)
    known = ledger.versions(storage, [u.key for u in planned])  # (the beams' choices: as asked)
    sched = Scheduler(planned, is_done=done_check(storage, cfg, ctx["data_root"]),
                      expand=beam_expander(storage, cfg), retries=cfg.resources.retries,
                      node_losses=cfg.resources.node_losses,
                      went_without=went_without(storage),
                      version=lambda u: ledger.stored_version(
                          storage, u, known[u.key] if u.key in known
                          else ledger.version(storage, u.key)),
                      warn=_stderr)

    def on_done(unit: planning.Unit, info: dict[str, Any]) -> None:
        if unit.stage == "beam":  # the plan grew: keep plan.json current for `status`
            write_plan(storage, sched)
        if unit.stage == "render":
            record_split(storage, cfg)

    write_plan(storage, sched)
    claim.renew(now=True)  # still ours after the set-up (an object store's claim is best effort)
    stats = runner.run(sched, ctx, execute or units.execute, resources.options(cfg),
                       cost=resources.cost(cfg), capacity=resources.capacity,
                       queue_slack=cfg.resources.queue_slack, progress=progress,
                       on_done=on_done, on_tick=claim.renew)
    write_plan(storage, sched)
    result = SweepResult(storage.uri, sched.counts(), sched.failures(), time.time() - t0,
                         {"wall_s": stats.wall_s, "driver_s": stats.driver_s,
                          "units_run": sum(sched.state.get(k) == "done" for k in stats.ran),
                          "unit_s": stats.unit_s, "stage_span_s": {
                              s: stats.last_end[s] - stats.first_start[s]
                              for s in stats.first_start}},
                         {k: v for k, v in sched.partial.items() if sched.state[k] == "done"},
                         sched.blocked_units())
    storage.write_json(SUMMARY_FILE, {"counts": result.counts, "failures": result.failures,
                                      "blocked": result.blocked, "partial": result.partial,
                                      "wall_s": result.wall_s, "stats": result.stats})
    if report and sched.state.get("analysis") == "done":  # shows the run facts just written
        claim.renew(now=True)
        write_sweep_report(storage, ctx, result)
    return result


def write_sweep_report(storage: Storage, ctx: dict[str, Any], result: SweepResult) -> None:
    """The HTML report of the finished sweep; a failure is reported, never loses results."""
    from ..report import write_report

    try:
        # Curves and drawings weighed as the sweep's taxonomy was (the workflow's solve.costs and
        # importance, less those of tasks the analysis left out).
        solved = storage.read_json("taxonomy.json") if storage.exists("taxonomy.json") else {}
        write_report(storage.uri, data_root=ctx["data_root"],
                     importance=solved.get("importance"), costs=solved.get("costs"))
    except TaskonomyError as e:
        result.failures["report"] = f"{type(e).__name__}: {e}"
    except Exception as e:  # a bug in the report: the sweep's results are complete regardless
        storage.write_bytes(REPORT_ERROR, traceback.format_exc().encode())
        result.failures["report"] = (
            f"{type(e).__name__}: {e} (a bug in the report, traceback in "
            f"{storage.path(REPORT_ERROR)}; every result is in storage: retry with "
            f"`taskonomy-ray report {storage.display}`)")


def write_plan(storage: Storage, sched: Scheduler) -> None:
    """Record every planned unit, so `status` works from storage alone."""
    storage.write_json(PLAN_FILE, {"units": [u.to_json() for u in sched.units.values()]})
