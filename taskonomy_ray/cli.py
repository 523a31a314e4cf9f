"""The `taskonomy-ray` command line: parse, validate, call one library function, print.

Each command has an `_add_<name>` (its arguments) and a `_run_<name>` (the call); heavy modules
are imported inside `_run_*`, so `taskonomy-ray tasks` and `solve` start without torch or Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__, cli_inspect
from .errors import ConfigError, TaskonomyError

Handler = Callable[[argparse.Namespace], int]


# --- tasks ---------------------------------------------------------------------------------


def _add_tasks(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tasks", help="list the 26 tasks of the dictionary")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def _run_tasks(args: argparse.Namespace) -> int:
    from . import tasks

    if args.json:
        print(json.dumps([t.to_json() for t in tasks.TASKS], indent=1))
    else:
        print(tasks.table())
    return 0


# --- synth ---------------------------------------------------------------------------------


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="render the built-in mini-Taskonomy dataset")
    p.add_argument("out", help="dataset root to write (Taskonomy layout)")
    p.add_argument("--points", type=int, required=True, help="fixated points per building")
    p.add_argument("--views", type=int, default=3, help="views (cameras) per point")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--buildings", type=int, default=4, help="buildings (the split unit)")
    p.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    p.add_argument("--preview", help="also write a contact sheet of all domains to this PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def writable(path: str | None, option: str, folder: bool = False, suffix: str = "") -> None:
    """Refuse an output `path` (a file's, or with `folder` a folder's) that cannot be written.

    Checked by writing a probe file before any work, so a long solve or render does not end in
    a traceback; the folder is created if missing, as the writers would. A file's path must not
    name a folder, and ends in `suffix` where the writer picks its format by the name.
    """
    if path is None:
        return
    import tempfile

    where = Path(path).expanduser()
    if not folder and (where.is_dir() or path.endswith(("/", os.sep))):
        raise ConfigError(f"{option} {path} is a folder; give a file name in it, e.g. "
                          f"{where / ('FILE' + suffix)}")
    if not folder and suffix and where.suffix.lower() != suffix:
        raise ConfigError(f"{option} {path}: give a {suffix} file name (the format follows "
                          f"it), e.g. {where.with_suffix(suffix)}")
    where = where if folder else where.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=where, prefix=".write-probe-"):
            pass
    except OSError as e:
        import errno

        why = ("a part of it is a file, not a folder" if e.errno in (errno.EEXIST, errno.ENOTDIR)
               else e.strerror or e)
        raise ConfigError(f"{option} {path}: cannot write in {where} ({why}); "
                          "choose a path in a folder you can write") from None


def _run_synth(args: argparse.Namespace) -> int:
    from .errors import DataError
    from .render import SynthConfig, synthesize
    from .render.synth import render_state

    writable(args.out, "OUT", folder=True)
    writable(args.preview, "--preview", suffix=".png")

    cfg = SynthConfig(args.out, points=args.points, views=args.views, size=args.size,
                      seed=args.seed, buildings=args.buildings, workers=args.workers,
                      preview=args.preview)
    state, why = render_state(cfg)
    if state == "other":  # the same render again (finished or not) just rewrites its own files
        raise DataError(f"{why}; rendering into it would mix the two: give OUT an empty or new "
                        "folder, or delete this one first")
    if args.views < 3:
        print(f"note: --views {args.views}: a sweep needs 3 views per point (egomotion reads "
              "triples); this dataset serves the single-view tasks"
              + (" and the two-view ones" if args.views == 2 else ""), file=sys.stderr)
    r = synthesize(cfg, progress=not args.no_progress)
    print(f"wrote {r.views} views of {len(r.buildings)} buildings to {r.out} in {r.seconds:.1f} s "
          f"({r.views / max(r.seconds, 1e-9):.1f} views/s, {r.bytes / max(r.views, 1) / 1024:.1f} "
          f"KiB/view)" + (f"; preview {args.preview}" if args.preview else ""))
    return 0


# --- sweep ---------------------------------------------------------------------------------


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run or resume a full sweep on Ray (resumable)")
    p.add_argument("config", help="workflow YAML, e.g. workflows/mini.yaml")
    p.add_argument("--storage", help="local path or URI (s3://, gs://); default runs/<name>")
    p.add_argument("--data", help="dataset root (overrides data.root of the workflow)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--force-config", action="store_true",
                   help="resume even though the config differs from the stored run.json")
    p.add_argument("--takeover", action="store_true",
                   help="drive the storage even though another sweep's claim on it has not "
                   "lapsed (that sweep is gone; a live one stops scheduling)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (nor, off a terminal, progress lines)")


BLOCKED_SHOWN = 5  # units not run for want of a failed unit's result, listed one per line


def _run_sweep(args: argparse.Namespace) -> int:
    from .sweep.driver import disconnect, run_sweep
    from .tables import redact

    try:
        result = run_sweep(args.config, storage_uri=args.storage, data_root=args.data,
                           address=args.address, force_config=args.force_config,
                           progress=False if args.no_progress else None, takeover=args.takeover)
    finally:
        disconnect()
    done = sum(c["done"] for c in result.counts.values())
    ran = result.stats.get("units_run", done)
    blocked = [k for k in result.blocked if k in result.failures]
    failed = sorted(k for k in result.failures if k not in blocked)
    print(f"sweep finished in {result.wall_s:.0f} s: {done} units done ({ran} run now, "
          f"{done - ran} kept from before), {len(failed)} failed"
          + (f", {len(blocked)} not run for want of their inputs" if blocked else "")
          + f"; storage {redact(result.storage)}")
    for key in failed:
        print(f"  FAILED {key}: {result.failures[key]}", file=sys.stderr)
    for key in blocked[:BLOCKED_SHOWN]:
        print(f"  NOT RUN {key}: {result.failures[key].removeprefix('not run: ')}",
              file=sys.stderr)
    if len(blocked) > BLOCKED_SHOWN:
        print(f"  ... and {len(blocked) - BLOCKED_SHOWN} more not run; `taskonomy-ray status "
              f"{redact(result.storage)}` lists them all", file=sys.stderr)
    for key, without in sorted(result.partial.items()):
        print(f"  PARTIAL {key}: ran without {', '.join(without)} (failed); a resume that "
              "completes them trains it again, whole", file=sys.stderr)
    report = result.report_path
    if report:
        print(f"report: {report}")
    return 0 if result.ok else 1


# --- solve ---------------------------------------------------------------------------------


def _add_solve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("solve", help="the taxonomy (BIP) for a supervision budget, from a run's "
                       "affinities or the published Taskonomy results")
    p.add_argument("storage", nargs="?", help="a run's storage (reads affinities.parquet)")
    p.add_argument("--published", metavar="CSV_OR_RESULTS_DIR",
                   help="the published transfers.csv, or the results/ folder of a "
                   "StanfordVL/taskonomy clone, instead of a run's storage")
    p.add_argument("--budget", type=float, help="how many tasks may be supervised (with --cost: "
                   "what their summed supervision cost may be)")
    p.add_argument("--budgets", metavar="SPEC",
                   help="solve a budget curve instead: '1-8' or '1,2,5'")
    p.add_argument("--max-order", type=int, help="largest transfer order (default 4)")
    p.add_argument("--regime", type=int, help="transfer training-set size (default: largest)")
    p.add_argument("--targets", nargs="+", metavar="TASK", help="targets (default: all)")
    p.add_argument("--sources", nargs="+", metavar="TASK",
                   help="tasks that may be supervised (default: every task of the dictionary)")
    p.add_argument("--importance", nargs="+", default=[], metavar="TASK=W",
                   help="per-target importance (default 1)")
    p.add_argument("--cost", nargs="+", default=[], metavar="TASK=C",
                   help="supervision cost of a task (default 1): the budget then limits the "
                   "supervised tasks' summed cost, e.g. segment_semantic=3 for a task whose "
                   "labels are dear to collect")
    p.add_argument("--weight", default="sqrt_affinity",
                   choices=("sqrt_affinity", "affinity", "quality", "gain"),  # taxonomy.WEIGHTS
                   help="transfer weight in the objective (default: sqrt_affinity, as published)")
    p.add_argument("--novel", nargs="+", default=[], metavar="TASK",
                   help="targets that may not be supervised nor serve as sources")
    p.add_argument("--all-for-one", action="store_true",
                   help="instead of a budget: each target in turn novel, every other task "
                   "supervised; its best transfer at orders 1..--max-order, with Gain and "
                   "Quality (generalisation to novel tasks)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="PNG", help="with --budgets: draw the budget curve")
    p.add_argument("--dot", metavar="FILE", help="with --budget: write the taxonomy as DOT")
    p.add_argument("--draw", metavar="PNG", help="with --budget: draw the taxonomy as PNG")


def _run_solve(args: argparse.Namespace) -> int:
    from . import published, solve_text, taxonomy

    if args.all_for_one:
        return _run_all_for_one(args)
    if args.budget is not None and args.budgets is not None:
        raise ConfigError("--budget (one taxonomy) and --budgets (a curve) exclude each other: "
                          "give one of them")
    if args.budget is None and args.budgets is None:
        raise ConfigError("give --budget B (one taxonomy), --budgets SPEC (a curve) or "
                          "--all-for-one (novel tasks)")
    if args.budget is None and (args.dot or args.draw):
        raise ConfigError("--dot and --draw draw one taxonomy: use them with --budget")
    if args.budgets is None and args.plot:
        raise ConfigError("--plot draws a budget curve: use it with --budgets")
    for path, option, suffix in ((args.draw, "--draw", ".png"), (args.dot, "--dot", ""),
                                 (args.plot, "--plot", ".png")):
        writable(path, option, suffix=suffix)
    table = published.load_affinities(args.storage, args.published)
    spec = taxonomy.ProblemSpec(
        max_order=taxonomy.DEFAULT_MAX_ORDER if args.max_order is None else args.max_order,
        regime=args.regime,
        targets=tuple(args.targets) if args.targets else None,
        sources=tuple(args.sources) if args.sources else None,
        importance=solve_text.parse_importance(args.importance), weight=args.weight,
        novel=tuple(args.novel), costs=solve_text.parse_costs(args.cost))
    problem = taxonomy.build_problem(table, spec)
    _note_solved_otherwise(args.storage, spec.costs, spec.importance)
    top = taxonomy.largest_order(table, problem.regime)
    if args.max_order is not None and args.max_order > top:  # (asked for, not the default)
        print(f"--max-order {args.max_order}: the table's transfers at regime {problem.regime} go "
              f"up to order {top}, so orders above it add nothing", file=sys.stderr)
    if args.budget is not None:
        result = taxonomy.solve(problem, args.budget)
        print(json.dumps(result.to_json(), indent=1) if args.json
              else solve_text.format_taxonomy(result))
        if args.dot or args.draw:
            from . import plots

            for path in filter(None, (args.dot and plots.write_dot(result, args.dot),
                                      args.draw and plots.draw_taxonomy(result, args.draw))):
                print(f"wrote {path}", file=sys.stderr)
        return 0
    budgets = solve_text.parse_budgets(args.budgets)
    need = taxonomy.min_budget(problem) if budgets else 0.0
    feasible = [b for b in budgets if b >= need - 1e-9]
    if not feasible:
        raise ConfigError(f"no budget in --budgets {args.budgets} can serve all "
                          f"{len(problem.targets)} targets: the smallest that can is {need:g}; "
                          "raise the budgets or drop targets (--targets)")
    if len(feasible) < len(budgets):
        left = ", ".join(f"{b:g}" for b in budgets if b not in feasible)
        print(f"left out budgets {left}: below {need:g}, the smallest that serves all "
              f"{len(problem.targets)} targets", file=sys.stderr)
    most = taxonomy.max_budget(problem)
    if any(b > most + 1e-9 for b in feasible):
        left = ", ".join(f"{b:g}" for b in feasible if b > most + 1e-9)
        what = ("the summed cost of the tasks that may be supervised" if args.cost
                else "the number of tasks that may be supervised")
        print(f"left out budgets {left}: above {most:g}, {what}, they give the taxonomy of "
              f"budget {most:g}{'' if most in feasible else ', solved instead'}",
              file=sys.stderr)
        feasible = sorted({*(b for b in feasible if b <= most + 1e-9), float(most)})
    curve = taxonomy.budget_curve(problem, feasible)
    print(json.dumps(solve_text.curve_json(curve), indent=1) if args.json
          else solve_text.format_curve(curve))
    if args.plot:
        from . import plots

        title = (f"budget curve, regime {problem.regime}, order <= {problem.max_order}, "
                 f"weight {problem.weight}")
        print(f"wrote {plots.plot_budget_curve(curve, args.plot, title)}", file=sys.stderr)
    return 0


def _note_solved_otherwise(storage: str | None, costs: dict[str, float],
                           importance: dict[str, float]) -> None:
    """Say on stderr when a sweep's own taxonomy was solved under other costs or importance."""
    from .solve_text import solved_otherwise
    from .tables import Storage

    if storage is None:
        return
    st = Storage(storage)
    doc = st.read_json("taxonomy.json") if st.exists("taxonomy.json") else None
    note = solved_otherwise(doc if isinstance(doc, dict) else None, costs, importance)
    if note:
        print(f"note: {note}", file=sys.stderr)


