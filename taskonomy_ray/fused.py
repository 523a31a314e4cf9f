"""Stage 2b-c: a group of transfers trained as one batched module, and its per-image loss table.

The G heads (`grouped.fuse`) take one batch together, so one step updates every head; each head
ends as if trained alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from . import tables
from .beam import canonical
from .dataset import output_channels
from .errors import ConfigError, TrainingError
from .features import FeatureCache, imageset_name, open_imageset
from .grouped import fuse
from .labels import evaluation_labels, training_labels
from .memory import chunks, fit, source_limit
from .models import autocast
from .tasks import get_task
from .transfer import (
    Labels,
    TransferConfig,
    TransferNet,
    batches,
    build_transfer_net,
    draw_masks,
    head_loss,
    make_optimiser,
    resolve_device,
    start_at_label_mean,
    take,
)

StackedInputFn = Callable[[torch.Tensor], torch.Tensor]  # indices -> (G, B, ...) head inputs


def _head_losses(target: str, out: torch.Tensor, batch: Mapping[str, torch.Tensor], seed: int,
                 step: int, images: Sequence[str] | None = None) -> torch.Tensor:
    """Per-image losses (G, B) of stacked outputs (G, B, ...), each head's as if alone.

    The G heads' outputs are scored as one batch of G*B images against the labels repeated G
    times: losses are per image, so each equals the head's own. The metric loss, whose training
    pixel pairs are drawn per call, is scored head by head, every head on the same pairs.
    """
    g, b = out.shape[:2]
    if get_task(target).loss == "metric":
        return torch.stack([head_loss(target, o, dict(batch), seed, step, images)
                            for o in out.unbind(0)])
    tiled = {k: v.repeat(g, *[1] * (v.dim() - 1)) for k, v in batch.items()}
    ids = list(images) * g if images is not None else None
    return head_loss(target, out.flatten(0, 1), tiled, seed, step, ids).view(g, b)


class HeadsDiverged(TrainingError):
    """Heads of a fused group whose training loss turned non-finite: `heads` at `step`."""

    def __init__(self, message: str, heads: Sequence[int] = (), step: int = 0) -> None:
        super().__init__(message)
        self.heads, self.step = list(heads), step

    def __reduce__(self) -> tuple[Any, ...]:  # (Ray pickles errors: keep the fields)
        return type(self), (str(self), self.heads, self.step)


def train_fused(nets: Sequence[TransferNet], target: str, inputs: StackedInputFn,
                labels: Labels, n_train: int,
                cfg: TransferConfig) -> nn.Module:
    """Train every head of the group on the same batches: the sum of the heads' mean losses.

    Heads share no weights, so head i's gradient is that of its own loss alone; Adam's update is
    elementwise, so each head follows the trajectory it would follow trained alone.
    """
    start_at_label_mean(nets, target, labels, n_train, cfg)
    group = fuse(nets, cfg.fused_backend)
    group.train()
    opt = make_optimiser(group.parameters(), cfg)
    gens = [n.mask_generator() for n in nets]
    dev = next(group.parameters()).device
    for step, idx in enumerate(batches(n_train, cfg)):
        group.set_masks([draw_masks(n, g) for n, g in zip(nets, gens)])
        x = inputs(idx).to(dev)  # (G, B, ...): made before autocast, which would recast it
        with autocast(cfg.amp, dev):
            out = group(x).float()
        per_head = _head_losses(target, out, take(labels, idx, dev), cfg.seed, step).mean(1)
        if not torch.isfinite(per_head).all():
            bad = torch.nonzero(~torch.isfinite(per_head)).flatten().tolist()
            raise HeadsDiverged(f"fused transfers into {target}: non-finite loss at step {step} "
                                f"(heads {bad}); lower transfer.lr", bad, step)
        opt.zero_grad(set_to_none=True)
        per_head.sum().backward()
        opt.step()
    group.unstack(nets)
    return group


@torch.no_grad()
def evaluate_fused(group: nn.Module, target: str, inputs: StackedInputFn,
                   labels: Labels, images: Sequence[str],
                   cfg: TransferConfig) -> np.ndarray:
    """Per-image test losses (G, len(images)) of every head."""
    group.eval()
    dev = next(group.parameters()).device
    out = []
    for start in range(0, len(images), cfg.eval_batch_size):
        idx = torch.arange(start, min(len(images), start + cfg.eval_batch_size))
        ids = [images[i] for i in idx.tolist()]
        x, batch = inputs(idx).to(dev), take(labels, idx, dev)
        with autocast(cfg.amp, dev):
            pred = group(x).float()
        out.append(_head_losses(target, pred, batch, cfg.seed, 0, ids).cpu())
    return torch.cat(out, 1).float().numpy()


# ---------------------------------------------------------------- one unit of work


def stacked_inputs(feats: Mapping[str, torch.Tensor], source_sets: Sequence[Sequence[str]],
                   dtype: torch.dtype = torch.float32) -> StackedInputFn:
    """Head inputs from cached representations: k sources concatenated on channels, per head."""
    def inputs(idx: torch.Tensor) -> torch.Tensor:
        heads = [torch.cat([feats[s][idx] for s in ss], dim=-3) for ss in source_sets]
        return torch.stack(heads).to(dtype)  # (G, B, [V,] 8k, h, w)

    return inputs


def train_group(target: str, source_sets: Sequence[Sequence[str]], regime: int,
                train_feats: Mapping[str, torch.Tensor], train_labels: Labels,
                test_feats: Mapping[str, torch.Tensor], test_labels: Labels,
                test_images: Sequence[str], model: Any, cfg: TransferConfig, out_channels: int,
                diverged: dict[tuple[str, ...], str] | None = None
                ) -> list[tuple[tuple[str, ...], np.ndarray]]:
    """Train transfers of one order into `target`, fused in chunks of `cfg.max_heads`.

    Returns (sources, per-image test losses) per transfer, in the given order. A transfer whose
    training or test loss turns non-finite fails the group (TrainingError) unless `diverged` is
    given: then it is left out and named there with why, and its chunk trains again without
    it, from the same initialisation, so the others end as if trained alone all the same.
    """
    sets = [canonical(s) for s in source_sets]
    if len({len(s) for s in sets}) != 1 or len(set(sets)) != len(sets):
        raise ConfigError(f"a fused group takes distinct source sets of one order, got {sets}")
    n_train = len(next(iter(train_feats.values())))
    results = []
    for start in range(0, len(sets), cfg.max_heads):
        chunk = sets[start:start + cfg.max_heads]
        while chunk:
            try:
                results += _train_chunk(target, chunk, regime, train_feats, train_labels,
                                        test_feats, test_labels, test_images, model, cfg,
                                        out_channels, n_train, diverged)
                break
            except HeadsDiverged as e:
                if diverged is None:
                    raise
                for i in e.heads:
                    diverged[chunk[i]] = f"non-finite training loss at step {e.step}"
                chunk = [ss for i, ss in enumerate(chunk) if i not in e.heads]
    return results


def _train_chunk(target: str, chunk: Sequence[tuple[str, ...]], regime: int,
                 train_feats: Mapping[str, torch.Tensor], train_labels: Labels,
                 test_feats: Mapping[str, torch.Tensor], test_labels: Labels,
                 test_images: Sequence[str], model: Any, cfg: TransferConfig, out_channels: int,
                 n_train: int, diverged: dict[tuple[str, ...], str] | None
                 ) -> list[tuple[tuple[str, ...], np.ndarray]]:
    """One fused chunk trained and tested: (sources, test losses) of its finite heads."""
    nets = [build_transfer_net(target, ss, regime, model, cfg, out_channels, n_train)
            .to(resolve_device(cfg)) for ss in chunk]
    train_in = stacked_inputs(train_feats, chunk)
    every = torch.arange(n_train)
    for net, ss in zip(nets, chunk):  # one head at a time: (N, 8k, h, w) each
        x = stacked_inputs(train_feats, [ss])(every)[0]
        net.readout.set_clip(x.to(net.readout.lo.device), cfg.clip_sigma)
    group = train_fused(nets, target, train_in, train_labels, n_train, cfg)
    losses = evaluate_fused(group, target, stacked_inputs(test_feats, chunk), test_labels,
                            test_images, cfg)
    out = []
    for ss, loss in zip(chunk, losses):
        bad = int((~np.isfinite(loss)).sum())
        if not bad:
            out.append((ss, loss))
            continue
        why = f"non-finite test loss on {bad} of {len(loss)} test images"
        if diverged is None:
            raise TrainingError(f"transfer {'+'.join(ss)} -> {target}: {why}; lower transfer.lr")
        diverged[ss] = why
    return out


def train_transfer_group(target: str, source_sets: Sequence[Sequence[str]], regime: int,
                         cache: FeatureCache, data_root: str, cfg: TransferConfig, model: Any,
                         *, unit: str, splits: Any = None, subset_seed: int = 0,
                         diverged: dict[tuple[str, ...], str] | None = None) -> pa.Table:
    """One unit of work: train transfers into `target` (any orders) on the regime's subset.

    Reads representations from `cache` (each (source, image set) must be cached already) and the
    target's labels from `data_root`; returns every transfer's per-image test losses as one
    LOSSES_SCHEMA table (kind `transfer`, unit `unit`) for the caller to write atomically.
    With `diverged`, a transfer whose loss turns non-finite is left out and named there (see
    `train_group`); the unit fails only if every transfer does.
    """
    sets = [canonical(s) for s in source_sets]
    kw = {"image_size": model.image_size, "tasks": [target], "splits": splits,
          "subset_seed": subset_seed}
    train_set, test_set = imageset_name(target, regime), imageset_name(target, None)
    train_data = open_imageset(data_root, train_set, **kw)
    test_data = open_imageset(data_root, test_set, **kw)
    train_ids, test_ids = train_data.images, test_data.images
    train_labels = training_labels(train_data, target, cfg)
    channels = output_channels(target, data_root, jigsaw_classes=model.jigsaw_classes,
                               embedding_dim=model.embedding_dim)
    limit = source_limit(target, len(train_ids) + len(test_ids), model, cfg)
    parts = []
    for order in sorted({len(s) for s in sets}):
        group = [s for s in sets if len(s) == order]
        ocfg = fit(target, order, model, cfg, channels)  # chunk and test batch in device memory
        test_labels = evaluation_labels(test_data, target, ocfg)  # read in ocfg's test batches
        # Chunk by chunk, holding only the chunk's sources: a 16k first-order unit of a 3-view
        # target would otherwise hold 26 sources x 26k samples x 3 views (16.6 GB at paper scale).
        for chunk in chunks(group, ocfg.max_heads, limit):
            sources = sorted({s for ss in chunk for s in ss})
            train_feats = {s: torch.from_numpy(cache.load(s, train_set, train_ids))
                           for s in sources}
            test_feats = {s: torch.from_numpy(cache.load(s, test_set, test_ids)) for s in sources}
            try:
                results = train_group(target, chunk, regime, train_feats, train_labels,
                                      test_feats, test_labels, test_ids, model, ocfg, channels,
                                      diverged)
            except torch.OutOfMemoryError as e:
                raise TrainingError(
                    f"transfers into {target} of order {order} ({len(chunk)} heads at batch "
                    f"{ocfg.batch_size}, test batch {ocfg.eval_batch_size}) ran out of device "
                    f"memory: set transfer.device_memory_gb (now {cfg.device_memory_gb:g}, 0 = "
                    "no bound) to what the unit's share of the device holds, or raise "
                    "resources.gpus_per_unit; both may change on resume, finished units are "
                    "kept") from e
            for ss, losses in results:
                parts.append(tables.losses_table(unit, "transfer", target, ss, regime, test_ids,
                                                 losses))
            del train_feats, test_feats
            for s in sources:
                cache.forget(s, train_set)
                cache.forget(s, test_set)
    if not parts:
        why = "; ".join(f"{'+'.join(ss)}: {w}" for ss, w in (diverged or {}).items())
        raise TrainingError(f"every transfer of {unit} into {target} diverged ({why}); lower "
                            "transfer.lr")
    return pa.concat_tables(parts)
