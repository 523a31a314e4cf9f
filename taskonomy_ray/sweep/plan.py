"""The sweep's plan: every unit of work with a deterministic key, its inputs and its outputs.

Keys hash the config parts a unit depends on, so a resumed sweep with the same config recomputes
the same plan and skips every unit whose outputs already exist in storage (DESIGN.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import tasks as registry
from ..beam import canonical, per_target_counts
from .config import SweepConfig

PLAN_FILE = "plan.json"  # every planned unit, in storage (written by the driver)
# Stages in the order they first become ready; the progress bars and `status` use this order.
STAGES = ("render", "gold", "scratch", "features", "transfer", "beam", "analysis")
# Which ready unit runs first: a beam is cheap and unlocks its target's higher orders at once, so
# it goes before the (many) transfer groups still waiting; gold networks are the critical path.
PRIORITY = ("render", "gold", "beam", "scratch", "features", "transfer", "analysis")


@dataclass(frozen=True)
class Unit:
    """One unit of work: done when all its outputs exist in storage."""

    key: str
    stage: str
    params: dict[str, Any] = field(compare=False, hash=False)
    deps: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()  # storage-relative paths, written atomically by the unit
    barrier: bool = False  # ready only once every non-barrier unit has finished
    # Deps the unit can run without when they fail: a transfer group's sources' representations
    # (the group trains the transfers whose sources are all there, `partial_path` says which not).
    optional: tuple[str, ...] = ()

    @property
    def required(self) -> tuple[str, ...]:
        """The deps whose failure fails this unit."""
        return tuple(d for d in self.deps if d not in self.optional)

    def to_json(self) -> dict[str, Any]:
        """The unit as JSON (what `plan.json` records for `status`)."""
        return {"key": self.key, "stage": self.stage, "params": self.params,
                "deps": list(self.deps), "outputs": list(self.outputs), "barrier": self.barrier,
                "optional": list(self.optional)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Unit:
        """Inverse of `to_json` (plans written before `optional` existed have none)."""
        return cls(d["key"], d["stage"], d["params"], tuple(d["deps"]), tuple(d["outputs"]),
                   d["barrier"], tuple(d.get("optional", ())))


def blocked_reason(unit: Unit, bad: Callable[[str], str | None], chooser: str | None = None,
                   nothing_else_done: bool = False) -> str | None:
    """Why `unit` cannot run now that some units failed, or None if it still can.

    `bad(key)` is "failed" or "blocked" for a unit that failed or will not run, else None;
    `chooser` is the beam that added the unit. A unit whose deps are all optional needs one of
    them (a transfer group with no source left has nothing to train), and a barrier needs some
    unit's losses (`nothing_else_done`: every unit that writes losses failed or will not run).
    """
    hit = [d for d in unit.required if bad(d)]
    if hit:
        return f"not run: its dependency {hit[0]} {bad(hit[0])}"
    if chooser and bad(chooser):
        return f"not run: {chooser}, which chose it, {bad(chooser)}"
    if unit.optional and not unit.required and all(bad(d) for d in unit.optional):
        return f"not run: every input {bad(unit.optional[0])} (the first: {unit.optional[0]})"
    if unit.barrier and nothing_else_done:
        return "not run: no unit that writes per-image losses succeeded"
    return None


def imagesets(target: str, regime: int) -> tuple[str, str]:
    """The (training, test) image sets a transfer into `target` reads (see features.py).

    Single-view targets share `r<regime>` and `test`; a multi-view target's samples are its own
    groups of views, so it has its own sets.
    """
    suffix = f"-{target}" if registry.get_task(target).views > 1 else ""
    return f"r{regime}{suffix}", f"test{suffix}"


def _h(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def gold_key(cfg: SweepConfig, task: str) -> str:
    """Key of `task`'s gold-standard network."""
    return f"gold-{task}-{cfg.digest('data', 'network', 'seed', gold=True)}"


def features_key(cfg: SweepConfig, source: str, imageset: str) -> str:
    """Key of one source's cached representations of one image set (`test` or `r<regime>`)."""
    d = cfg.digest("data", "network", "seed", gold=source != "random")  # (random: no network)
    return f"features-{source}-{imageset}-{d}"


def scratch_key(cfg: SweepConfig, target: str, regime: int) -> str:
    """Key of the scratch network of (target, regime)."""
    return f"scratch-{target}-r{regime}-{cfg.digest('data', 'network', 'scratch', 'seed')}"


def beam_key(cfg: SweepConfig, target: str, regime: int) -> str:
    """Key of the beam search over `target`'s first-order results at `regime`.

    It hashes what the choice depends on: the first-order group it ranks (so its sources), the
    gold network it ranks against, the widths in use and the top order. A resume with another
    `beam` or `max_order`, or another task list, ranks again (cheap) instead of keeping the old
    choice of higher orders.
    """
    ranked = [transfer_key(cfg, target, regime, 1, [[s] for s in cfg.sources]),
              gold_key(cfg, target)]
    widths = list(cfg.beam[:cfg.max_order - 1])
    return f"beam-{target}-r{regime}-{_h([ranked, widths, cfg.max_order])}"


def transfer_key(cfg: SweepConfig, target: str, regime: int, order: int,
                 source_sets: list[list[str]]) -> str:
    """Key of one fused group of transfers of one order into `target`."""
    d = cfg.digest("data", "network", "transfer", "seed", gold=True)
    sets = _h([registry.TRANSFER_VERSION, spelt(source_sets)])
    return f"transfer-{target}-r{regime}-o{order}-{d}{sets}"