def _run_all_for_one(args: argparse.Namespace) -> int:
    from . import evaluate, published, solve_text, taxonomy

    clash = [f for f, v in (("--budget", args.budget), ("--budgets", args.budgets),
                            ("--sources", args.sources), ("--importance", args.importance or None),
                            ("--cost", args.cost or None),
                            ("--novel", args.novel or None), ("--plot", args.plot),
                            ("--dot", args.dot), ("--draw", args.draw)) if v is not None]
    if clash:
        raise ConfigError(f"--all-for-one makes each target novel with every other task "
                          f"supervised, so {', '.join(clash)} "
                          f"{'does' if len(clash) == 1 else 'do'} not apply; leave "
                          f"{'it' if len(clash) == 1 else 'them'} out")
    args.max_order = taxonomy.DEFAULT_MAX_ORDER if args.max_order is None else args.max_order
    if args.max_order < 1:
        raise ConfigError(f"--max-order must be >= 1, got {args.max_order}")
    table = published.load_affinities(args.storage, args.published)
    regime = taxonomy.pick_regime(table, args.regime)
    top = taxonomy.largest_order(table, regime)
    if args.max_order > top:  # higher orders would repeat the table's largest
        print(f"orders above {top}, the table's largest at regime {regime}, left out",
              file=sys.stderr)
    found = evaluate.novel_tasks(table, range(1, min(args.max_order, top) + 1), regime,
                                 args.targets, args.weight)
    print(json.dumps(solve_text.novel_json(found, regime), indent=1) if args.json
          else solve_text.format_novel(found, regime))
    return 0


