"""Stage 2b: the Taskonomy transfer function D_{s->t} on frozen, cached representations.

Readout: clip to mean +/- 5 sigma, batch norm, two parallel streams of two 3x3 convolutions with
8k channels (k sources concatenated channel-wise), concatenation, batch norm, then t's decoder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from .config import TransferConfig
from .errors import ConfigError, TrainingError
from .models import autocast, exact_float32_convolutions, init_output_bias
from .models.decoders import build_decoder
from .models.losses import per_image_loss
from .tasks import TaskSpec, get_task

Batch = dict[str, torch.Tensor]
InputFn = Callable[[torch.Tensor], torch.Tensor]  # sample indices -> readout input


def head_seed(target: str, sources: Sequence[str], regime: int, seed: int) -> int:
    """The initialisation seed of one transfer: the same whichever group it is trained in."""
    doc = json.dumps([target, list(sources), int(regime), int(seed)])
    return int.from_bytes(hashlib.sha256(doc.encode()).digest()[:4], "little")


def _conv_bn_relu(cin: int, cout: int, momentum: float) -> list[nn.Module]:
    # No conv bias before batch norm: BN cancels it, and Adam would turn its zero gradient's
    # rounding noise into full-size random steps (seen as heads drifting apart when fused).
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout, momentum=momentum), nn.ReLU(inplace=False)]


class Readout(nn.Module):
    """Clip, BN, two streams of two 3x3 convs (8k channels each), concatenation, BN."""

    def __init__(self, k: int, rep_channels: int = 8, momentum: float = 0.1) -> None:
        super().__init__()
        cin = cout = rep_channels * k  # Taskonomy: 8 channels per source
        self.out_channels = 2 * cout
        # Fixed clipping bounds per input channel, set from the training set by `set_clip`.
        self.register_buffer("lo", torch.full((1, cin, 1, 1), -torch.inf))
        self.register_buffer("hi", torch.full((1, cin, 1, 1), torch.inf))
        # 1 / sigma per input channel (`set_clip`), so batch norm's eps is negligible whatever
        # a source's scale: the random encoder's outputs (sigma ~1e-3, some channels 1e-6) were
        # damped by it into a near-constant input, which by fitting nothing beat trained sources.
        self.register_buffer("scale", torch.ones((1, cin, 1, 1)))
        self.bn_in = nn.BatchNorm2d(cin, momentum=momentum)
        self.stream_a = nn.Sequential(*_conv_bn_relu(cin, cout, momentum),
                                      *_conv_bn_relu(cout, cout, momentum))
        self.stream_b = nn.Sequential(*_conv_bn_relu(cin, cout, momentum),
                                      *_conv_bn_relu(cout, cout, momentum))
        self.bn_out = nn.BatchNorm2d(2 * cout, momentum=momentum)

    def set_clip(self, x: torch.Tensor, sigma: float) -> None:
        """Clip bounds mean +/- sigma std, and scale 1/std, per channel of training inputs.

        `x` is (N, [V,] C, h, w). A channel constant but for rounding (sigma below 1e-5 of its
        mean) or with a subnormal sigma keeps scale 1: its noise is not blown up to unit size.
        """
        x = x.reshape(-1, *x.shape[-3:]).float()
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True)
        self.lo.copy_(mean - sigma * std)
        self.hi.copy_(mean + sigma * std)
        inv = 1 / std
        spread = (std > 1e-5 * mean.abs()) & torch.isfinite(inv)
        self.scale.copy_(torch.where(spread, inv, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_in(torch.clamp(x, self.lo, self.hi) * self.scale)  # (B, 8k, h, w)
        return self.bn_out(torch.cat([self.stream_a(x), self.stream_b(x)], 1))  # (B, 16k, h, w)


class HeadDropout(nn.Module):
    """Dropout whose mask is a buffer drawn by the trainer from the head's own generator.

    Replaces the decoder's `nn.Dropout` in transfers: under vmap every head then gets its own
    mask, the same one it would draw trained alone (a shared RNG cannot give that).
    """

    def __init__(self, p: float, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.p = p
        self.register_buffer("mask", torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask if self.training else x


class TransferNet(nn.Module):
    """Readout plus the target's decoder; multi-view inputs are read view by view."""

    def __init__(self, target: TaskSpec, k: int, decoder: nn.Module, rep_channels: int = 8,
                 momentum: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        self.views = target.views
        self.readout = Readout(k, rep_channels, momentum)
        self.decoder = decoder
        self.seed = seed

    def forward(self, x: torch.Tensor) -> Any:
        if self.views == 1:
            return self.decoder(self.readout(x))  # (B, 8k, h, w) -> (B, 16k, h, w) -> output
        b, v = x.shape[:2]  # (B, V, 8k, h, w): the same readout on every view
        z = self.readout(x.reshape(b * v, *x.shape[2:]))  # (B*V, 16k, h, w)
        return self.decoder(z.reshape(b, v * z.shape[1], *z.shape[2:]))  # views on channels

    def dropouts(self) -> list[HeadDropout]:
        """The per-head dropout layers, in a fixed order."""
        return [m for m in self.modules() if isinstance(m, HeadDropout)]

    def mask_generator(self) -> torch.Generator:
        """The generator of this head's dropout masks (seeded per transfer)."""
        return torch.Generator().manual_seed(self.seed + 1)


def draw_masks(net: TransferNet, g: torch.Generator) -> list[torch.Tensor]:
    """One step's dropout masks of a head, scaled by 1 / (1 - p)."""
    return [(torch.rand(m.mask.shape, generator=g) >= m.p).float() / (1 - m.p)
            for m in net.dropouts()]


def _swap_dropout(net: TransferNet, example: torch.Tensor) -> None:
    """Replace every nn.Dropout with a HeadDropout shaped like its input at the training batch."""
    shapes: dict[str, tuple[int, ...]] = {}
    named = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Dropout)]
    if not named:
        return
    hooks = [m.register_forward_hook(lambda mod, a, out, n=n: shapes.__setitem__(n, a[0].shape))
             for n, m in named]
    with torch.no_grad():
        net.eval()
        net(example)
    for h in hooks:
        h.remove()
    for name, m in named:
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent), leaf, HeadDropout(m.p, tuple(shapes[name])))


