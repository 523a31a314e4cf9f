"""Step 1's trainings as plain functions; Ray's runners only call these.

Gold-standard and scratch task networks, their per-image test losses, and the encoders the
transfer stage reads.

Checkpoints go through a small `Hooks` object (checkpoints.py), so the same loop runs with a
local directory, on run storage, or under Ray Train.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch import nn

from . import tables
from .checkpoints import Hooks, LocalHooks, load_checkpoint
from .config import ModelConfig, NetworkConfig, TrainConfig
from .dataset import SplitConfig, TaskonomyDataset, batches, output_channels
from .errors import ConfigError, DataError, TrainingError
from .models import (
    Encoder,
    TaskNetwork,
    autocast,
    build_task_network,
    exact_float32_convolutions,
    init_output_bias,
    load_weights,
    network_input,
    per_image_loss,
    represent,
)
from .models.encoder import random_encoder
from .replicas import Replica, all_agree, gather_rng_states, mean_over, parallel, replica
from .tasks import get_task


@dataclass
class TrainResult:
    """What a training returns: the network, its per-image test losses and its loss curve."""

    network: TaskNetwork
    losses: pa.Table | None  # LOSSES_SCHEMA rows per test image (None: `random`, rank > 0)
    history: list[float] = field(default_factory=list)  # training loss per step
    steps: int = 0
    seconds: float = 0.0
    train_images: int = 0


def resolve_device(cfg: TrainConfig) -> torch.device:
    """The device of `cfg.device` (auto: CUDA when available, on the current CUDA device).

    The current device is the launcher's choice for this process: Ray Train sets it to the GPU
    it assigned the worker (which need not be GPU `local_rank` of the node: other units may hold
    those); under torchrun, call `torch.cuda.set_device(local_rank)` first, as its docs ask.
    """
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is visible; use 'auto'")
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if not cuda:
        return torch.device("cpu")
    exact_float32_convolutions()
    return torch.device("cuda", torch.cuda.current_device())


def _optimiser(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimiser == "sgd":
        return torch.optim.SGD(params, cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimiser == "adamw" else torch.optim.Adam
    return cls(params, cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The learning-rate multiplier at `step`: linear warm-up, then constant or cosine to 0."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup) / span)))


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


@dataclass
class Cursor:
    """Where a training's stream of batches stands: its epoch, and batches of it already drawn."""

    epoch: int = 0
    batch: int = 0

    @classmethod
    def after(cls, step: int, data_size: int, cfg: TrainConfig) -> Cursor:
        """Where `step` uninterrupted steps leave it (checkpoints that did not record it)."""
        per_epoch = data_size // cfg.batch_size if data_size > cfg.batch_size else 1
        return cls(*divmod(step, per_epoch))


def _forever(data: TaskonomyDataset, cfg: TrainConfig, cursor: Cursor, rep: Replica
             ) -> Iterator[dict[str, Any]]:
    """Shuffled batches, epoch after epoch (each epoch's order fixed by seed and epoch).

    Starts where `cursor` stands and keeps it up to date, so a checkpoint can record it. Batches
    whose samples were all skipped are yielded too (empty), so that every replica counts the same
    batches and can agree to skip that step.
    """
    drop = len(data) > cfg.batch_size  # keep batch norm away from one-image batches
    while True:
        n, whole = 0, cursor.batch == 0
        for batch in batches(data, cfg.batch_size, shuffle=True,
                             seed=cfg.seed * 100003 + cursor.epoch, num_workers=cfg.num_workers,
                             drop_last=drop, shard=(rep.rank, rep.world), keep_empty=True,
                             skip=cursor.batch):
            cursor.batch += 1
            n += bool(batch["image"])
            yield batch
        if n == 0 and whole:  # every sample was skipped: stop instead of looping for ever
            raise DataError(f"no loadable sample in split {data.split!r} of {data.root}:\n"
                            f"{data.bad_file_report()}")
        cursor.epoch, cursor.batch = cursor.epoch + 1, 0


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The random generators a training step draws from (dropout, sampled pixel pairs)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _state(net: TaskNetwork, opt: torch.optim.Optimizer, step: int, history: list[float],
           model: ModelConfig, channels: int, cursor: Cursor, device: torch.device
           ) -> dict[str, Any]:
    return {"task": net.spec.name, "model": asdict(model), "channels": channels, "step": step,
            "history": list(history), "network": net.state_dict(), "optimiser": opt.state_dict(),
            "data": asdict(cursor), "rng": _rng_state(device)}


