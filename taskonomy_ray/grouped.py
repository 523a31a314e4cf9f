"""G transfer heads of one architecture as one batched module (stage 2b's fused form).

Grouped convolutions where every layer has a grouped counterpart, otherwise stacked weights run
with `torch.func.vmap`; either way each head's channels or slice stay its own.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .errors import ConfigError
from .models.decoders import DenseDecoder, UpConv2d, VectorHead
from .transfer import HeadDropout, TransferNet


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
        self.register_buffer("scale", _cat(r, "scale", 1))
        self.links += [(f"readout.{a}", self, a, "cat1") for a in ("lo", "hi", "scale")]
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
        x = self.bn_in(torch.clamp(x, self.lo, self.hi) * self.scale)  # (B, G*8k, h, w)
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
