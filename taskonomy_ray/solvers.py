"""The taxonomy BIP's solver back-ends: HiGHS in process, or the CBC that PuLP ships.

Both solve to a zero optimality gap, so either gives a proven-optimal taxonomy.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pulp

from .errors import ConfigError, SolverError

# HiGHS (in-process through highspy) is ~10x faster than CBC (a subprocess per solve) on these
# problems: see benchmarks/bench_solver.py and docs/benchmarks.md.
BACKENDS = ("highs", "cbc")
DEFAULT_BACKEND = "highs"


def run_model(model: pulp.LpProblem, backend: str = DEFAULT_BACKEND) -> str:
    """Solve with zero optimality gap; returns 'Optimal' or 'Infeasible', raises otherwise."""
    if backend == "highs":
        _silence_highs_banner()
        solver: Any = pulp.HiGHS(msg=False, gapRel=0.0, gapAbs=0.0)
    elif backend == "cbc":
        solver = pulp.PULP_CBC_CMD(msg=False, gapRel=0.0, gapAbs=0.0)
    else:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    try:
        model.solve(solver)
    except pulp.PulpSolverError as e:
        raise SolverError(f"the {backend} solver failed: {e}; try the other backend") from e
    status = pulp.LpStatus[model.status]
    if status not in ("Optimal", "Infeasible"):
        raise SolverError(f"the {backend} solver ended with status {status!r}; try the other "
                          "backend")
    return status


_BANNER_SHOWN = False


def _silence_highs_banner() -> None:
    """Create the process's first HiGHS instance with stdout closed.

    HiGHS prints a copyright banner from C++ the first time an instance is made, before any
    option can turn output off; it would corrupt `solve --json` on stdout.
    """
    global _BANNER_SHOWN
    if _BANNER_SHOWN:
        return
    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    _BANNER_SHOWN = True
