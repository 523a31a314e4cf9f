"""The read-only commands `check` (a dataset root, against a workflow) and `status` (a sweep).

Each is an `add_<name>` (its arguments) and a `run_<name>` (the call), registered in cli.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .errors import ConfigError


def add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check a dataset root against a workflow before a sweep: "
                                     "every dataset its units open, sampled; missing files")
    p.add_argument("config", help="workflow YAML, e.g. workflows/paper.yaml")
    p.add_argument("--data", help="dataset root (overrides data.root of the workflow)")
    p.add_argument("--reads", type=int, default=4, metavar="N",
                   help="samples decoded per dataset (default 4; 0: open only)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_check(args: argparse.Namespace) -> int:
    from .sweep import config as sweep_config
    from .sweep.datacheck import check_data
    from .sweep.guard import data_root

    if args.reads < 0:
        raise ConfigError("--reads must be >= 0")
    cfg = sweep_config.load(args.config, data_root=args.data)
    root = data_root(cfg)
    if cfg.data.render is not None and not Path(root).exists():
        print(f"{root} does not exist yet: the sweep renders it (data.render); nothing to check")
        return 0
    report = check_data(cfg, root, reads=args.reads, progress=not args.no_progress)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
        return 1 if report.problems else 0
    sizes = ", ".join(f"{len(b)} {s}" for s, b in report.buildings.items())
    print(f"{root}: buildings {sizes}")
    for c in report.checks:
        if c.problem is None and not c.what.startswith("files"):
            print(f"  ok       {c.what:<28} {c.samples} samples")
    for c in report.problems:
        print(f"  PROBLEM  {c.what}: {c.problem}")
    files = [c for c in report.checks if c.what.startswith("files")]
    print(f"{len(report.checks) - len(report.problems)} of {len(report.checks)} checks passed "
          f"({len(files)} domain folders counted)")
    return 1 if report.problems else 0


def add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="progress of a sweep, from its storage alone")
    p.add_argument("storage", help="the sweep's storage path or URI")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verify", action="store_true",
                   help="also check that every done unit's outputs are whole files (a copied "
                   "run), exit 1 if one is not; and list done units whose inputs changed since "
                   "they ran (STALE)")


def run_status(args: argparse.Namespace) -> int:
    from .sweep.status import STATUS_STATES, status
    from .tables import Storage

    st = status(args.storage, verify=args.verify)
    damaged = st["damaged"] or {}
    if args.json:
        print(json.dumps(st, indent=1))
        return 1 if damaged else 0
    cols = STATUS_STATES
    d = st["driver"]
    print(f"driven now by host {d['host']}, pid {d['pid']} (renewed {d['renewed_s_ago']:.0f} s "
          "ago)" if d else "no sweep is driving this storage now")
    print(f"{'stage':<10}" + "".join(f"{c:>9}" for c in cols))
    for stage, c in st["stages"].items():
        if c["planned"]:
            print(f"{stage:<10}" + "".join(f"{c[k]:>9}" for k in cols))
    for order, c in sorted(st["transfer_orders"].items()):
        print(f"  transfers of order {order}: {c['transfers_done']} of {c['transfers_planned']} "
              f"trained; groups: {c['planned']} planned, {c['done']} done, {c['failed']} failed, "
              f"{c['blocked']} blocked")
    for key, err in sorted(st["failures"].items()):
        print(f"FAILED {key}: {err}")
    for key, why in sorted(st["blocked"].items()):
        print(f"BLOCKED {key}: {why}")
    for key, sources in sorted(st["partial"].items()):
        print(f"PARTIAL {key}: trained without the transfers from {', '.join(sources)} (their "
              "representations failed)")
    for key, short in sorted(st["short"].items()):
        orders = ", ".join(str(o) for o in short["orders"])
        print(f"SHORT {key}: ranked {short['ranked']} sources, too few for order {orders} (a "
              "first-order transfer into the target failed or diverged)")
    for key, heads in sorted(st["diverged"].items()):
        what = "; ".join(f"{'+'.join(d['sources'])} ({d['why']})" for d in heads)
        print(f"DIVERGED {key}: left out {what}; a lower transfer.lr trains them again")
    local = Storage(args.storage).local if damaged else True
    for key, files in sorted(damaged.items()):
        print(f"DAMAGED {key}: {'; '.join(files)}; "
              + ("the next sweep moves it aside and runs the unit again" if local else
                 "delete it and resume: the unit runs again"))
    for key, inputs in sorted((st["stale"] or {}).items()):
        more = f" (and {len(inputs) - 1} more)" if len(inputs) > 1 else ""
        print(f"STALE {key}: {inputs[0]}{more} ran again since, with another result; the next "
              "sweep runs it again")
    if args.verify and not damaged:
        print("verified: every done unit's outputs are whole")
    return 1 if damaged else 0
