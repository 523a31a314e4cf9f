"""What one transfer unit holds: host bytes (cached representations, labels) and device bytes.

Device bytes are counted from the fused heads themselves, built at the workflow's sizes: the
weights with their gradients and Adam moments, the activations a training step saves for its
backward pass (counted with autograd's saved-tensor hooks on a two-head, two-image step and
scaled), and the largest pair of tensors alive at once while a test batch is scored; budgets
are met with a measured MARGIN for what the count misses. The CUDA context (~0.5-1 GB per
process) comes on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from .config import ModelConfig, TransferConfig
from .errors import ConfigError
from .features import DTYPES
from .tasks import TASKS, get_task

GB = 1e9
ADAM_COPIES = 4  # weight, gradient, two moments (float32 each)
# Measured peaks over the counted bytes (benchmarks/bench_memory.py, paper-scale chunks on a CPU):
# 1.0 for vector heads, 1.2-1.4 for dense ones (gradients of the full-resolution maps during the
# backward pass, the loss's temporaries). Budgets are met with this margin.
MARGIN = 1.4


@dataclass(frozen=True)
class HeadCost:
    """Bytes of one head of a fused group: fixed, and per image of a batch."""

    weights: int  # weights, gradients and Adam moments
    train_per_image: int  # activations saved for backward by one training step
    eval_per_image: int  # the largest tensors alive at once in a no-grad forward pass


@dataclass(frozen=True)
class UnitMemory:
    """Estimated bytes of one fused transfer unit (its largest chunk of heads)."""

    features: int  # host: the chunk's sources' cached representations (training and test sets)
    labels: int  # host: the regime's labels when held (0 when streamed batch by batch)
    weights: int  # device: the chunk's heads, with gradients and Adam moments
    training: int  # device: one training step's saved activations
    evaluation: int  # device: one evaluation batch
    heads: int  # heads in the largest chunk
    test_batch: int  # test samples scored per batch

    @property
    def host(self) -> int:
        """Bytes held in the unit's process outside the device."""
        return self.features + self.labels

    @property
    def device(self) -> int:
        """Bytes on the device at the busiest moment (training or scoring), with the MARGIN."""
        return int(MARGIN * (self.weights + max(self.training, self.evaluation)))


def label_bytes(target: str, image_size: int, channels: int) -> int:
    """Bytes of one sample's label as a unit holds it (class ids compacted, masks as bytes)."""
    spec = get_task(target)
    pixels = image_size * image_size
    if spec.output == "pixel_classes":
        size = pixels * (1 if channels <= 255 else 2)
    elif spec.dense:
        size = pixels * channels * 4
    else:
        size = channels * 4
    return size + (pixels if spec.masked else 0)


def head_cost(target: str, order: int, model: ModelConfig, out_channels: int) -> HeadCost:
    """One head's bytes, measured on the CPU: a float32 group of 2 heads, 2 images per batch.

    Targets whose heads are built alike (output kind, views) share one measurement.
    """
    spec = get_task(target)
    like = next(t.name for t in TASKS if not t.source_only and (t.output, t.views, t.derived)
                == (spec.output, spec.views, spec.derived))
    return _head_cost(like, order, model, out_channels)