# --- report --------------------------------------------------------------------------------


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="a self-contained HTML report of a sweep or of the "
                       "published Taskonomy results")
    p.add_argument("storage", nargs="?", help="a sweep's storage (reads affinities.parquet)")
    p.add_argument("--published", metavar="CSV_OR_RESULTS_DIR",
                   help="report on the published transfers.csv (or a results/ folder) instead")
    p.add_argument("--out", metavar="DIR", help="output folder (default: STORAGE/report, or "
                   "report-published/ with --published)")
    p.add_argument("--budgets", default="1,2,3,4,6,8,12", metavar="SPEC",
                   help="budget-curve points: '1-8' or '1,2,5' (default 1,2,3,4,6,8,12)")
    p.add_argument("--orders", type=int, nargs="+", default=[1, 2, 4], metavar="K",
                   help="one budget curve per maximum transfer order (default 1 2 4)")
    p.add_argument("--draw", default="3,8", metavar="SPEC",
                   help="budgets whose taxonomies are drawn, for every order (default 3,8)")
    p.add_argument("--policies", type=int, default=100, metavar="N",
                   help="random feasible policies per significance test (default 100)")
    p.add_argument("--regime", type=int, help="transfer training-set size (default: largest)")
    p.add_argument("--samples", type=int, default=3, metavar="N",
                   help="test images shown per gold network (sweep only; 0: none)")
    p.add_argument("--data", metavar="DIR", help="the sweep's dataset root, when it is not at "
                   "the path recorded in run.json (sweep only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random policies")
    p.add_argument("--importance", nargs="+", default=[], metavar="TASK=W",
                   help="per-target importance in every taxonomy solved (default 1), as solve's")
    p.add_argument("--cost", nargs="+", default=[], metavar="TASK=C",
                   help="supervision cost of a task (default 1), as solve's: budgets are then "
                   "summed costs")