def _unit(stage: str, key: str, params: dict[str, Any], deps: list[str], outputs: list[str],
          barrier: bool = False, optional: tuple[str, ...] = ()) -> Unit:
    return Unit(key, stage, params, tuple(deps), tuple(outputs), barrier, optional)


def losses_path(key: str) -> str:
    """Where a unit's per-image losses go (one Parquet file per unit)."""
    return f"losses/{key}.parquet"


def partial_path(key: str) -> str:
    """Where a transfer group that ran without some sources records which (gone when complete)."""
    return f"partial/{key}.json"


def checkpoint_path(key: str) -> str:
    """The final weights of a trained network (stage 1)."""
    return f"checkpoints/{key}/final.pt"


def features_path(key: str) -> str:
    """The cached representations of a (source, image set)."""
    return f"features/{key}.npz"


def beam_counts(cfg: SweepConfig) -> dict[str, int]:
    """The transfers per higher order one beam chooses: {"2": 10, "3": 10, "4": 15} at paper size.

    (Every `order`-subset of the top `width` of a target's sources besides itself and `random`;
    fewer only where a failed source leaves its first-order group with fewer to rank.)
    """
    counts = per_target_counts(len(cfg.tasks) - 1, cfg.beam_config())
    return {str(k): n for k, n in counts.items()}


def build(cfg: SweepConfig) -> list[Unit]:
    """Every unit known before any result: stages 0-2 first order, the beams and the analysis."""
    units: list[Unit] = []
    render = []
    if cfg.data.render is not None:
        key = f"render-{cfg.digest('data')}"
        units.append(_unit("render", key, {"root": cfg.data.root}, [], [f"render/{key}.json"]))
        render = [key]
    for task in cfg.tasks:
        key = gold_key(cfg, task)
        units.append(_unit("gold", key, {"task": task}, render,
                           [checkpoint_path(key), losses_path(key)]))
    for target in cfg.targets:
        for regime in cfg.regimes:
            key = scratch_key(cfg, target, regime)
            units.append(_unit("scratch", key, {"target": target, "regime": regime}, render,
                               [losses_path(key)]))
    sets = sorted({s for t in cfg.targets for r in cfg.regimes for s in imagesets(t, r)})
    for s in sets:  # image set first: consecutive units on a worker reuse its decoded images
        for source in cfg.sources:
            deps = render if source == "random" else [gold_key(cfg, source)]
            key = features_key(cfg, source, s)
            units.append(_unit("features", key, {"source": source, "imageset": s}, deps,
                               [features_path(key)]))
    for target in cfg.targets:
        for regime in cfg.regimes:
            singles = [[s] for s in cfg.sources]
            units.append(transfer_unit(cfg, target, regime, 1, singles))
            if cfg.max_order > 1:
                o1 = transfer_key(cfg, target, regime, 1, singles)
                key = beam_key(cfg, target, regime)
                params = {"target": target, "regime": regime, "expects": beam_counts(cfg)}
                units.append(_unit("beam", key, params,
                                   [o1, gold_key(cfg, target)],  # (ranking needs no scratch)
                                   [f"beam/{key}.json"]))
    units.append(_unit("analysis", "analysis", {}, [], ["affinities.parquet", "taxonomy.json"],
                       barrier=True))
    return units


def transfer_unit(cfg: SweepConfig, target: str, regime: int, order: int,
                  source_sets: list[list[str]]) -> Unit:
    """A fused group of `order`-th order transfers into `target` (one unit of work).

    Every representation it reads is an optional dep: a source whose network failed costs the
    transfers from it, not the whole group (a failed gold network would otherwise fail every
    first-order group of the sweep).
    """
    source_sets = spelt(source_sets)  # (the key spells them so too)
    key = transfer_key(cfg, target, regime, order, source_sets)
    sources = sorted({s for group in source_sets for s in group})
    deps = [features_key(cfg, s, i) for s in sources for i in imagesets(target, regime)]
    params = {"target": target, "regime": regime, "order": order, "source_sets": source_sets}
    return _unit("transfer", key, params, deps, [losses_path(key)], optional=tuple(deps))


def spelt(source_sets: list[list[str]]) -> list[list[str]]:
    """A group's source sets in their one spelling: each set, then the list, in registry order.

    A beam's choice lists its sets in rank order; the same sets ranked otherwise are the same
    group (each head trains as it would alone), so the key must not see the order.
    """
    order = {n: i for i, n in enumerate(registry.resolve(None))}
    sets = [list(canonical(ss)) for ss in source_sets]
    return sorted(sets, key=lambda ss: [order[s] for s in ss])


def expand_beam(cfg: SweepConfig, beam: Unit, chosen: dict[str, list[list[str]]]) -> list[Unit]:
    """The higher-order transfer units a finished beam unit chose (`{"2": [[a, b], ...], ...}`)."""
    target, regime = beam.params["target"], beam.params["regime"]
    units = [transfer_unit(cfg, target, regime, int(order), sets)
             for order, sets in sorted(chosen.items()) if sets]
    for u in units:  # (in plan.json: `status` blocks the choice of a failed beam)
        u.params["chosen_by"] = beam.key
    return units
