"""Step 4 of the method: the global taxonomy as a Boolean integer program (PuLP).

Choose which tasks to supervise and which transfer (hyperedge) serves every other target,
maximising the summed importance x transfer weight under a supervision budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pulp
import pyarrow as pa

from . import tasks
from .errors import ConfigError, SolverError, unknown_name
from .solvers import DEFAULT_BACKEND, run_model
from .tables import AFFINITIES_SCHEMA, check_schema

WEIGHTS = ("sqrt_affinity", "affinity", "quality", "gain")
DEFAULT_MAX_ORDER = 4  # the paper's beam search trains transfers up to order 4
SQRT_CLIP = (1e-5, 1.0)  # the published solver's clip of affinities before the square root
EXCLUDED_SOURCES = frozenset({"self", "pixels"})


@dataclass(frozen=True)
class ProblemSpec:
    """Everything that defines a taxonomy problem except the budget (re-solving is cheap)."""

    max_order: int = DEFAULT_MAX_ORDER
    regime: int | None = None  # None: the table's only regime, or its largest
    targets: tuple[str, ...] | None = None  # None: every target in the table
    sources: tuple[str, ...] | None = None  # tasks that may be supervised; None: registry tasks
    importance: Mapping[str, float] = field(default_factory=dict)  # per target, default 1
    weight: str = "sqrt_affinity"
    novel: tuple[str, ...] = ()  # targets that may not be supervised nor be sources
    costs: Mapping[str, float] = field(default_factory=dict)  # supervision cost, default 1

    def __post_init__(self) -> None:
        if self.max_order < 1:
            raise ConfigError(f"max_order must be >= 1, got {self.max_order}")
        if self.weight not in WEIGHTS:
            raise ConfigError(f"weight must be one of {WEIGHTS}, got {self.weight!r}")
        if self.sources is not None and not self.sources:
            raise ConfigError("the source set is empty: allow at least one task to be supervised "
                              "(or leave --sources out to allow every task)")
        for what, values in (("importance", self.importance), ("cost", self.costs)):
            for name, value in values.items():
                if not (math.isfinite(value) and value >= 0):
                    raise ConfigError(f"the {what} of {name} is {value:g}: it must be finite "
                                      "and >= 0")
        clash = set(self.novel) & set(self.sources or ())
        if clash:
            raise ConfigError(f"{sorted(clash)} are novel and so cannot be supervised sources; "
                              "drop them from --sources or from --novel")


@dataclass(frozen=True)
class Edge:
    """One candidate transfer (or a target's own supervision, sources == ('self',))."""

    target: str
    sources: tuple[str, ...]
    weight: float
    affinity: float
    quality: float
    gain: float


@dataclass(frozen=True)
class Problem:
    """A validated problem: targets, tasks that may be supervised, and candidate edges."""

    regime: int
    max_order: int
    weight: str
    targets: tuple[str, ...]
    supervisable: tuple[str, ...]
    costs: Mapping[str, float]
    importance: Mapping[str, float]
    supervision: Mapping[str, Edge]  # target -> its `self` edge, for supervisable targets
    edges: tuple[Edge, ...]  # transfers into targets whose sources are all supervisable
    # The same before dominated transfers were pruned (a solver's shortcut): what random
    # policies, the significance baseline, draw from.
    unpruned: tuple[Edge, ...]


@dataclass(frozen=True)
class Assignment:
    """How one target is served in a taxonomy."""

    target: str
    sources: tuple[str, ...]  # ('self',) when the target is supervised
    supervised: bool
    weight: float
    affinity: float
    quality: float
    gain: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (DESIGN.md `solve --json` entry)."""
        return {"target": self.target, "sources": list(self.sources),
                "supervised": self.supervised, "weight": self.weight,
                "affinity": self.affinity, "quality": self.quality, "gain": self.gain}


@dataclass(frozen=True)
class Taxonomy:
    """A solved taxonomy: supervised tasks and one assignment per target."""

    regime: int
    budget: float
    max_order: int
    weight: str
    objective: float
    supervised: tuple[str, ...]
    transfers: tuple[Assignment, ...]
    importance: Mapping[str, float] = field(default_factory=dict)  # the targets' not 1
    costs: Mapping[str, float] = field(default_factory=dict)  # supervisable tasks' not 1

    @property
    def spent(self) -> float:
        """What the supervised tasks cost together, the quantity the budget limits."""
        return float(sum(self.costs.get(n, 1.0) for n in self.supervised))

    @property
    def quality(self) -> float:
        """Mean Quality (win rate vs gold) over all targets, supervised ones included."""
        return float(np.mean([a.quality for a in self.transfers]))

    @property
    def gain(self) -> float:
        """Mean Gain (win rate vs scratch) over all targets, supervised ones included."""
        return float(np.mean([a.gain for a in self.transfers]))

    def to_json(self) -> dict[str, Any]:
        """The `solve --json` object of DESIGN.md."""
        return {"regime": self.regime, "budget": _number(self.budget), "max_order": self.max_order,
                "weight": self.weight, "objective": self.objective,
                "supervised": list(self.supervised),
                "transfers": [a.to_json() for a in self.transfers],
                "quality": self.quality, "gain": self.gain, "importance": dict(self.importance),
                "costs": dict(self.costs), "cost": _number(self.spent)}


def besides_one(values: Mapping[str, float]) -> dict[str, float]:
    """Per-task costs or importance less those at the default 1: what a Taxonomy records."""
    return {n: v for n, v in values.items() if v != 1.0}


def weighed_as(doc: Mapping[str, Any], costs: Mapping[str, float],
               importance: Mapping[str, float]) -> bool:
    """Whether a taxonomy's JSON (`to_json`) was solved under these costs and importance."""
    return (dict(doc.get("costs") or {}) == besides_one(costs)
            and dict(doc.get("importance") or {}) == besides_one(importance))


def _number(x: float) -> float | int:
    """A whole float as an int (JSON's `3`, not `3.0`), for budgets and costs."""
    return int(x) if float(x).is_integer() else x


def edge_weight(kind: str, affinity: float, quality: float, gain: float) -> float:
    """The objective weight of a transfer; `sqrt_affinity` is the published solver's choice."""
    if kind == "sqrt_affinity":
        return math.sqrt(min(max(affinity, SQRT_CLIP[0]), SQRT_CLIP[1]))
    return {"affinity": affinity, "quality": quality, "gain": gain}[kind]


def build_problem(affinities: pa.Table, spec: ProblemSpec, prune: bool = True) -> Problem:
    """Validate `spec` against an affinities table and collect the candidate edges.

    `prune` drops dominated transfers (see `undominated`), which never changes the optimum.
    """
    rows = check_schema(affinities, AFFINITIES_SCHEMA, "affinities").to_pylist()
    if not rows:
        raise SolverError("the affinities table is empty; compute affinities first")
    regime = _pick_regime(sorted({r["regime"] for r in rows}), spec.regime)
    rows = [r for r in rows if r["regime"] == regime]
    in_table = sorted({r["target"] for r in rows} - tasks.SOURCE_ONLY)  # never targets
    mentioned = set(in_table) | {s for r in rows for s in r["sources"]}
    known = [n for n in tasks.task_names() if n in mentioned] + sorted(
        mentioned - set(tasks.task_names()) - EXCLUDED_SOURCES)
    targets = _names(spec.targets, in_table, "target") if spec.targets else in_table
    novel = _names(spec.novel, in_table, "target")
    for name in set(novel) - set(targets):
        targets.append(name)
    # `random` is a baseline encoder, not a task one could label: supervisable only if named.
    default_sources = [n for n in tasks.task_names() if n in mentioned and n != "random"]
    chosen = set(_names(spec.sources, known, "source")) if spec.sources else None
    sources = [n for n in known if n in chosen] if chosen is not None else default_sources
    supervisable = tuple(n for n in sources if n not in novel)
    if not supervisable:
        raise SolverError("no task may be supervised (all are novel); allow some with --sources")
    for name in spec.importance:  # an importance only weighs a target's term of the objective
        if name not in targets:
            raise unknown_name("target of this problem", name, targets,
                               "Importance weighs targets; name it with --targets to make it one.")
    for name in spec.costs:  # a cost only counts when a task is supervised
        if name not in supervisable:
            raise unknown_name("supervisable task of this problem", name, supervisable,
                               "A cost counts for a task that may be supervised; allow it "
                               "with --sources (novel tasks never are).")
    if all(spec.importance.get(t, 1.0) == 0 for t in targets):
        raise ConfigError("every target's importance is 0, so every policy scores 0 and the "
                          "solve chooses nothing; give some target a positive importance")
    edges, supervision = _edges(rows, spec, set(targets), set(supervisable))
    for t in targets:
        if t in supervisable and t not in supervision:
            raise SolverError(f"target {t!r} has no `self` row in regime {regime}, so its own "
                              "supervision has no score; add its gold-standard results (a "
                              "sweep's: resume it, and its analysis writes them) or mark it "
                              "novel (--novel)")
        if t not in supervisable and not any(e.target == t for e in edges):
            raise SolverError(f"target {t!r} cannot be supervised and no transfer of order <= "
                              f"{spec.max_order} reaches it from the allowed sources; allow more "
                              "sources (--sources) or raise --max-order")
    unpruned = tuple(edges)
    if prune:
        edges = undominated(edges)
    order = {n: i for i, n in enumerate(tasks.task_names())}
    ordered = tuple(sorted(dict.fromkeys(targets), key=lambda n: (order.get(n, len(order)), n)))
    return Problem(regime, spec.max_order, spec.weight, ordered, supervisable,
                   {n: float(spec.costs.get(n, 1.0)) for n in supervisable},
                   {t: float(spec.importance.get(t, 1.0)) for t in ordered},
                   supervision, tuple(edges), unpruned)


def undominated(edges: Sequence[Edge]) -> list[Edge]:
    """Drop each transfer that another transfer into the same target dominates.

    f dominates e when f's sources are a subset of e's and f weighs at least as much (ties go to
    fewer sources, then to the first listed): whenever e's sources are supervised so are f's,
    so swapping e for f never lowers the objective. Fewer variables, same optimum.
    """
    by_target: dict[str, list[tuple[int, Edge]]] = {}
    for i, e in enumerate(edges):
        by_target.setdefault(e.target, []).append((i, e))

    def beats(i: int, f: Edge, j: int, e: Edge) -> bool:
        if not set(f.sources) <= set(e.sources) or i == j:
            return False
        return (f.weight, -len(f.sources), -i) > (e.weight, -len(e.sources), -j)

    keep = {j for group in by_target.values() for j, e in group
            if not any(beats(i, f, j, e) for i, f in group)}
    return [e for j, e in enumerate(edges) if j in keep]


def pick_regime(table: pa.Table, wanted: int | None) -> int:
    """The regime to solve or report: `wanted`, or the table's largest."""
    regimes = sorted(set(table.column("regime").to_pylist()))
    if not regimes:
        raise ConfigError("the affinities table is empty; nothing to solve or report")
    return int(_pick_regime(regimes, wanted))


def largest_order(table: pa.Table, regime: int) -> int:
    """The highest transfer order the table holds at `regime` (larger ones would repeat it)."""
    return int(max(o for o, r in zip(table.column("order").to_pylist(),
                                     table.column("regime").to_pylist()) if r == regime))


def _pick_regime(regimes: list[int], wanted: int | None) -> int:
    if wanted is None:
        return regimes[-1]
    if wanted not in regimes:
        raise ConfigError(f"regime {wanted} is not in the table; available: {regimes}")
    return wanted


def _names(names: Sequence[str] | None, known: list[str], kind: str) -> list[str]:
    out = []
    for n in names or ():
        if n not in known:
            if kind == "target" and n in tasks.SOURCE_ONLY:
                raise ConfigError(f"{n!r} is source-only and cannot be a target")
            hint = (f"{n!r} is a task of the dictionary, but these results have none for it "
                    "(a run of fewer tasks?)." if n in tasks.task_names()
                    else "Names are the dataset's domain names.")
            raise unknown_name(kind, n, known, hint)
        out.append(n)
    return list(dict.fromkeys(out))


def _edges(rows: list[dict], spec: ProblemSpec, targets: set[str], supervisable: set[str]
           ) -> tuple[list[Edge], dict[str, Edge]]:
    """Candidate transfers and each target's supervision edge, with their weights."""
    edges, supervision = [], {}
    for r in rows:
        t, src = r["target"], tuple(r["sources"])
        aff, qual, gain = (math.nan if r[k] is None else float(r[k])
                           for k in ("affinity", "quality", "gain"))
        # Rows above the order limit, and rows lacking a score (the published table's four
        # unranked transfers have a gain only), are not candidates: a chosen transfer's
        # affinity, quality and gain are all reported and tested for significance.
        if t not in targets or r["order"] > spec.max_order or not all(
                map(math.isfinite, (aff, qual, gain))):
            continue
        edge = Edge(t, src, edge_weight(spec.weight, aff, qual, gain), aff, qual, gain)
        if src == ("self",):
            if t in supervisable:
                supervision[t] = edge
        elif t not in src and not EXCLUDED_SOURCES & set(src) and set(src) <= supervisable:
            edges.append(edge)
    return edges, supervision


def solve(problem: Problem, budget: float, backend: str = DEFAULT_BACKEND) -> Taxonomy:
    """The optimal taxonomy of `problem` under `budget` (proven optimal: zero MIP gap)."""
    return budget_curve(problem, [budget], backend)[0]


def solve_taxonomy(affinities: pa.Table, spec: ProblemSpec, budget: float,
                   backend: str = DEFAULT_BACKEND) -> Taxonomy:
    """Build the problem from an affinities table and solve it for one budget."""
    return solve(build_problem(affinities, spec), budget, backend)


def budget_curve(problem: Problem, budgets: Sequence[float],
                 backend: str = DEFAULT_BACKEND) -> list[Taxonomy]:
    """One optimal taxonomy per budget (the supervision-budget curve); no retraining needed.

    The model is built once and only the budget's right-hand side changes between solves.
    """
    for budget in budgets:
        if not (math.isfinite(budget) and budget >= 0):
            raise ConfigError(f"the budget must be a finite number >= 0, got {budget}")
    model, sup, pick = _model(problem, maximise=True)
    model += (pulp.lpSum(problem.costs[n] * sup[n] for n in problem.supervisable) <= 0,
              "budget")
    out = []
    for budget in budgets:
        model.get_constraint_by_name("budget").changeRHS(budget)
        if run_model(model, backend) == "Infeasible":
            need = min_budget(problem, backend)
            raise SolverError(f"budget {budget:g} cannot serve all {len(problem.targets)} "
                              f"targets: the smallest budget that can is {need:g}; raise "
                              "the budget or drop targets (--targets)")
        chosen = frozenset(n for n in problem.supervisable if sup[n].varValue > 0.5)
        edges = [e for e, var in zip(problem.edges, pick) if var.varValue > 0.5]
        out.append(assemble(problem, budget, chosen, edges))
    return out


def max_budget(problem: Problem) -> float:
    """The budget that supervises every task that may be: a larger one changes nothing."""
    return float(sum(problem.costs.values()))


def min_budget(problem: Problem, backend: str = DEFAULT_BACKEND) -> float:
    """The smallest supervision cost that can serve every target (raises if none can)."""
    model, sup, _ = _model(problem, maximise=False)
    model.setObjective(pulp.lpSum(problem.costs[n] * sup[n] for n in problem.supervisable))
    if run_model(model, backend) == "Infeasible":  # pragma: no cover - build_problem checks targets
        raise SolverError("no supervision policy serves every target; allow more sources")
    return float(sum(problem.costs[n] for n in problem.supervisable if sup[n].varValue > 0.5))


def _model(problem: Problem, maximise: bool
           ) -> tuple[pulp.LpProblem, dict[str, pulp.LpVariable], list[pulp.LpVariable]]:
    """Variables and structural constraints: one way to serve each target, sources supervised."""
    model = pulp.LpProblem("taxonomy", pulp.LpMaximize if maximise else pulp.LpMinimize)
    sup = {n: model.add_variable(f"s{i}", cat=pulp.LpBinary)
           for i, n in enumerate(problem.supervisable)}
    pick = [model.add_variable(f"x{j}", cat=pulp.LpBinary) for j in range(len(problem.edges))]
    into: dict[str, list[pulp.LpVariable]] = {t: [] for t in problem.targets}
    using: dict[tuple[str, str], list[pulp.LpVariable]] = {}
    objective = []
    for edge, var in zip(problem.edges, pick):
        into[edge.target].append(var)
        objective.append(problem.importance[edge.target] * edge.weight * var)
        for s in edge.sources:
            using.setdefault((edge.target, s), []).append(var)
    # A transfer needs every one of its sources supervised. As a target takes at most one
    # transfer, the transfers into t that use s can share one constraint: sum x_e <= s_s.
    # Equivalent for 0/1 values, and a tighter LP relaxation than one x_e <= s_s per edge.
    for (_, s), vars_ in using.items():
        model += pulp.lpSum(vars_) <= sup[s]
    for t in problem.targets:
        served = [*into[t]]
        if t in problem.supervision:
            served.append(sup[t])
            objective.append(problem.importance[t] * problem.supervision[t].weight * sup[t])
        model += pulp.lpSum(served) == 1  # exactly one incoming transfer, or supervised
    model.setObjective(pulp.lpSum(objective))
    return model, sup, pick


def assemble(problem: Problem, budget: float, chosen: frozenset[str],
              edges: Sequence[Edge]) -> Taxonomy:
    """Assemble the result, scoring it exactly from the table (not the solver's float)."""
    by_target = {e.target: e for e in edges}
    out = []
    for t in problem.targets:
        supervised = t in chosen and t in problem.supervision
        e = problem.supervision[t] if supervised else by_target[t]
        out.append(Assignment(t, e.sources, supervised, e.weight, e.affinity, e.quality, e.gain))
    objective = float(sum(problem.importance[a.target] * a.weight for a in out))
    # With budget to spare the solver may also supervise tasks nothing uses (the objective does
    # not see them); a taxonomy lists only the tasks it labels for a reason.
    used = {s for a in out for s in a.sources} | {a.target for a in out if a.supervised}
    ordered = tuple(n for n in problem.supervisable if n in chosen and n in used)
    return Taxonomy(problem.regime, budget, problem.max_order, problem.weight, objective,
                    ordered, tuple(out),
                    besides_one(problem.importance), besides_one(problem.costs))