def train_network(net: TaskNetwork, data: TaskonomyDataset, cfg: NetworkConfig, *,
                  hooks: Hooks | None = None, unit: str = "", channels: int = 0
                  ) -> tuple[list[float], int]:
    """Train `net` on `data` for `cfg.train.steps` steps, resuming from `hooks.load()`.

    Parameters with requires_grad=False (a frozen encoder) stay fixed. Returns the loss per step
    (including steps before a resume) and the number of steps run in this call. Inside a
    torch.distributed process group the replicas train data-parallel: `train.batch_size` is the
    global batch, split among them; rank 0 saves the checkpoints, the others only report.
    """
    tc, spec, hooks = cfg.train, net.spec, hooks or LocalHooks()
    rep = replica()
    if len(data) < rep.world:  # (every replica sees this and stops: none waits on another)
        raise ConfigError(f"{spec.name}: split {data.split!r} has {len(data)} samples, fewer than "
                          f"the {rep.world} data-parallel replicas, so some would get none; "
                          "lower resources.gold_workers or add buildings")
    device = resolve_device(tc)
    net.to(device)
    if tc.channels_last:
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = _optimiser(net.parameters(), tc)
    step, history, saved = 0, [], hooks.load()
    # Replicas draw independent randomness (dropout, a metric loss's pixel pairs), as the one
    # process that trained the whole batch would; the weights start equal all the same (DDP).
    torch.manual_seed(tc.seed + rep.rank)
    cursor = Cursor()
    if saved is not None:  # continue as if never stopped: same next batch, same random draws
        load_weights(net, saved["network"], "the unit's resume checkpoint")
        opt.load_state_dict(saved["optimiser"])
        step, history = int(saved["step"]), list(saved["history"])
        cursor = (Cursor(**saved["data"]) if "data" in saved
                  else Cursor.after(step, len(data), tc))
        rngs = saved.get("rng_replicas") or [saved.get("rng")]  # (rank 0's state is `rng`)
        if rep.rank < len(rngs) and rngs[rep.rank] is not None:
            _set_rng_state(rngs[rep.rank], device)
        else:  # an older checkpoint, without this replica's random state
            torch.manual_seed(tc.seed + rep.rank + step)
    start = step
    it = _forever(data, tc, cursor, rep=rep)
    net.train()
    if not any(p.requires_grad for p in net.encoder.parameters()):
        net.encoder.eval()  # a frozen encoder keeps its batch-norm statistics too
    model: nn.Module | None = None
    while step < tc.steps:
        batch = next(it)
        if not all_agree(rep, batch, device):
            continue  # a replica's share was all skipped files: every replica skips the step
        if step == 0 and net.decoder is not None:
            init_output_bias(net.decoder, spec, batch)
        if model is None:
            model = parallel(net, rep, device)
        for group in opt.param_groups:
            group["lr"] = tc.lr * lr_factor(tc, step)
        with autocast(tc.amp, device):
            pred = model(_to(network_input(spec, batch), device, tc.channels_last))
        loss = per_image_loss(spec, pred, batch).mean()
        value = mean_over(loss, rep, device)
        if not math.isfinite(value):
            raise TrainingError(f"unit {unit or spec.name}: the {spec.name} loss became "
                                f"{value} at step {step}; lower train.lr or check the labels")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip:
            nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
        opt.step()
        step += 1
        history.append(value)
        metrics = {"unit": unit, "task": spec.name, "step": step, "loss": value}
        if step == tc.steps or (tc.checkpoint_every and step % tc.checkpoint_every == 0):
            # (a collective: every replica takes part)
            rngs = gather_rng_states(rep, _rng_state(device))
            if rep.rank == 0:
                state = _state(net, opt, step, history, cfg.model, channels, cursor, device)
                hooks.save({**state, **rngs}, metrics)
            else:
                hooks.report(metrics)  # Ray Train wants every worker to report; rank 0 keeps
        elif step % tc.log_every == 0:
            hooks.report(metrics)
    return history, step - start