def build_transfer_net(target: str, sources: Sequence[str], regime: int, model: Any,
                       cfg: TransferConfig, out_channels: int, n_train: int) -> TransferNet:
    """A freshly initialised transfer into `target` from `sources` (seeded per transfer).

    The decoder is the target's decoder architecture, randomly initialised (its output bias
    is set from the training labels when training starts, `start_at_label_mean`), not the gold
    network's trained decoder: that one was trained on the full training set, so starting from it
    would leak full supervision of t into every transfer and blur the differences between sources
    that the small regime is meant to reveal; it also reads t's own 8-channel representation, not
    the readout's 16k channels. The readout and decoder train together from this seed.
    """
    spec = get_task(target)
    k, seed = len(sources), head_seed(target, sources, regime, cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = build_decoder(spec, out_channels, model,
                                in_channels=2 * model.rep_channels * k * spec.views)
        if decoder is None:
            raise ConfigError(f"{target!r} has no output and cannot be a transfer target")
        net = TransferNet(spec, k, decoder, model.rep_channels, cfg.bn_momentum, seed)
    side, c = model.rep_size, model.rep_channels * k
    bs = min(cfg.batch_size, n_train)
    shape = (bs, c, side, side) if spec.views == 1 else (bs, spec.views, c, side, side)
    _swap_dropout(net, torch.zeros(shape))
    return net


def batches(n: int, cfg: TransferConfig) -> list[torch.Tensor]:
    """The training batches' sample indices: seeded epochs of shuffled indices, `steps` batches.

    Shared by every head of a fused group and by the same transfer trained alone.
    """
    if n < 2:
        raise ConfigError(f"a transfer needs at least 2 training images (batch norm), got {n}")
    g = torch.Generator().manual_seed(cfg.seed)
    bs = min(cfg.batch_size, n)
    out: list[torch.Tensor] = []
    perm = torch.randperm(n, generator=g)
    pos = 0
    while len(out) < cfg.steps:
        if pos + bs > n:  # drop the ragged tail: every batch has `bs` images (stable BN)
            perm, pos = torch.randperm(n, generator=g), 0
        out.append(perm[pos:pos + bs])
        pos += bs
    return out


@runtime_checkable
class LabelRows(Protocol):
    """Labels read a batch of rows at a time (see `labels.StreamedLabels`), never all at once."""

    def rows(self, idx: torch.Tensor) -> Batch: ...


Labels = Mapping[str, torch.Tensor] | LabelRows


def take(labels: Labels, idx: torch.Tensor, device: torch.device | None = None) -> Batch:
    """The rows `idx` of every label (labels stay on the CPU; batches move).

    Integer labels may be held in a narrow dtype (class ids fit uint8); batches are int64 again,
    as the losses expect.
    """
    rows = labels.rows(idx) if isinstance(labels, LabelRows) else {
        k: v[idx] for k, v in labels.items()}
    out = {}
    for k, v in rows.items():
        if not v.is_floating_point() and v.dtype != torch.bool:
            v = v.long()
        out[k] = v.to(device) if device is not None else v
    return out


def resolve_device(cfg: TransferConfig) -> torch.device:
    """The device transfers train on: `auto` picks CUDA when present."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("transfer.device is cuda but no CUDA device is visible; use auto or cpu")
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    exact_float32_convolutions()
    return torch.device("cuda")


def head_loss(target: str, out: torch.Tensor, batch: Batch, seed: int, step: int,
              images: Sequence[str] | None = None) -> torch.Tensor:
    """Per-image losses (B,) of one head's output at one training step, or at test (`images`).

    At test the metric loss's pixel pairs are fixed per image id (as for every network scored on
    that image); in training they are drawn from a generator seeded by (seed, step), so every
    head of a fused group and the same head alone see the same pairs.
    """
    spec = get_task(target)
    if images is not None:
        return per_image_loss(spec, out, {**batch, "image": list(images)}, deterministic=True)
    if spec.loss != "metric":
        return per_image_loss(spec, out, batch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + step)
        return per_image_loss(spec, out, batch)


def make_optimiser(params: Any, cfg: TransferConfig) -> torch.optim.Optimizer:
    """Adam with L2 weight decay; elementwise, so stacked heads update as they would alone.

    The fused (one-kernel) implementation: at paper scale a multi-view head's fully connected
    layers hold ~50 M weights, whose per-step update cost 12x more with the per-tensor loop.
    """
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


@torch.no_grad()
def start_at_label_mean(nets: Sequence[TransferNet], target: str, labels: Labels, n_train: int,
                        cfg: TransferConfig) -> None:
    """Start each decoder's output at the first training batch's mean label, as task nets do.

    Depth's log-scale labels sit near 7: from a zero bias a transfer spent its steps reaching
    that mean, and every transfer into depth lost to its gold network on every test image,
    whatever its source. (The same batch for every head: fused heads still end as if alone.)
    """
    first = take(labels, batches(n_train, cfg)[0], nets[0].readout.lo.device)
    for net in nets:
        init_output_bias(net.decoder, get_task(target), first)


def train_transfer(net: TransferNet, target: str, inputs: InputFn, labels: Labels, n_train: int,
                   cfg: TransferConfig) -> TransferNet:
    """Train one transfer alone: `inputs(idx)` gives the readout input of training samples idx.

    This is the reference the fused trainer must match, and (with `inputs` running a frozen
    encoder on images) the naive baseline of the benchmark.
    """
    start_at_label_mean([net], target, labels, n_train, cfg)
    net.train()
    opt = make_optimiser(net.parameters(), cfg)
    g = net.mask_generator()
    dev = net.readout.lo.device
    for step, idx in enumerate(batches(n_train, cfg)):
        for m, mask in zip(net.dropouts(), draw_masks(net, g)):
            m.mask.copy_(mask)
        x = inputs(idx).to(dev)  # made before autocast (a loader's ops must not be recast)
        with autocast(cfg.amp, dev):
            out = net(x)
        loss = head_loss(target, out.float(), take(labels, idx, dev), cfg.seed, step).mean()
        if not torch.isfinite(loss):
            raise TrainingError(f"transfer into {target}: non-finite loss at step {step}; "
                                "lower transfer.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net


@torch.no_grad()
def evaluate(net: TransferNet, target: str, inputs: InputFn, labels: Labels,
             images: Sequence[str], cfg: TransferConfig) -> np.ndarray:
    """Per-image test losses (len(images),) of one trained transfer."""
    net.eval()
    dev = net.readout.lo.device
    out = []
    for start in range(0, len(images), cfg.eval_batch_size):
        idx = torch.arange(start, min(len(images), start + cfg.eval_batch_size))
        ids = [images[i] for i in idx.tolist()]
        batch = take(labels, idx, dev)
        x = inputs(idx).to(dev)
        with autocast(cfg.amp, dev):
            pred = net(x).float()
        out.append(head_loss(target, pred, batch, cfg.seed, 0, ids).cpu())
    return torch.cat(out).float().numpy()
