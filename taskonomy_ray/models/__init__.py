"""Step 1's models: the shared encoder, a decoder per output kind, per-image losses."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import DataError
from ..tasks import TaskSpec, get_task
from .decoders import build_decoder
from .encoder import Encoder, random_encoder
from .losses import per_image_loss

__all__ = ["Encoder", "TaskNetwork", "autocast", "build_task_network",
           "exact_float32_convolutions", "init_output_bias", "load_weights", "network_input",
           "per_image_loss", "random_encoder", "represent"]


def autocast(amp: str, device: torch.device) -> Any:
    """bf16 autocast for an `amp` setting that is `on`, or `auto` on CUDA; float32 otherwise.

    One rule for gold, scratch and transfer trainings.
    """
    on = amp == "on" or (amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


def exact_float32_convolutions() -> None:
    """Run float32 convolutions on CUDA in IEEE float32, not TF32 (cuDNN's default in torch).

    TF32 keeps 10 of float32's 23 mantissa bits. bf16, with 7, moved per-image losses and win
    rates (the affinities' inputs) beyond float32's rounding floor (docs/benchmarks.md), so
    reduced precision is what the `amp` settings choose, explicitly, never a silent default.
    Matrix products are float32 already (torch's default).
    """
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9's API
        conv.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False


def load_weights(net: nn.Module, state: dict[str, Any], where: str) -> None:
    """Load a saved state into `net`, or say plainly that it belongs to another network layout.

    Checkpoints written before a layer change (for example the decoders' fused upsampling
    convolutions) no longer fit; the fix is to retrain that unit, not to read a stack trace.
    """
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        detail = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise DataError(
            f"{where} holds weights of another network layout ({detail[:200]}); it was written "
            "by another taskonomy-ray version or model config. Delete it to retrain that unit, "
            "or run into a fresh --storage") from None


def represent(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The representation of a batch: (B, 3, S, S) -> (B, 8, h, w).

    Multi-view (B, V, 3, S, S) -> (B, 8V, h, w): the views' maps concatenated on channels (siamese).
    """
    if x.dim() == 5:
        b, v = x.shape[:2]
        rep = encoder(x.flatten(0, 1))  # (B*V, 8, h, w)
        return rep.unflatten(0, (b, v)).flatten(1, 2)
    return encoder(x)


class TaskNetwork(nn.Module):
    """Encoder plus `spec`'s decoder; the `random` task has no decoder and returns the map."""

    def __init__(self, spec: TaskSpec, encoder: Encoder, decoder: nn.Module | None) -> None:
        super().__init__()
        self.spec, self.encoder, self.decoder = spec, encoder, decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rep = represent(self.encoder, x)
        return rep if self.decoder is None else self.decoder(rep)


def build_task_network(task: str, cfg: ModelConfig, channels: int, seed: int | None = None
                       ) -> TaskNetwork:
    """A fresh network for `task` with `channels` outputs (see `dataset.output_channels`).

    `random` gets the fixed-seed frozen encoder; a `seed` makes any initialisation repeatable.
    """
    spec = get_task(task)
    if spec.output == "none":
        return TaskNetwork(spec, random_encoder(cfg, 0 if seed is None else seed), None)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return TaskNetwork(spec, Encoder(cfg), build_decoder(spec, channels, cfg))


def network_input(spec: TaskSpec, batch: dict) -> torch.Tensor:
    """What the task network sees: the derived input (noisy, grey, masked, tiles) or rgb."""
    return batch.get(f"{spec.name}_input", batch["rgb"])


@torch.no_grad()
def init_output_bias(decoder: nn.Module, spec: TaskSpec, batch: dict) -> None:
    """Start the decoder's output at the batch's mean label (log class frequencies for classes).

    Labels such as depth in metres sit far from 0; with Adam's bounded steps the output layer
    would need hundreds of steps just to reach their mean, so short trainings start there.
    """
    last: Any = decoder.net[-1]  # the output conv or linear layer
    y = batch[spec.name]
    if spec.loss in ("l1", "l2"):
        y = y.float()
        mask = batch.get(f"{spec.name}_mask")
        per_channel = y.flatten(2) if y.dim() == 4 else y[..., None]  # (B, C, N)
        w = mask.flatten(2).float() if mask is not None else torch.ones_like(per_channel[:, :1])
        last.bias.copy_((per_channel * w).sum((0, 2)) / w.sum((0, 2)).clamp_min(1))
    elif spec.loss == "kl":
        last.bias.copy_(torch.log(y.float().mean(0) + 1e-3))
    elif spec.loss == "cross_entropy":
        counts = torch.bincount(y.flatten(), minlength=last.bias.numel())[: last.bias.numel()]
        last.bias.copy_(torch.log(counts.float() / counts.sum() + 1e-3))
