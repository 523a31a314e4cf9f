"""Step 1's decoders, one per output kind, reading the (B, 8k, S/16, S/16) representation.

Dense outputs: two 3x3 convs at representation resolution, then four x2 upsampling stages back
to the input size (output stride 16). Vectors, distributions, classes and multi-view outputs: a
3x3 conv, then fully connected layers over the flattened map (multi-view: the views'
representations concatenated on channels, a siamese use of the one encoder).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..tasks import TaskSpec

UPSAMPLING_STAGES = 4  # 2**4 = the encoder's output stride
MIN_DECODER_CHANNELS = 8


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv, batch norm, ReLU: the decoders' building block."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
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
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv_bn_relu(c, nxt)]
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
