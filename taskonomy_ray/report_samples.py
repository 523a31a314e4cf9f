"""Step 1 in the report: each gold network's prediction on a few test images, beside the truth.

Loads the sweep's gold checkpoints from storage and the test split of its dataset, runs each
network once on `n` images, and turns outputs and labels into pictures (or short texts for vector
and class outputs) that `report_plots.plot_samples` lays out.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import layout, report_plots
from .config import ModelConfig
from .dataset import SplitConfig, TaskonomyDataset, collate
from .errors import TaskonomyError
from .models import build_task_network, load_weights, network_input
from .sweep.plan import checkpoint_path
from .tables import Storage
from .tasks import TaskSpec, get_task

_PALETTE = np.random.default_rng(7).uniform(0.15, 0.95, (4096, 3))  # fixed colours for ids


def gold_samples(storage: Storage, gold_units: list[dict[str, Any]], data_root: str,
                 splits: SplitConfig, n: int, out: Path) -> dict[str, Any]:
    """One PNG per trained gold network; tasks that cannot be shown are listed with why."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few tiny forward passes: threads only add start-up cost
    try:
        return _draw_all(storage, gold_units, data_root, splits, n, out)
    finally:
        torch.set_num_threads(threads)


def _draw_all(storage: Storage, gold_units: list[dict[str, Any]], data_root: str,
              splits: SplitConfig, n: int, out: Path) -> dict[str, Any]:
    images, skipped = [], []
    for unit in gold_units:
        task, ckpt = unit["params"]["task"], checkpoint_path(unit["key"])
        reason = _why_not(task, storage, ckpt)
        if reason:
            skipped.append({"task": task, "reason": reason})
            continue
        try:
            rows = predict_rows(task, storage.read_bytes(ckpt), data_root, splits, n)
        except TaskonomyError as e:
            skipped.append({"task": task, "reason": f"not drawn: {e}"})
            continue
        name = f"samples_{task}.png"
        report_plots.plot_samples(task, rows, out / name)
        images.append({"task": task, "image": name,
                       "caption": f"{len(rows)} test image(s): input, gold prediction, truth"})
    return {"images": images, "skipped": skipped, "note": None}


def _why_not(task: str, storage: Storage, ckpt: str) -> str | None:
    if get_task(task).output == "none":
        return "the random encoder has no output to show"
    if not storage.exists(ckpt):
        return f"no checkpoint yet ({ckpt}): the gold network has not finished training"
    return None


@torch.no_grad()
def predict_rows(task: str, checkpoint: bytes, data_root: str, splits: SplitConfig,
                 n: int) -> list[list[np.ndarray | str]]:
    """[input, prediction, truth] panels of the first `n` test samples of `task`."""
    state = torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=False)
    model = ModelConfig(**state["model"])
    net = build_task_network(task, model, int(state["channels"]))
    load_weights(net, state["network"], f"the {task} checkpoint")
    net.eval()
    spec = get_task(task)
    data = TaskonomyDataset(data_root, [task], split="test", splits=splits,
                            size=model.image_size, jigsaw_classes=model.jigsaw_classes)
    batch = collate([data[i] for i in range(min(n, len(data)))])
    if not batch["image"]:
        return []
    x = network_input(spec, batch)
    pred = net(x).float()
    names = layout.read_info(data_root).get(spec.domains[0]) if spec.domains else None
    return [[_input_picture(x[i]), *_output_pictures(spec, pred[i], batch, i, names)]
            for i in range(len(batch["image"]))]


def _input_picture(x: torch.Tensor) -> np.ndarray:
    """What the network saw: (C, H, W) or views (V, C, H, W) side by side, as (H, W, 3)."""
    views = list(x) if x.dim() == 4 else [x]
    return np.concatenate([_rgb(v) for v in views], axis=1)


def _rgb(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] to (H, W, 3): grey for one channel, first three channels otherwise."""
    a = x.detach().float().numpy()
    if a.shape[0] == 1:
        a = np.repeat(a, 3, 0)
    elif a.shape[0] == 2:
        a = np.concatenate([a, np.full_like(a[:1], 0.5)], 0)
    return np.clip(a[:3].transpose(1, 2, 0), 0, 1)


def _output_pictures(spec: TaskSpec, pred: torch.Tensor, batch: dict[str, Any], i: int,
                     names: list[str] | None = None) -> list[np.ndarray | str]:
    """[prediction, truth] of sample i, by the task's output kind (`names`: class names)."""
    label = batch[spec.name][i]
    mask = batch.get(f"{spec.name}_mask")
    if spec.output == "pixel_regression":
        lo, hi = _range(label, None if mask is None else mask[i])
        return [_rgb((pred - lo) / (hi - lo)), _rgb(_masked((label - lo) / (hi - lo), mask, i))]
    if spec.output == "pixel_classes":
        return [_ids(pred.argmax(0)), _ids(label)]
    if spec.output == "pixel_embedding":
        return [_embedding(pred), _ids(label)]
    if spec.output == "class_distribution":
        return [_top(torch.softmax(pred, 0), names), _top(label, names)]
    if spec.loss == "cross_entropy":  # one class per sample: jigsaw, point_matching
        p = torch.softmax(pred, 0)
        return [f"class {int(p.argmax())}\np = {float(p.max()):.2f}", f"class {int(label)}"]
    return [_vector(pred), _vector(label)]  # vector regressions and poses


def _range(label: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel 1st and 99th percentiles of the truth's valid pixels: one scale for both."""
    flat = label.flatten(1).float()
    if mask is not None and bool(mask.any()):
        flat = flat[:, mask.flatten().bool()]
    lo, hi = torch.quantile(flat, 0.01, dim=1), torch.quantile(flat, 0.99, dim=1)
    hi = torch.where(hi - lo < 1e-6, lo + 1.0, hi)
    return lo[:, None, None], hi[:, None, None]


def _masked(x: torch.Tensor, mask: torch.Tensor | None, i: int) -> torch.Tensor:
    """Invalid pixels of the truth shown mid-grey."""
    return x if mask is None else torch.where(mask[i].bool(), x, torch.full_like(x, 0.5))


def _ids(ids: torch.Tensor) -> np.ndarray:
    return _PALETTE[ids.long().numpy() % len(_PALETTE)]


def _embedding(e: torch.Tensor) -> np.ndarray:
    """A pixel embedding (E, H, W) as colour: its first three principal components."""
    x = e.flatten(1).T.double()  # (pixels, E)
    x = x - x.mean(0)
    k = min(3, x.shape[1])
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    y = (x @ v[:k].T).float()
    y = (y - y.min(0).values) / (y.max(0).values - y.min(0).values).clamp_min(1e-6)
    if k < 3:
        y = torch.cat([y, torch.full((y.shape[0], 3 - k), 0.5)], 1)
    return y.T.reshape(3, *e.shape[1:]).numpy().transpose(1, 2, 0)


def _top(p: torch.Tensor, names: list[str] | None, k: int = 3) -> str:
    """The k most likely classes with their probabilities, by name where the dataset has them."""
    values, index = torch.topk(p.float(), min(k, p.numel()))
    labels = names if names is not None and len(names) == p.numel() else None
    return "\n".join(f"{labels[int(j)] if labels else f'class {int(j)}'}: {float(v):.2f}"
                     for v, j in zip(values, index))


def _vector(v: torch.Tensor, k: int = 6) -> str:
    values = [f"{float(x):+.2f}" for x in v.flatten()[:k]]
    more = " ..." if v.numel() > k else ""
    return "\n".join(" ".join(values[j:j + 3]) for j in range(0, len(values), 3)) + more
