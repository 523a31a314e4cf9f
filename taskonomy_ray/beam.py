"""Stage 2d: which transfers to train, first order for every target and beam-selected higher orders.

Pure (no torch, no Ray): the sweep calls `first_order_plan` up front and `expand_target` as soon
as a target's first-order affinities are in, so no target waits for a global barrier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from math import comb

import pyarrow as pa

from .errors import ConfigError
from .tasks import PSEUDO_SOURCES, get_task, resolve

# Published Taskonomy beam: all pairs and triples of a target's top-5 first-order sources and all
# 4-sets of its top-6 (Zamir et al. 2018, sec. 3.2), i.e. 10 + 10 + 15 = 35 per target.
PAPER_BEAM_WIDTHS = (5, 5, 6)
RANDOM = "random"


@dataclass(frozen=True)
class BeamConfig:
    """Beam widths for orders 2, 3, ... (`widths[k - 2]` sources for order k) and the top order."""

    widths: tuple[int, ...] = PAPER_BEAM_WIDTHS
    max_order: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if not 1 <= self.max_order <= 1 + len(self.widths):
            raise ConfigError(
                f"beam max_order={self.max_order} needs a width for each order 2..max_order; "
                f"got widths {self.widths}: set max_order between 1 and {1 + len(self.widths)} "
                "or add widths"
            )
        for order, w in enumerate(self.widths, start=2):
            if w < order:
                raise ConfigError(f"beam width {w} for order {order} picks no {order}-set; "
                                  f"use a width of at least {order}")

    def width(self, order: int) -> int:
        """How many top-ranked sources order `order` combines."""
        return self.widths[order - 2]


def canonical(sources: Sequence[str]) -> tuple[str, ...]:
    """Sources in registry order: the one spelling of a combination in keys, tables and channels."""
    names = [get_task(s).name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"a transfer lists a source twice: {list(sources)}")
    order = {n: i for i, n in enumerate(resolve(None))}
    return tuple(sorted(names, key=order.__getitem__))


def first_order_sources(target: str, dictionary: Sequence[str] | None = None, *,
                        include_self: bool = True, include_random: bool = True) -> list[str]:
    """First-order sources of `target`: every trained task of the dictionary, plus `random`.

    The target's own frozen encoder (t -> t) is a source like the others (`include_self`).
    """
    if get_task(target).source_only:
        raise ConfigError(f"{target!r} is source-only and has no transfers into it")
    tasks = resolve(list(dictionary) if dictionary is not None else None)
    out = [s for s in tasks if s != RANDOM and (include_self or s != target)]
    if include_random:
        out.append(RANDOM)
    return out


def first_order_plan(dictionary: Sequence[str] | None = None, *, include_self: bool = True,
                     include_random: bool = True) -> dict[str, list[tuple[str, ...]]]:
    """Every target of the dictionary -> its first-order transfers (one-source tuples)."""
    targets = [t for t in resolve(list(dictionary) if dictionary is not None else None)
               if not get_task(t).source_only]
    return {t: [(s,) for s in first_order_sources(t, dictionary, include_self=include_self,
                                                  include_random=include_random)]
            for t in targets}


def rank_sources(affinities: pa.Table | Mapping[str, float], target: str, regime: int | None = None,
                 ) -> list[str]:
    """The target's first-order sources, best affinity first, without `random` and t -> t.

    `affinities` is the AHP table (columns regime, target, sources, order, affinity) or a plain
    {source: affinity} map for one target. Ties break by registry order, so ranking is stable.
    Neither `random` nor the target itself enters a combination: a higher-order transfer mixes
    other tasks' representations. The table's `self` (gold standard) row is not a source either.
    """
    scores = affinities if isinstance(affinities, Mapping) else _first_order(affinities, target,
                                                                            regime)
    order = {n: i for i, n in enumerate(resolve(None))}
    cands = [s for s in scores if s not in (*PSEUDO_SOURCES, target)]
    for s in cands:
        get_task(s)
    return sorted(cands, key=lambda s: (-float(scores[s]), order[s]))


def _first_order(table: pa.Table, target: str, regime: int | None) -> dict[str, float]:
    cols = table.select(["regime", "target", "sources", "order", "affinity"]).to_pylist()
    rows = [r for r in cols if r["target"] == target and r["order"] == 1
            and (regime is None or r["regime"] == regime)]
    regimes = {r["regime"] for r in rows}
    if len(regimes) > 1:
        raise ConfigError(f"affinities of {target!r} span regimes {sorted(regimes)}; pass regime=")
    if not rows:
        raise ConfigError(f"no first-order affinities for target {target!r}"
                          f"{'' if regime is None else f' in regime {regime}'}; train and score "
                          "its first-order transfers before expanding the beam")
    return {r["sources"][0]: r["affinity"] for r in rows}


def higher_order_sources(ranked: Sequence[str], cfg: BeamConfig = BeamConfig()
                         ) -> list[tuple[str, ...]]:
    """All k-sets of the top `width(k)` ranked sources, for k = 2..max_order, canonically spelt."""
    out: list[tuple[str, ...]] = []
    for order in range(2, cfg.max_order + 1):
        top = list(ranked[: cfg.width(order)])
        if len(top) < order:
            raise ConfigError(f"order {order} needs {order} ranked sources, got {len(top)}; "
                              "lower beam max_order or train more first-order transfers")
        out.extend(canonical(c) for c in combinations(top, order))
    return out


def choose(ranked: Sequence[str], cfg: BeamConfig = BeamConfig()
           ) -> tuple[list[tuple[str, ...]], list[int]]:
    """The higher orders `higher_order_sources` would choose, as far as `ranked` allows.

    Returns the combinations and the orders skipped for want of ranked sources (a first-order
    transfer into the target failed or diverged), so that one lost transfer costs those orders
    only, not the target's whole beam.
    """
    reach = min(cfg.max_order, len(ranked))
    combos = higher_order_sources(ranked, BeamConfig(cfg.widths, max(reach, 1)))
    return combos, list(range(max(reach, 1) + 1, cfg.max_order + 1))


def expand_target(affinities: pa.Table, target: str, regime: int,
                  cfg: BeamConfig = BeamConfig()) -> list[tuple[str, ...]]:
    """The higher-order transfers to train for `target` once its first-order affinities exist."""
    return higher_order_sources(rank_sources(affinities, target, regime), cfg)


def by_order(combos: Sequence[Sequence[str]]) -> dict[str, list[list[str]]]:
    """Combinations grouped by order, JSON-ready: {"2": [[a, b], ...], ...}, one group per order."""
    out: dict[str, list[list[str]]] = {}
    for c in combos:
        out.setdefault(str(len(c)), []).append(list(c))
    return out


def planned_counts(dictionary: Sequence[str] | None = None, cfg: BeamConfig = BeamConfig(), *,
                   include_self: bool = True, include_random: bool = True) -> dict[int, int]:
    """Transfers planned per order for one regime: {order: count}.

    Full dictionary, paper beam: 22 targets; first order 22 x 26 = 572 (24 other trained tasks +
    `random` + t -> t); orders 2, 3, 4: 22 x 10, 22 x 10, 22 x 15 (22 x 35 = 770 in all).
    """
    plan = first_order_plan(dictionary, include_self=include_self, include_random=include_random)
    counts = {1: sum(len(v) for v in plan.values())}
    for order in range(2, cfg.max_order + 1):
        total = 0
        for target in plan:
            n_ranked = len(first_order_sources(target, dictionary, include_self=False,
                                               include_random=False))
            if n_ranked < order:
                raise ConfigError(f"order {order} needs {order} sources besides {target!r} and "
                                  f"`random`, the dictionary has {n_ranked}; lower beam max_order")
            total += per_target_counts(n_ranked, cfg)[order]
        counts[order] = total
    return counts


def per_target_counts(n_ranked: int, cfg: BeamConfig = BeamConfig()) -> dict[int, int]:
    """The transfers one target's beam chooses per higher order from `n_ranked` ranked sources.

    Every `order`-subset of the top `width(order)` sources: 10, 10, 15 for the paper's beam.
    """
    return {k: comb(min(cfg.width(k), n_ranked), k) for k in range(2, cfg.max_order + 1)}
