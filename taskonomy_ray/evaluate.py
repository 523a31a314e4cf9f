"""Step 5 of the method: score a taxonomy by win rates and test it against random policies.

Gain (vs scratch) and Quality (vs the gold standard) per target come from the affinities table;
significance compares the taxonomy with random feasible policies of the same budget; novel tasks
measure how well the dictionary serves a task that has only the small data.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import ConfigError, SolverError
from .taxonomy import Edge, Problem, ProblemSpec, Taxonomy, assemble, build_problem

METRICS = ("objective", "quality", "gain")


def target_scores(taxonomy: Taxonomy) -> list[dict[str, Any]]:
    """Per target: how it is served and its Gain and Quality (0.5 = break-even / as good)."""
    return [{"target": a.target, "sources": list(a.sources), "supervised": a.supervised,
             "gain": a.gain, "quality": a.quality} for a in taxonomy.transfers]


def means(taxonomy: Taxonomy, transfers_only: bool = False) -> dict[str, float]:
    """Mean Gain and Quality over the targets; `transfers_only` leaves supervised targets out."""
    rows = [a for a in taxonomy.transfers if not (transfers_only and a.supervised)]
    if not rows:
        return {"gain": float("nan"), "quality": float("nan"), "targets": 0}
    return {"gain": float(np.mean([a.gain for a in rows])),
            "quality": float(np.mean([a.quality for a in rows])), "targets": len(rows)}


@dataclass(frozen=True)
class Significance:
    """Where the taxonomy's score falls in the distribution of random feasible policies."""

    metric: str
    taxonomy: float
    random: np.ndarray  # one score per random policy
    percentile: float  # % of random policies scoring below the taxonomy (ties count half)

    @property
    def p_value(self) -> float:
        """Monte Carlo p-value: (policies scoring at least as well + 1) / (policies + 1).

        The +1s count the taxonomy itself as one draw, so n policies never claim a p-value
        below 1 / (n + 1) (a plain fraction printed 0.000 from 100 draws).
        """
        return float((np.sum(self.random >= self.taxonomy - 1e-12) + 1) / (len(self.random) + 1))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (the distribution as mean, std, quantiles)."""
        q = np.quantile(self.random, [0.0, 0.05, 0.5, 0.95, 1.0])
        return {"metric": self.metric, "taxonomy": self.taxonomy, "n": int(len(self.random)),
                "percentile": self.percentile, "p_value": self.p_value,
                "random_mean": float(self.random.mean()), "random_std": float(self.random.std()),
                "random_quantiles": dict(zip(("min", "p5", "median", "p95", "max"),
                                             map(float, q)))}


def random_policies(problem: Problem, budget: float, n: int, seed: int = 0,
                    max_tries: int | None = None) -> np.ndarray:
    """Scores (n, 3: objective, quality, gain) of n random feasible policies within `budget`.

    A policy supervises a random set of tasks (random order, added while the budget allows)
    and serves every other target by a uniformly random transfer whose sources are all
    supervised (dominated transfers included: the solver's pruning does not shape the
    baseline); sets that leave a target unserved are drawn again.
    """
    if n < 1:
        raise ConfigError(f"the number of random policies must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    names = list(problem.supervisable)
    bit = {name: 1 << i for i, name in enumerate(names)}
    cost = np.array([problem.costs[name] for name in names])
    per_target = []
    for t in problem.targets:
        into = [e for e in problem.unpruned if e.target == t]
        per_target.append((
            t, np.array([sum(bit[s] for s in e.sources) for e in into], dtype=np.int64),
            np.array([[e.weight, e.quality, e.gain] for e in into]).reshape(-1, 3),
            problem.supervision.get(t)))
    imp = np.array([problem.importance[t] for t in problem.targets])
    out = np.empty((n, 3))
    done, tries, limit = 0, 0, max_tries or 200 * n
    while done < n:
        tries += 1
        if tries > limit:
            raise SolverError(f"only {done} of {n} random policies were feasible in {limit} "
                              f"draws at budget {budget:g}; raise the budget")
        mask = _random_set(rng, cost, budget)
        scores = _score(rng, mask, per_target, bit)
        if scores is None:
            continue
        out[done] = [float(imp @ scores[:, 0]), scores[:, 1].mean(), scores[:, 2].mean()]
        done += 1
    return out


def _random_set(rng: np.random.Generator, cost: np.ndarray, budget: float) -> int:
    mask, spent = 0, 0.0
    for i in rng.permutation(len(cost)):
        if spent + cost[i] <= budget + 1e-9:
            mask |= 1 << int(i)
            spent += cost[i]
    return mask


def _score(rng: np.random.Generator, mask: int, per_target: list, bit: dict[str, int]
           ) -> np.ndarray | None:
    """(targets, 3) weight, quality, gain of one random policy; None if a target is unserved."""
    rows = []
    for t, emask, values, own in per_target:
        if own is not None and mask & bit[t]:
            rows.append((own.weight, own.quality, own.gain))
            continue
        usable = np.flatnonzero((emask & mask) == emask)
        if len(usable) == 0:
            return None
        rows.append(tuple(values[rng.choice(usable)]))
    return np.array(rows)


def significance(problem: Problem, taxonomy: Taxonomy, n: int = 1000, seed: int = 0
                 ) -> dict[str, Significance]:
    """The taxonomy against n random feasible policies of its budget, for each metric."""
    scores = random_policies(problem, taxonomy.budget, n, seed)
    mine = {"objective": taxonomy.objective, "quality": taxonomy.quality, "gain": taxonomy.gain}
    out = {}
    for k, metric in enumerate(METRICS):
        values = scores[:, k]
        below = np.mean(values < mine[metric] - 1e-12)
        ties = np.mean(np.abs(values - mine[metric]) <= 1e-12)
        out[metric] = Significance(metric, float(mine[metric]), values,
                                   float(100.0 * (below + 0.5 * ties)))
    return out


def evaluate_policy(problem: Problem, chosen: frozenset[str]) -> Taxonomy | None:
    """The best taxonomy that supervises exactly `chosen` (None if some target is unserved)."""
    best: dict[str, Edge] = {}
    for e in problem.edges:
        if set(e.sources) <= chosen and (e.target not in best or e.weight > best[e.target].weight):
            best[e.target] = e
    missing = [t for t in problem.targets if t not in best and
               not (t in chosen and t in problem.supervision)]
    if missing:
        return None
    edges = [best[t] for t in problem.targets if not (t in chosen and t in problem.supervision)]
    cost = sum(problem.costs[n] for n in chosen)
    return assemble(problem, cost, chosen, edges)


def exhaustive_optimum(problem: Problem, budget: float, max_subsets: int = 500_000
                       ) -> tuple[float, frozenset[str]]:
    """Brute force over every affordable supervised set: the reference the BIP is tested against.

    For a fixed supervised set S the best choice per target is independent: S's own score if the
    target is in S, else its best transfer with all sources in S. Scoring is vectorised over the
    subsets with bit masks. Returns (optimum, one optimal S); -inf if nothing is feasible.
    """
    names = list(problem.supervisable)
    bit = {n: 1 << i for i, n in enumerate(names)}
    subsets = _affordable(names, problem.costs, budget, max_subsets)
    masks = np.array([sum(bit[n] for n in s) for s in subsets], dtype=np.int64)
    score = np.zeros(len(masks))
    for t in problem.targets:
        into = [e for e in problem.unpruned if e.target == t]
        emask = np.array([sum(bit[s] for s in e.sources) for e in into], dtype=np.int64)
        w = np.array([e.weight for e in into])
        usable = (masks[:, None] & emask[None, :]) == emask[None, :]
        best = np.where(usable, w[None, :], -np.inf).max(axis=1) if into else \
            np.full(len(masks), -np.inf)
        if t in problem.supervision:
            best = np.where(masks & bit[t], problem.supervision[t].weight, best)
        score += problem.importance[t] * best
    k = int(np.argmax(score))
    return float(score[k]), frozenset(subsets[k])


def _affordable(names: list[str], costs: Mapping[str, float], budget: float,
                limit: int) -> list[tuple[str, ...]]:
    cheapest = min(costs.values())
    most = len(names) if cheapest <= 0 else min(len(names), int(budget / cheapest + 1e-9))
    if sum(math.comb(len(names), k) for k in range(most + 1)) > limit:
        raise SolverError(f"exhaustive search over {len(names)} tasks with budget {budget:g} is "
                          f"too large (> {limit} subsets); use the BIP solver")
    return [s for k in range(most + 1) for s in itertools.combinations(names, k)
            if sum(costs[n] for n in s) <= budget + 1e-9]


@dataclass(frozen=True)
class NovelTask:
    """How a novel task is served when every other task is supervised ("all-for-one")."""

    target: str
    max_order: int
    sources: tuple[str, ...]
    weight: float
    affinity: float
    quality: float
    gain: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"target": self.target, "max_order": self.max_order,
                "sources": list(self.sources), "weight": self.weight,
                "affinity": self.affinity, "quality": self.quality, "gain": self.gain}


def novel_tasks(table: pa.Table, orders: Sequence[int] = (1, 2, 3, 4),
                regime: int | None = None, targets: Sequence[str] | None = None,
                weight: str = "sqrt_affinity") -> list[NovelTask]:
    """Generalisation to novel tasks, all-for-one (the paper's section 4.4, figure 9).

    Each target in turn is novel: it has only the small data and is nobody's source, and every
    other task is supervised. The taxonomy then serves it by its best-weighted transfer of
    order <= k from the other tasks (what the BIP with it `novel` and the whole budget picks:
    its choice no longer competes with the others'), and that transfer's Gain and Quality say
    how well the dictionary generalises to it. A target with no transfer of an order is left
    out of that order.
    """
    out = []
    for k in sorted(set(orders)):
        spec = ProblemSpec(max_order=k, regime=regime, weight=weight,
                           targets=tuple(targets) if targets else None)
        problem = build_problem(table, spec, prune=False)
        for t in problem.targets:
            into = [e for e in problem.unpruned if e.target == t]
            if into:  # ties: the lower order, then the sources' names (max keeps the first)
                e = max(sorted(into, key=lambda e: (len(e.sources), e.sources)),
                        key=lambda e: e.weight)
                out.append(NovelTask(t, k, e.sources, e.weight, e.affinity, e.quality, e.gain))
    return out