def _run_report(args: argparse.Namespace) -> int:
    import time

    from .errors import ConfigError
    from .report import write_report
    from .solve_text import parse_budgets, parse_costs, parse_importance

    if (args.storage is None) == (args.published is None):
        raise ConfigError("give a sweep's STORAGE or --published CSV (one of them)")
    if args.data is not None and args.published:
        raise ConfigError("--data shows a sweep's test images: use it with a sweep's STORAGE, "
                          "not --published")
    if args.data is not None and not Path(args.data).is_dir():
        raise ConfigError(f"--data {args.data}: no such folder; give the dataset root the sweep "
                          "ran on (or leave --data out to use the one run.json records)")
    writable(args.out, "--out", folder=True)
    if args.out is None and args.storage is not None and "://" not in args.storage \
            and Path(args.storage).is_dir():  # the default: the storage's report/ folder
        try:
            writable(str(Path(args.storage) / "report"), "the storage's report/", folder=True)
        except ConfigError as e:
            raise ConfigError(f"{e}; or pass --out DIR to write the report elsewhere") from None
    costs, importance = parse_costs(args.cost), parse_importance(args.importance)
    _note_solved_otherwise(args.storage, costs, importance)
    t0 = time.perf_counter()
    index = write_report(args.published or args.storage, args.out,
                         published=args.published is not None,
                         budgets=parse_budgets(args.budgets), orders=args.orders,
                         drawn=parse_budgets(args.draw), random_policies=args.policies,
                         regime=args.regime, samples=args.samples, data_root=args.data,
                         seed=args.seed, importance=importance, costs=costs)
    print(f"wrote {index} in {time.perf_counter() - t0:.1f} s")
    return 0


# --- registry of commands ------------------------------------------------------------------

COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], None], Handler]] = {
    "tasks": (_add_tasks, _run_tasks),
    "synth": (_add_synth, _run_synth),
    "sweep": (_add_sweep, _run_sweep),
    "check": (cli_inspect.add_check, cli_inspect.run_check),
    "status": (cli_inspect.add_status, cli_inspect.run_status),
    "solve": (_add_solve, _run_solve),
    "report": (_add_report, _run_report),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="taskonomy-ray",
        description="Taskonomy on Ray: task transfer learning, affinities and the taxonomy.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run one command; a TaskonomyError prints its message and exits 2."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except TaskonomyError as e:
        print(f"taskonomy-ray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed work is kept in storage", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader stopped early (`... | head`): not an error of ours
        # Point stdout at /dev/null, so that flushing it at exit raises nothing either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
