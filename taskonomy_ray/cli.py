"""The `taskonomy-ray` command line: parse, validate, call one library function, print.

Each command has an `_add_<name>` (its arguments) and a `_run_<name>` (the call); heavy modules
are imported inside `_run_*`, so `taskonomy-ray tasks` and `solve` start without torch or Ray.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .errors import TaskonomyError

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


# --- registry of commands ------------------------------------------------------------------

COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], None], Handler]] = {
    "tasks": (_add_tasks, _run_tasks),
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
