"""Stage 2b-c: a group of transfers trained as one batched module, and its per-image loss table.

G heads become one module of grouped convolutions (or, for layers it cannot group, stacked weights
run with `torch.func.vmap`), so one batch updates every head; each head ends as if trained alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from . import tables
from .beam import canonical
from .dataset import output_channels
from .errors import ConfigError, TrainingError
from .features import FeatureCache, imageset_name, open_imageset
from .labels import evaluation_labels, training_labels
from .memory import chunks, fit, source_limit
from .models import autocast
from .models.decoders import DenseDecoder, UpConv2d, VectorHead
from .tasks import get_task
from .transfer import (
    HeadDropout,
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


def _mangle(name: str) -> str:
    return name.replace(".", "__")


class VmapTransfers(nn.Module):
    """G transfer heads of one architecture as one module: weights stacked on a leading axis.

    `forward(x)` takes (G, B, ...) inputs, one slice per head, and returns (G, B, ...) outputs.
    """

    def __init__(self, nets: Sequence[TransferNet]) -> None:
        super().__init__()
        params, buffers = stack_module_state(list(nets))
        self.param_names = list(params)
        self.buffer_names = list(buffers)
        for k, v in params.items():
            self.register_parameter(_mangle(k), nn.Parameter(v.detach().clone()))
        for k, v in buffers.items():
            self.register_buffer(_mangle(k), v.detach().clone())
        self.size = len(nets)
        base = copy.deepcopy(nets[0]).to("meta")  # shapes and code only; weights come stacked
        self._base = [base]  # a list, so the template is not a submodule

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        p = {k: getattr(self, _mangle(k)) for k in self.param_names}
        b = {k: getattr(self, _mangle(k)) for k in self.buffer_names}
        return p, b

    def forward(self, x: torch.Tensor) -> Any:
        base = self._base[0]
        base.train(self.training)

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xi: torch.Tensor) -> Any:
            return functional_call(base, (p, b), (xi,))

        p, b = self._state()
        return vmap(one)(p, b, x)

    def set_masks(self, masks: Sequence[Sequence[torch.Tensor]]) -> None:
        """Put head i's dropout masks (`masks[i]`, in `TransferNet.dropouts` order) in place."""
        names = [k for k in self.buffer_names if k.endswith(".mask")]
        for j, name in enumerate(names):
            getattr(self, _mangle(name)).copy_(torch.stack([m[j] for m in masks]))

    def unstack(self, nets: Sequence[TransferNet]) -> None:
        """Copy head i's weights and statistics into `nets[i]`."""
        p, b = self._state()
        for i, net in enumerate(nets):
            net.load_state_dict({k: v[i].detach().clone() for k, v in {**p, **b}.items()})


class NotGroupable(Exception):
    """A layer has no grouped counterpart here; the vmap backend runs such heads."""