@torch.no_grad()
def predict_losses(net: TaskNetwork, data: TaskonomyDataset, cfg: TrainConfig
                   ) -> tuple[list[str], torch.Tensor]:
    """(image ids, per-image losses) of `net` on every sample of `data`, in eval mode."""
    device = resolve_device(cfg)
    net.to(device).eval()
    images: list[str] = []
    losses: list[torch.Tensor] = []
    for batch in batches(data, cfg.eval_batch_size, num_workers=cfg.num_workers):
        with autocast(cfg.amp, device):
            pred = net(_to(network_input(net.spec, batch), device, cfg.channels_last))
        losses.append(per_image_loss(net.spec, pred, batch, deterministic=True).cpu())
        images += list(batch["image"])
    return images, torch.cat(losses) if losses else torch.zeros(0)


def network_dataset(task: str, root: str | Path, cfg: NetworkConfig, splits: SplitConfig,
                    on_bad_file: str = "error", **kw: Any) -> TaskonomyDataset:
    """One dataset of `task` as a network of `cfg` reads it (`kw`: split, subset, ...)."""
    return TaskonomyDataset(root, [task], **{
        "split": "train", "size": cfg.model.image_size, "on_bad_file": on_bad_file,
        "jigsaw_classes": cfg.model.jigsaw_classes, "splits": splits, **kw})


def network_datasets(task: str, root: str | Path, cfg: NetworkConfig, splits: SplitConfig,
                     on_bad_file: str = "error", **train_kw: Any
                     ) -> tuple[TaskonomyDataset, TaskonomyDataset]:
    """The (training, test) datasets a network of `task` is trained and scored on.

    `train_kw` overrides the training side (scratch networks: the regime's validation subset).
    """
    return (network_dataset(task, root, cfg, splits, on_bad_file, **train_kw),
            network_dataset(task, root, cfg, splits, on_bad_file, split="test"))


def _channels(task: str, root: str | Path, model: ModelConfig) -> int:
    return output_channels(task, root, jigsaw_classes=model.jigsaw_classes,
                           embedding_dim=model.embedding_dim)


def _run(task: str, root: str | Path, cfg: NetworkConfig, *, kind: str, sources: list[str],
         unit: str, hooks: Hooks | None, splits: SplitConfig, on_bad_file: str,
         encoder: Encoder | None = None, **train_kw: Any) -> TrainResult:
    """Build, train and evaluate one network: the shared body of gold, scratch and baselines."""
    t0 = time.perf_counter()
    spec = get_task(task)
    channels = _channels(task, root, cfg.model)
    net = build_task_network(task, cfg.model, channels, seed=cfg.train.seed)
    if spec.output == "none":  # the random encoder: saved, never trained, nothing to score
        hooks, metrics = hooks or LocalHooks(), {"unit": unit, "task": task, "step": 0}
        if replica().rank == 0:
            hooks.save({"task": task, "model": asdict(cfg.model), "channels": 0, "step": 0,
                        "history": [], "network": net.state_dict()}, metrics)
        else:
            hooks.report(metrics)
        return TrainResult(net, None, seconds=time.perf_counter() - t0)
    if encoder is not None:  # a frozen given encoder (the random-encoder baseline)
        net.encoder = encoder
    train, test = network_datasets(task, root, cfg, splits, on_bad_file, **train_kw)
    history, steps = train_network(net, train, cfg, hooks=hooks, unit=unit, channels=channels)
    if replica().rank != 0:  # data-parallel: the replicas are identical, rank 0 scores
        return TrainResult(net, None, history, steps, time.perf_counter() - t0, len(train))
    images, losses = predict_losses(net, test, cfg.train)
    table = tables.losses_table(unit, kind, task, sources, len(train), images, losses.numpy())
    return TrainResult(net, table, history, steps, time.perf_counter() - t0, len(train))


