"""What each unit of the plan does, as calls into the plain library functions.

`execute(unit, ctx)` runs on a Ray worker; everything it writes goes through `tables.Storage`
atomically, the outputs last, so a unit is either done (its outputs exist) or will be redone.
"""

from __future__ import annotations

import io
from typing import Any

from ..dataset import SplitConfig
from ..tables import Storage
from . import config as sweep_config
from . import plan as planning

# A checkpoint that training may resume from, kept in storage next to the final weights.
RESUME_FILE = "checkpoint.pt"


def options(cfg: sweep_config.SweepConfig):
    """Ray resources per unit: gold launchers take none (their TorchTrainer worker does)."""
    r = cfg.resources

    def opts(unit: planning.Unit) -> dict[str, Any]:
        if unit.stage == "gold" and r.gold_trainer == "ray_train":
            return {"num_cpus": 0, "max_retries": 3}
        if unit.stage == "gold":
            return {"num_cpus": r.gold_cpus_per_worker, "num_gpus": r.gold_gpus_per_worker,
                    "max_retries": 3}
        gpus = r.gpus_per_unit if unit.stage in ("scratch", "features", "transfer") else 0
        extra = {"max_calls": r.max_calls} if gpus else {}
        return {"num_cpus": r.cpus_per_unit, "num_gpus": gpus, "max_retries": 3, **extra}

    return opts


def stage_limits(cfg: sweep_config.SweepConfig) -> dict[str, int]:
    """At most this many units of a stage in flight (gold launchers hold no CPU themselves)."""
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    r = cfg.resources
    per_gold = r.gold_workers * r.gold_cpus_per_worker
    gold = max(1, int(cpus // per_gold))
    if r.gold_gpus_per_worker:
        gold = max(1, min(gold, int(gpus // (r.gold_workers * r.gold_gpus_per_worker)) or 1))
    return {"gold": gold, "render": 1, "analysis": 1}


def splits(cfg: sweep_config.SweepConfig) -> SplitConfig:
    """The dataset's building split from the workflow's data section."""
    train, val, test = cfg.data.split
    return SplitConfig(train=train, val=val, test=test, seed=cfg.data.split_seed)


class StorageHooks:
    """Training hooks that keep the resumable checkpoint in storage (any pyarrow filesystem)."""

    def __init__(self, storage: Storage, rel: str) -> None:
        self.storage, self.rel = storage, rel
        self.last: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint saved by an earlier attempt of this unit, if any."""
        import torch

        if not self.storage.exists(self.rel):
            return None
        data = self.storage.read_bytes(self.rel)
        self.last = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        return self.last

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        """Replace the checkpoint atomically."""
        self.storage.write_bytes(self.rel, torch_bytes(state))
        self.last = state

    def report(self, metrics: dict[str, Any]) -> None:
        """Metrics are not kept beyond the ledger's timing."""


def torch_bytes(obj: Any) -> bytes:
    """`torch.save` into bytes."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _context(ctx: dict[str, Any]) -> tuple[sweep_config.SweepConfig, Storage]:
    return sweep_config.from_dict(ctx["config"]), Storage(ctx["storage"])


def run_gold(unit: planning.Unit, ctx: dict[str, Any]) -> dict[str, Any]:
    """Stage 1: the gold network of a task (here, or as a Ray Train run)."""
    cfg, storage = _context(ctx)
    if cfg.resources.gold_trainer == "ray_train":
        from .train_runner import fit_gold

        return fit_gold(unit, ctx)
    hooks = StorageHooks(storage, f"checkpoints/{unit.key}/{RESUME_FILE}")
    return finish_gold(unit, ctx, hooks)


def finish_gold(unit: planning.Unit, ctx: dict[str, Any], hooks: Any) -> dict[str, Any]:
    """Train (or resume) a gold network with `hooks`, then write its weights and losses."""
    from ..training import train_gold

    cfg, storage = _context(ctx)
    result = train_gold(unit.params["task"], ctx["data_root"], cfg.gold_network(), hooks=hooks,
                        splits=splits(cfg), unit=unit.key)
    final = hooks.last if hooks.last is not None else hooks.load()
    storage.write_bytes(planning.checkpoint_path(unit.key), torch_bytes(final))
    storage.write_losses(unit.key, result.losses)
    return {"steps": result.steps, "train_images": result.train_images,
            "final_loss": result.history[-1] if result.history else None}


def run_scratch(unit: planning.Unit, ctx: dict[str, Any]) -> dict[str, Any]:
    """Stage 1b: the scratch network of (target, regime), trained from pixels."""
    from ..training import train_scratch

    cfg, storage = _context(ctx)
    hooks = StorageHooks(storage, f"checkpoints/{unit.key}/{RESUME_FILE}")
    result = train_scratch(unit.params["target"], unit.params["regime"], ctx["data_root"],
                           cfg.scratch_network(), hooks=hooks, splits=splits(cfg),
                           subset_seed=cfg.seed, unit=unit.key)
    storage.write_losses(unit.key, result.losses)
    return {"steps": result.steps, "train_images": result.train_images}


EXECUTORS = {
    "gold": run_gold,
    "scratch": run_scratch,
}


def execute(unit: planning.Unit, ctx: dict[str, Any]) -> dict[str, Any]:
    """Run one unit of any stage."""
    return EXECUTORS[unit.stage](unit, ctx)
