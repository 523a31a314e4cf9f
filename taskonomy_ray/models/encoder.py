"""Step 1's shared encoder: Taskonomy's fully convolutional ResNet-50 (256x256 RGB -> 16x16x8).

ResNet v1 bottleneck stages [3, 4, 6, 3] after a 7x7/2 conv and a 3x3/2 max-pool. As in the
paper's TF-slim code, a stage's stride sits in the 3x3 conv of its last unit; stages 1 and 2 halve
the resolution, stages 3 and 4 keep it (output stride 16, no global pooling), and a final 3x3 conv
with batch norm and ReLU compresses the 2048 channels to 8.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig

EXPANSION = 4  # bottleneck output channels = 4 x its inner width (ResNet v1)
STAGE_STRIDES = (2, 2, 1, 1)  # Taskonomy: the third stage keeps stride 1, and so does the fourth


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                               nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand, plus the identity or a projected shortcut."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * EXPANSION
        self.body = nn.Sequential(
            _conv_bn(cin, width, 1), _conv_bn(width, width, 3, stride),
            _conv_bn(width, cout, 1, relu=False),
        )
        self.shortcut: nn.Module = nn.Identity()
        if cin != cout:  # projection on the first unit of a stage
            self.shortcut = _conv_bn(cin, cout, 1, stride, relu=False)
        elif stride != 1:  # TF-slim subsamples the identity of a strided last unit
            self.shortcut = nn.MaxPool2d(1, stride)
        self.relu = nn.ReLU(inplace=True)
        # Each residual branch starts at zero (last batch norm's scale 0), so the deep trunk
        # starts close to its shortcuts and trains fast (Goyal et al. 2017).
        nn.init.zeros_(self.body[2][1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class Encoder(nn.Module):
    """The trunk plus the 8-channel compression: (B, 3, S, S) -> (B, 8, S/16, S/16)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.stem = nn.Sequential(_conv_bn(3, w, 7, 2), nn.MaxPool2d(3, 2, 1))  # /4
        stages, cin = [], w
        for i, (units, stride) in enumerate(zip(cfg.blocks, STAGE_STRIDES)):
            width = w * 2**i
            blocks = []
            for u in range(units):  # stride in the last unit, as TF-slim's resnet_v1
                blocks.append(Bottleneck(cin, width, stride if u == units - 1 else 1))
                cin = width * EXPANSION
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.compress = _conv_bn(cin, cfg.rep_channels, 3)
        self.trunk_channels = cin

    def trunk_parameters(self) -> int:
        """Parameters of the ResNet trunk (stem and stages, without the 8-channel compression)."""
        return sum(p.numel() for m in (self.stem, self.stages) for p in m.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, w, S/4, S/4)
        x = self.stages(x)  # (B, 32w, S/16, S/16)
        return self.compress(x)  # (B, 8, S/16, S/16)


def random_encoder(cfg: ModelConfig, seed: int = 0) -> Encoder:
    """The `random` source: an encoder initialised from a fixed seed, frozen, never trained."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = Encoder(cfg)
    enc.eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc
