"""Gold networks as Ray Train runs: one `TorchTrainer` per task, resumable by name.

Each run is named by its unit key under `<storage>/ray_train/`; re-creating the trainer with the
same storage path and name (after a crash, a lost node or a killed driver) resumes it from its
last reported checkpoint (Ray Train V2).
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ..checkpoints import CHECKPOINT_FILE, load_checkpoint
from ..errors import TrainingError
from ..tables import Storage
from . import config as sweep_config
from . import plan as planning
from .runner import NodeLostError, causes

# How long a failed run waits for Ray to declare a silent worker's node dead (Ray's own health
# checks take about 15 s by default) before calling the failure a crash.
NODE_DEATH_WAIT_S = 60.0


class RayTrainHooks:
    """Training hooks backed by `ray.train.report` checkpoints (see `checkpoints.Hooks`)."""

    def __init__(self) -> None:
        self.last: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        """The run's latest checkpoint when Ray Train resumed it, else None."""
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            self.last = load_checkpoint(Path(d) / CHECKPOINT_FILE)
        return self.last

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        """Report a checkpoint to Ray Train (which persists it to the run's storage)."""
        import torch

        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / CHECKPOINT_FILE)
            ray.train.report(_numbers(metrics), checkpoint=Checkpoint.from_directory(d))
        self.last = state

    def report(self, metrics: dict[str, Any]) -> None:
        """Metrics without a checkpoint."""
        ray.train.report(_numbers(metrics))


def _numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}


def _loop(config: dict[str, Any]) -> None:
    from .units import check_gpu_visible, finish_gold

    unit = planning.Unit.from_json(config["unit"])
    check_gpu_visible(unit)  # a trainer worker given a GPU it cannot see would train on CPU
    info = finish_gold(unit, config["ctx"], RayTrainHooks())
    # Result.metrics holds the last checkpoint's metrics, so the unit's own summary goes to
    # storage for fit_gold to return (from rank 0, which wrote the unit's outputs).
    if ray.train.get_context().get_world_rank() == 0:
        Storage(config["ctx"]["storage"]).write_json(_summary(unit), info)


def fit_gold(unit: planning.Unit, ctx: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) the gold training of `unit` as a TorchTrainer run; returns its metrics.

    With `resources.gold_workers` > 1 the run is data-parallel (DistributedDataParallel over
    the workers TorchTrainer starts; `train.batch_size` is the global batch).
    """
    cfg = sweep_config.from_dict(ctx["config"])
    r = cfg.resources
    gpus = r.gold_gpus_per_worker
    per_worker = {"CPU": r.gold_cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"unit": unit.to_json(), "ctx": ctx},
        scaling_config=ScalingConfig(num_workers=r.gold_workers, use_gpu=gpus > 0,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(
            storage_path=Storage(ctx["storage"]).uri_for("ray_train"), name=unit.key,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # No restarts inside the run: a deterministic error would recur on each, and the
            # scheduler's retry of this unit resumes the same run (same name) from its last
            # checkpoint, so resources.retries stays the one retry count. (A node drained for
            # preemption is Ray Train's to restart from the last checkpoint, without limit:
            # FailureConfig.max_preemption_failures keeps its default, -1.)
            failure_config=FailureConfig(max_failures=0)),
    )
    alive_at_start = _alive_nodes()
    try:
        result = trainer.fit()
        error = result.error
    except Exception as e:  # Ray Train raises its own wrapper around the loop's error
        error = e
    if error is not None:
        ours = _our_error(error)
        if ours is not None:  # deterministic: the same error would recur on retry
            raise TrainingError(f"gold training {unit.key} failed: {ours}") from error
        lost = _lost_node(error, alive_at_start)
        if lost is not None:  # not the run's fault: retried without spending resources.retries
            raise NodeLostError(f"gold training {unit.key}: the node {lost} of one of its workers "
                                "was lost (preempted, crashed or removed); a retry resumes from "
                                "the last checkpoint") from error
        raise error
    return Storage(ctx["storage"]).read_json(_summary(unit))


def _alive_nodes() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def _lost_node(error: BaseException, alive_at_start: set[str],
               wait_s: float = NODE_DEATH_WAIT_S) -> str | None:
    """The node whose loss failed the run, if one did, else None.

    That is a node of the run's workers (named in Ray Train's error) or, when the error names
    none, any node alive at the start, that Ray now reports dead. Ray Train sees a lost worker
    as a failed health check, often before Ray has declared the node dead, so this waits up to
    `wait_s` for that verdict.
    """
    named = set(re.findall(r"node_id='([0-9a-f]+)'", str(error))) & alive_at_start
    watch = named or alive_at_start
    deadline = time.monotonic() + wait_s
    while True:
        dead = sorted(watch - _alive_nodes())
        if dead or time.monotonic() > deadline:
            return dead[0] if dead else None
        time.sleep(1.0)


def _summary(unit: planning.Unit) -> str:
    return f"checkpoints/{unit.key}/summary.json"


def _our_error(error: BaseException) -> BaseException | None:
    """The TaskonomyError inside Ray Train's wrappers, if the loop raised one."""
    from ..errors import TaskonomyError

    return next((e for e in causes(error) if isinstance(e, TaskonomyError)), None)