@lru_cache(maxsize=128)
def _head_cost(target: str, order: int, model: ModelConfig, out_channels: int) -> HeadCost:
    from .grouped import fuse
    from .transfer import build_transfer_net

    spec = get_task(target)
    heads, batch = 2, 2
    with torch.random.fork_rng(devices=[]):
        nets = [build_transfer_net(target, ["autoencoding"] * order, 2, model, TransferConfig(),
                                   out_channels, batch) for _ in range(heads)]
        group = fuse(nets, "grouped").float()
    params = {p.untyped_storage().data_ptr() for p in group.parameters()}
    side, c = model.rep_size, model.rep_channels * order
    lead = (heads, batch) if spec.views == 1 else (heads, batch, spec.views)
    x = torch.randn(*lead, c, side, side)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    group.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = group(x)
    # The loss keeps about two output-sized tensors (e.g. log-softmax and its input).
    train = sum(saved.values()) + 2 * out.numel() * out.element_size()
    group.eval()
    peak = [0]

    def widest(mod: nn.Module, args: Sequence[Any], result: Any) -> None:
        alive = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                 for t in (*args, result) if isinstance(t, torch.Tensor)}
        peak[0] = max(peak[0], sum(alive.values()))  # in-place layers: one tensor, not two

    hooks = [m.register_forward_hook(widest) for m in group.modules()
             if not list(m.children())]
    with torch.no_grad():
        group(x)
    for h in hooks:
        h.remove()
    n_params = sum(p.numel() for p in group.parameters()) // heads
    return HeadCost(weights=n_params * 4 * ADAM_COPIES,
                    train_per_image=train // (heads * batch),
                    eval_per_image=peak[0] // (heads * batch))


def fit(target: str, order: int, model: ModelConfig, cfg: TransferConfig,
        out_channels: int) -> TransferConfig:
    """`cfg` with heads per chunk and test batch lowered to fit `cfg.device_memory_gb`.

    Neither changes a result (each head equals itself trained alone; test losses are per image).
    """
    if not cfg.device_memory_gb:
        return cfg
    budget = cfg.device_memory_gb * GB / MARGIN
    cost = head_cost(target, order, model, out_channels)
    per_head = cost.weights + cfg.batch_size * cost.train_per_image
    heads = min(cfg.max_heads, int(budget // per_head))
    if heads < 1:
        raise ConfigError(
            f"transfer.device_memory_gb {cfg.device_memory_gb:g} cannot hold one transfer into "
            f"{target} of order {order} (~{per_head / GB:.1f} GB at batch {cfg.batch_size}): "
            "raise it (and the GPU share, resources.gpus_per_unit) or lower transfer.batch_size")
    left = budget - heads * cost.weights
    evals = max(1, min(cfg.eval_batch_size, int(left // (heads * max(1, cost.eval_per_image)))))
    return replace(cfg, max_heads=heads, eval_batch_size=evals)


def source_bytes(target: str, samples: int, model: ModelConfig, cfg: TransferConfig) -> int:
    """Bytes of one source's cached representations of `samples` samples of `target`'s sets."""
    rep = model.rep_channels * model.rep_size**2 * get_task(target).views
    return samples * rep * DTYPES[cfg.feature_dtype]().itemsize


def source_limit(target: str, samples: int, model: ModelConfig, cfg: TransferConfig
                 ) -> int | None:
    """Sources a chunk may hold within `cfg.feature_memory_gb` (None: no bound)."""
    if not cfg.feature_memory_gb:
        return None
    return int(cfg.feature_memory_gb * GB // source_bytes(target, samples, model, cfg))


def chunks(source_sets: Sequence[Sequence[str]], max_heads: int, max_sources: int | None = None
           ) -> list[list[Sequence[str]]]:
    """Consecutive chunks of at most `max_heads` source sets and `max_sources` distinct sources."""
    out: list[list[Sequence[str]]] = []
    held: set[str] = set()
    for ss in source_sets:
        if max_sources is not None and len(set(ss)) > max_sources:
            raise ConfigError(f"transfer.feature_memory_gb holds the representations of "
                              f"{max_sources} sources, a transfer from {list(ss)} needs "
                              f"{len(set(ss))}: raise it")
        if not out or len(out[-1]) >= max_heads or (
                max_sources is not None and len(held | set(ss)) > max_sources):
            out.append([])
            held = set()
        out[-1].append(ss)
        held |= set(ss)
    return out


def unit_memory(target: str, source_sets: Sequence[Sequence[str]], n_train: int, n_test: int,
                model: ModelConfig, cfg: TransferConfig, out_channels: int) -> UnitMemory:
    """Estimated bytes of a fused unit of transfers into `target` (one order's source sets).

    The unit trains its transfers chunk by chunk (`chunks`: at most `max_heads`, fewer where
    `device_memory_gb` or `feature_memory_gb` ask) and holds only a chunk's sources.
    """
    order = max(len(s) for s in source_sets)
    cfg = fit(target, order, model, cfg, out_channels)
    parts = chunks(source_sets, cfg.max_heads,
                   source_limit(target, n_train + n_test, model, cfg))
    heads = max(len(c) for c in parts)
    sources = max(len({s for ss in c for s in ss}) for c in parts)
    features = sources * source_bytes(target, n_train + n_test, model, cfg)
    labels = n_train * label_bytes(target, model.image_size, out_channels)
    held = labels if labels <= cfg.label_memory_gb * 1024**3 else 0
    cost = head_cost(target, order, model, out_channels)
    test_batch = min(cfg.eval_batch_size, n_test)
    return UnitMemory(features=features, labels=held, weights=heads * cost.weights,
                      training=heads * min(cfg.batch_size, n_train) * cost.train_per_image,
                      evaluation=heads * test_batch * cost.eval_per_image, heads=heads,
                      test_batch=test_batch)
