"""Step 1's decoders, one per output kind, reading the (B, 8k, S/16, S/16) representation.

Dense outputs: two 3x3 convs at representation resolution, then four x2 upsampling stages back
to the input size (output stride 16), each a nearest-neighbour x2 upsampling and a 3x3 conv,
computed exactly but at 4/9 of the cost as one transposed convolution (`UpConv2d`). Vectors,
distributions, classes and multi-view outputs: a 3x3 conv, then fully connected layers over the
flattened map (multi-view: the views' representations concatenated on channels, a siamese use of
the one encoder).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..tasks import TaskSpec

UPSAMPLING_STAGES = 4  # 2**4 = the encoder's output stride
MIN_DECODER_CHANNELS = 8


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv, batch norm, ReLU: the decoders' building block."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _phase_taps(w: torch.Tensor, dim: int) -> torch.Tensor:
    """3 taps (w0, w1, w2) along `dim` -> 4: (w2, w1 + w2, w0 + w1, w0).

    After nearest x2 upsampling, an even output pixel's 3x3 window reads source pixels (i-1, i, i)
    and an odd one's (i, i, i+1); summing the taps that read the same source pixel gives each
    output phase a 2-tap kernel, and a stride-2 transposed convolution with these 4 taps produces
    every phase at once.
    """
    a, b, c = w.unbind(dim)
    return torch.stack([c, b + c, a + b, a], dim)


class UpConv2d(nn.Conv2d):
    """Nearest x2 upsampling then a 3x3 conv (stride 1, padding 1), as one transposed conv.

    The same function and the same 3x3 parameters as `nn.Upsample(2)` + `nn.Conv2d(.., 3, 1, 1)`,
    up to rounding, at 4 instead of 9 multiply-adds per output pixel and without materialising
    the upsampled map. Grouped forms (fused transfers) keep `groups`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any = 3,
                 stride: Any = 1, padding: Any = 1, dilation: Any = 1, groups: int = 1,
                 bias: bool = True, padding_mode: str = "zeros", device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device, dtype)
        if (self.kernel_size, self.stride, self.padding, self.dilation, self.padding_mode) != (
                (3, 3), (1, 1), (1, 1), (1, 1), "zeros"):
            raise ValueError("UpConv2d is a 3x3 conv with stride 1, zero padding 1, dilation 1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = _phase_taps(_phase_taps(self.weight, 2), 3)  # (G*out, in/G, 4, 4)
        g, cout, cin = self.groups, self.out_channels // self.groups, k.shape[1]
        # conv_transpose2d wants (in, out/G, kH, kW): per group, swap the channel axes.
        k = k.reshape(g, cout, cin, 4, 4).transpose(1, 2).reshape(g * cin, cout, 4, 4)
        return F.conv_transpose2d(x, k, self.bias, stride=2, padding=1, groups=g)


def upconv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """x2 upsampling, 3x3 conv, batch norm, ReLU: a dense decoder's upsampling stage."""
    return nn.Sequential(UpConv2d(cin, cout, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DenseDecoder(nn.Module):
    """(B, Cin, h, w) -> (B, Cout, 16h, 16w): per-pixel values, class logits or embeddings."""

    def __init__(self, in_channels: int, out_channels: int, cfg: ModelConfig,
                 stages: int = UPSAMPLING_STAGES) -> None:
        super().__init__()
        c = cfg.decoder_width
        layers: list[nn.Module] = [conv_bn_relu(in_channels, c), conv_bn_relu(c, c)]
        for _ in range(stages):
            nxt = max(MIN_DECODER_CHANNELS, c // 2)
            layers.append(upconv_bn_relu(c, nxt))
            c = nxt
        layers.append(nn.Conv2d(c, out_channels, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, rep: torch.Tensor) -> torch.Tensor:
        return self.net(rep)


class VectorHead(nn.Module):
    """(B, Cin, h, w) -> (B, Cout): a vector, logits of classes or of a distribution."""

    def __init__(self, in_channels: int, out_channels: int, cfg: ModelConfig) -> None:
        super().__init__()
        side, hidden = cfg.rep_size, cfg.head_width
        c = max(in_channels, cfg.rep_channels)
        self.net = nn.Sequential(
            conv_bn_relu(in_channels, c), nn.Flatten(),  # (B, c*h*w)
            nn.Linear(c * side * side, hidden), nn.ReLU(inplace=True), nn.Dropout(0.2),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, out_channels),
        )

    def forward(self, rep: torch.Tensor) -> torch.Tensor:
        return self.net(rep)


def build_decoder(spec: TaskSpec, out_channels: int, cfg: ModelConfig,
                  in_channels: int | None = None) -> nn.Module | None:
    """The decoder of `spec`'s output kind; None for `random` (no output).

    `in_channels` defaults to the representation's channels times the task's views; the transfer
    readouts pass their own width.
    """
    if spec.output == "none":
        return None
    cin = in_channels if in_channels is not None else cfg.rep_channels * spec.views
    if spec.dense:
        # Colour bins are predicted at a quarter of the input resolution, as Zhang et al. do;
        # the loss subsamples the label to match.
        stages = UPSAMPLING_STAGES - 2 if spec.derived == "colorize" else UPSAMPLING_STAGES
        return DenseDecoder(cin, out_channels, cfg, stages)
    return VectorHead(cin, out_channels, cfg)