class GroupLinear(nn.Module):
    """G linear layers at once: (B, G*in) -> (B, G*out), weights (G, out, in)."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g = x.shape[0], self.weight.shape[0]
        y = torch.einsum("bgi,goi->bgo", x.reshape(b, g, -1), self.weight) + self.bias
        return y.reshape(b, -1)  # head-major, like the convolutions' channels


# Layers that act on each channel alone (or have no weights): shared by all heads as they are.
SHARED = (nn.ReLU, nn.Upsample, nn.Identity, nn.MaxPool2d)
Link = tuple[str, nn.Module, str, str]  # head state key, grouped module, attribute, how split


def _cat(mods: Sequence[nn.Module], attr: str, dim: int = 0) -> torch.Tensor:
    return torch.cat([getattr(m, attr).detach() for m in mods], dim)


def group_layers(mods: Sequence[nn.Module], prefix: str, links: list[Link]) -> nn.Module:
    """The grouped counterpart of G equal layers; `links` records how to split it back per head.

    Channels are head-major: head g owns channels [g*C, (g+1)*C) of every grouped activation.
    """
    m0, g = mods[0], len(mods)
    like = next(iter(m0.parameters()), None)
    kw = {"device": like.device, "dtype": like.dtype} if like is not None else {}
    if isinstance(m0, nn.Sequential):
        return nn.Sequential(*[group_layers([m[i] for m in mods], f"{prefix}{i}.", links)
                               for i in range(len(m0))])
    if type(m0) in (nn.Conv2d, UpConv2d) and m0.padding_mode == "zeros":
        out = type(m0)(g * m0.in_channels, g * m0.out_channels, m0.kernel_size, m0.stride,
                       m0.padding, m0.dilation, g * m0.groups, m0.bias is not None, **kw)
        attrs = ["weight"] + (["bias"] if m0.bias is not None else [])
    elif isinstance(m0, nn.BatchNorm2d) and m0.affine and m0.track_running_stats:
        out = nn.BatchNorm2d(g * m0.num_features, m0.eps, m0.momentum, **kw)
        attrs = ["weight", "bias", "running_mean", "running_var"]
        out.num_batches_tracked.copy_(m0.num_batches_tracked)
        links.append((prefix + "num_batches_tracked", out, "num_batches_tracked", "same"))
    elif isinstance(m0, nn.Linear) and m0.bias is not None:
        out = GroupLinear(mods)  # type: ignore[arg-type]
        links += [(prefix + a, out, a, "stack") for a in ("weight", "bias")]
        return out
    elif isinstance(m0, HeadDropout):
        out = HeadDropout(m0.p, (m0.mask.shape[0], g * m0.mask[0].numel())).to(m0.mask)
        links.append((prefix + "mask", out, "mask", "cat1"))
        return out
    elif isinstance(m0, SHARED) or (isinstance(m0, nn.Flatten) and m0.start_dim == 1
                                    and m0.end_dim == -1):
        return copy.deepcopy(m0)  # flattening (B, G*C, h, w) keeps each head's block together
    elif type(m0) in (DenseDecoder, VectorHead) and [n for n, _ in m0.named_children()] == ["net"]:
        return group_layers([m.net for m in mods], prefix + "net.", links)  # forward = net(x)
    else:
        raise NotGroupable(f"no grouped form of {type(m0).__name__} ({prefix})")
    for a in attrs:
        with torch.no_grad():
            getattr(out, a).copy_(_cat(mods, a))
        links.append((prefix + a, out, a, "cat0"))
    return out


class GroupedTransfers(nn.Module):
    """G transfer heads as one module of grouped convolutions (channels-last on CPU).

    `forward(x)` takes (G, B, ...) inputs and returns (G, B, ...) outputs, like VmapTransfers.
    """

    def __init__(self, nets: Sequence[TransferNet]) -> None:
        super().__init__()
        self.size, self.views = len(nets), nets[0].views
        self.links: list[Link] = []
        r = [n.readout for n in nets]
        self.register_buffer("lo", _cat(r, "lo", 1))
        self.register_buffer("hi", _cat(r, "hi", 1))
        self.links += [("readout.lo", self, "lo", "cat1"), ("readout.hi", self, "hi", "cat1")]
        self.bn_in = group_layers([x.bn_in for x in r], "readout.bn_in.", self.links)
        self.stream_a = group_layers([x.stream_a for x in r], "readout.stream_a.", self.links)
        self.stream_b = group_layers([x.stream_b for x in r], "readout.stream_b.", self.links)
        self.bn_out = group_layers([x.bn_out for x in r], "readout.bn_out.", self.links)
        self.decoder = group_layers([n.decoder for n in nets], "decoder.", self.links)
        # Channels-last suits oneDNN's and cuDNN's grouped convolutions (3x faster backward on
        # CPU, measured); float64 has no such kernels, so it keeps the plain layout.
        dtype = nets[0].readout.lo.dtype
        self.layout = torch.preserve_format if dtype == torch.float64 else torch.channels_last
        self.to(memory_format=self.layout)

    def _readout(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_in(torch.clamp(x, self.lo, self.hi))  # (B, G*8k, h, w)
        a, b = self.stream_a(x), self.stream_b(x)  # (B, G*8k, h, w) each
        n, _, h, w = a.shape
        z = torch.cat([a.reshape(n, self.size, -1, h, w), b.reshape(n, self.size, -1, h, w)], 2)
        return self.bn_out(z.reshape(n, -1, h, w))  # per head [stream a, stream b]: (B, G*16k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, b = x.shape[:2]
        if self.views == 1:  # (G, B, C, h, w) -> (B, G*C, h, w)
            x = x.transpose(0, 1).reshape(b, -1, *x.shape[-2:])
            z = self._readout(x.contiguous(memory_format=self.layout))
        else:  # (G, B, V, C, h, w) -> (B*V, G*C, h, w); views to channels per head after
            v = x.shape[2]
            x = x.permute(1, 2, 0, 3, 4, 5).reshape(b * v, -1, *x.shape[-2:])
            z = self._readout(x.contiguous(memory_format=self.layout))
            z = z.reshape(b, v, g, -1, *z.shape[-2:]).transpose(1, 2).reshape(b, -1,
                                                                              *z.shape[-2:])
        y = self.decoder(z)  # (B, G*out, ...), channels-last for dense outputs
        if y.dim() == 2:
            return y.reshape(b, g, -1).transpose(0, 1)  # (G, B, out)
        # One copy into head-major (G, B, out, H, W); the gradient takes the same single copy
        # back into the channels-last layout the convolutions want.
        n, _, h, w = y.shape
        y = y.permute(0, 2, 3, 1).reshape(n, h, w, g, -1).permute(3, 0, 4, 1, 2)
        return y.contiguous()

    def set_masks(self, masks: Sequence[Sequence[torch.Tensor]]) -> None:
        """Put head i's dropout masks (`masks[i]`, in `TransferNet.dropouts` order) in place."""
        drops = [m for m in self.modules() if isinstance(m, HeadDropout)]
        for j, d in enumerate(drops):
            d.mask.copy_(torch.cat([m[j] for m in masks], 1))

    def unstack(self, nets: Sequence[TransferNet]) -> None:
        """Copy head i's weights and statistics into `nets[i]`."""
        for i, net in enumerate(nets):
            state = {}
            for key, mod, attr, how in self.links:
                t = getattr(mod, attr).detach()
                if how == "same":
                    state[key] = t.clone()
                elif how == "stack":
                    state[key] = t[i].clone()
                else:
                    state[key] = t.chunk(self.size, 0 if how == "cat0" else 1)[i].clone()
            net.load_state_dict(state)


def fuse(nets: Sequence[TransferNet], backend: str = "auto") -> nn.Module:
    """One batched module for `nets`: grouped convolutions, or vmap where a layer cannot group."""
    shapes = [{k: v.shape for k, v in n.state_dict().items()} for n in nets]
    if not nets or any(s != shapes[0] for s in shapes):
        raise ConfigError("a fused group needs one or more transfers of one architecture "
                          "(same target, same order); split the group by order")
    if backend in ("auto", "grouped"):
        try:
            return GroupedTransfers(nets)
        except NotGroupable:
            if backend == "grouped":
                raise
    return VmapTransfers(nets)


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
