"""What each unit asks of the cluster: Ray resources, the CPUs it occupies, its memory.

The runner admits units while their cost fits the cluster's capacity (`runner.run`).
"""

from __future__ import annotations

from typing import Any

from . import config as sweep_config
from . import plan as planning


def options(cfg: sweep_config.SweepConfig):
    """Ray resources per unit: gold launchers take none (their TorchTrainer worker does).

    Scratch networks are the gold networks' trainings on a regime's subset: they take what one
    gold worker takes. Transfer units also reserve `resources.transfer_memory_gb` of Ray's
    memory resource. Ray retries nothing itself (`max_retries` 0): the scheduler retries a lost
    unit, so `resources.retries` is the whole count.
    """
    r = cfg.resources

    def opts(unit: planning.Unit) -> dict[str, Any]:
        if unit.stage == "gold" and r.gold_trainer == "ray_train":
            return {"num_cpus": 0, "max_retries": 0}
        if unit.stage in ("gold", "scratch"):  # the same network trainings
            return {"num_cpus": r.gold_cpus_per_worker, "num_gpus": r.gold_gpus_per_worker,
                    "max_retries": 0}
        gpus = r.gpus_per_unit if unit.stage in ("features", "transfer") else 0
        extra: dict[str, Any] = {"max_calls": r.max_calls} if gpus else {}
        if unit.stage == "transfer" and r.transfer_memory_gb:
            extra["memory"] = int(r.transfer_memory_gb * 1e9)
        return {"num_cpus": r.cpus_per_unit, "num_gpus": gpus, "max_retries": 0, **extra}

    return opts


def cost(cfg: sweep_config.SweepConfig):
    """CPUs a unit occupies while it runs (a gold run: its Ray Train workers')."""
    r = cfg.resources

    def unit_cost(unit: planning.Unit) -> float:
        if unit.stage == "gold":
            return r.gold_workers * r.gold_cpus_per_worker
        return r.gold_cpus_per_worker if unit.stage == "scratch" else r.cpus_per_unit

    return unit_cost


def transfer_memory(cfg: sweep_config.SweepConfig, test_samples: int) -> dict[str, Any]:
    """Estimated memory of each transfer unit shape of `cfg`, per (target, regime, order).

    {"<target> r<regime> o<order>": memory.UnitMemory}; a higher order as the beam sizes it
    (every `order`-subset of the top `beam` sources), scored on `test_samples` test samples.
    """
    from itertools import combinations

    from ..memory import unit_memory
    from ..tasks import get_task

    tcfg, model = cfg.transfer_config(), cfg.gold_network().model
    out = {}
    for target in cfg.targets:
        for regime in cfg.regimes:
            for order in range(1, cfg.max_order + 1):
                top = cfg.sources if order == 1 else cfg.sources[:cfg.beam[order - 2]]
                sets = [list(c) for c in combinations(top, order)]
                out[f"{target} r{regime} o{order}"] = unit_memory(
                    target, sets, regime, test_samples, model, tcfg, get_task(target).channels)
    return out


def capacity() -> float:
    """The cluster's CPUs now (it grows as an autoscaler adds nodes)."""
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))