def train_gold(task: str, data_root: str | Path, cfg: NetworkConfig, *,
               hooks: Hooks | None = None, ckpt_dir: str | Path | None = None,
               splits: SplitConfig | None = None, unit: str | None = None,
               on_bad_file: str = "error") -> TrainResult:
    """The gold-standard network of `task`, trained on the training split.

    Scored per image on the test split (kind `gold`, sources ["self"]); resumes from `hooks` (or
    `ckpt_dir`), whose last save holds the finished network.
    """
    hooks = hooks or LocalHooks(ckpt_dir)
    return _run(task, data_root, cfg, kind="gold", sources=["self"], unit=unit or f"gold-{task}",
                hooks=hooks, splits=splits or SplitConfig(), on_bad_file=on_bad_file)


def train_scratch(target: str, regime: int, data_root: str | Path, cfg: NetworkConfig, *,
                  hooks: Hooks | None = None, ckpt_dir: str | Path | None = None,
                  splits: SplitConfig | None = None, subset_seed: int = 0,
                  unit: str | None = None, on_bad_file: str = "error") -> TrainResult:
    """The scratch network of (target, regime), the Gain baseline.

    The same architecture trained from pixels on the regime's subset of the validation split
    (kind `scratch`, sources ["pixels"]).
    """
    if get_task(target).source_only:
        raise ConfigError(f"{target!r} is source-only and has no scratch network")
    return _run(target, data_root, cfg, kind="scratch", sources=["pixels"],
                unit=unit or f"scratch-{target}-{regime}", hooks=hooks or LocalHooks(ckpt_dir),
                splits=splits or SplitConfig(), on_bad_file=on_bad_file, split="val",
                subset=regime, subset_seed=subset_seed)


def train_random_decoder(task: str, data_root: str | Path, cfg: NetworkConfig, *,
                         splits: SplitConfig | None = None, seed: int = 0,
                         unit: str | None = None) -> TrainResult:
    """A baseline: the fixed-seed random encoder, frozen, with `task`'s decoder trained.

    Trained on the training split, scored on the test split (kind `transfer`, sources ["random"]).
    """
    return _run(task, data_root, cfg, kind="transfer", sources=["random"],
                unit=unit or f"random-{task}", hooks=None, splits=splits or SplitConfig(),
                on_bad_file="error", encoder=random_encoder(cfg.model, seed))


def load_encoder(checkpoint: str | Path | dict[str, Any]) -> Encoder:
    """The frozen encoder of a task network's checkpoint (a path or a loaded state)."""
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    try:
        model = ModelConfig(**state["model"])
        weights = {k[len("encoder."):]: v for k, v in state["network"].items()
                   if k.startswith("encoder.")}
        enc = Encoder(model)
        enc.load_state_dict(weights)
    except (KeyError, TypeError, RuntimeError) as e:
        raise TrainingError(f"checkpoint of {state.get('task', '?')} holds no usable encoder "
                            f"({e}); re-run its gold training") from e
    enc.eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc


@torch.no_grad()
def encode(encoder: nn.Module, images: torch.Tensor | Iterable[torch.Tensor],
           batch_size: int = 64, device: str | torch.device = "cpu") -> torch.Tensor:
    """Representations (N, 8, h, w) of images (N, 3, S, S), computed in batches.

    `images` may also be an iterable of batches (a loader); view groups (N, V, 3, S, S) give
    (N, 8V, h, w). The result is on the CPU.
    """
    encoder.eval().to(device)
    chunks = (images.split(batch_size) if isinstance(images, torch.Tensor) else images)
    out = [represent(encoder, x.to(device)).float().cpu() for x in chunks]
    if not out:
        raise TrainingError("encode() got no images")
    return torch.cat(out)


__all__ = ["Hooks", "LocalHooks", "Replica", "TrainResult", "encode", "load_encoder",
           "predict_losses", "replica", "train_gold", "train_network", "train_random_decoder",
           "train_scratch"]
