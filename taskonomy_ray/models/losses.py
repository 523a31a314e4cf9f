"""Step 1's losses, one per task family, each returning one loss per image (B,).

Per-image losses feed the win rates of stage 2 and the evaluation, so no loss averages over the
batch here: callers take the mean to train.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
import torch.nn.functional as F

from ..tasks import TaskSpec

METRIC_PAIRS = 256  # pixel pairs sampled per image for the embedding loss
METRIC_MARGIN = 1.0  # pairs from different segments are pushed at least this far apart
UNCERTAIN_ID = 0  # segment_semantic: id 0 = uncertain, left out of the loss (layout.py)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over all but the batch axis, counting only pixels where `mask` (B, 1, H, W) holds."""
    if mask is None:
        return values.flatten(1).mean(1)
    m = mask.to(values.dtype).expand_as(values)
    return (values * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)


def _pairs(b: int, hw: int, images: list[str] | None) -> torch.Tensor:
    """(B, 2, P) pixel indices: random, or fixed per image id.

    Fixed pairs score every network evaluated on an image on the same pairs, whatever the batch.
    """
    if images is None:
        return torch.randint(0, hw, (b, 2, METRIC_PAIRS))
    gens = [torch.Generator().manual_seed(zlib.crc32(i.encode())) for i in images]
    return torch.stack([torch.randint(0, hw, (2, METRIC_PAIRS), generator=g) for g in gens])


def metric_loss(emb: torch.Tensor, ids: torch.Tensor,
                images: list[str] | None = None) -> torch.Tensor:
    """Contrastive loss over pixel pairs: same segment -> close, else >= margin apart."""
    b, d, h, w = emb.shape
    flat = emb.flatten(2)  # (B, D, HW)
    idx = _pairs(b, h * w, images).to(emb.device)
    ea = torch.gather(flat, 2, idx[:, :1].expand(b, d, -1))  # (B, D, P)
    eb = torch.gather(flat, 2, idx[:, 1:].expand(b, d, -1))
    same = torch.gather(ids.flatten(1), 1, idx[:, 0]) == torch.gather(ids.flatten(1), 1, idx[:, 1])
    dist2 = ((ea - eb) ** 2).sum(1)  # (B, P)
    apart = F.relu(METRIC_MARGIN - (dist2 + 1e-8).sqrt()) ** 2
    return torch.where(same, dist2, apart).mean(1)


def per_image_loss(spec: TaskSpec, pred: torch.Tensor, batch: dict[str, Any],
                   deterministic: bool = False) -> torch.Tensor:
    """(B,) losses of `pred` (the network's raw output) against `batch[spec.name]`.

    `deterministic` fixes the metric loss's pixel pairs per image id (for evaluation).
    """
    label = batch[spec.name].to(pred.device)
    mask = batch.get(f"{spec.name}_mask")
    mask = mask.to(pred.device) if mask is not None else None
    pred = pred.float()
    if spec.loss == "l1":  # dense regression on valid pixels
        return _masked_mean((pred - label).abs(), mask)
    if spec.loss == "l2":  # vectors (room layout, vanishing points, poses); curvature maps
        if pred.dim() == 4:
            return _masked_mean((pred - label) ** 2, mask)
        return ((pred - label) ** 2).mean(1)
    if spec.loss == "kl":  # class distributions: KL(label || softmax(pred))
        return (torch.xlogy(label, label) - label * F.log_softmax(pred, 1)).sum(1)
    if spec.loss == "metric":
        return metric_loss(pred, label, list(batch["image"]) if deterministic else None)
    if spec.loss == "cross_entropy":
        if pred.dim() == 2:  # one class per image: jigsaw, point_matching
            return F.cross_entropy(pred, label, reduction="none")
        step = label.shape[-1] // pred.shape[-1]  # coarser predictions: subsample the label
        label = label[:, ::step, ::step] if step > 1 else label
        ignore = UNCERTAIN_ID if "segment_semantic" in spec.domains else -100
        ce = F.cross_entropy(pred, label, reduction="none", ignore_index=ignore)  # (B, H, W)
        return _masked_mean(ce[:, None], (label != ignore)[:, None])
    raise ValueError(f"task {spec.name!r} has no loss ({spec.loss!r}); it is not trainable")
