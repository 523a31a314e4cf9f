"""Sanity check of step 1: do the `mini` gold networks learn?

Run: `.venv/bin/python benchmarks/sanity_gold.py` (7-15 minutes on 2 CPU cores, rendering
included). Renders a mini-Taskonomy set with `taskonomy-ray synth`'s library call (or reads
`--root`), trains each task's mini gold network, and scores it per test image against two
baselines: the trivial one (the best constant prediction over the training split: per channel
the median label under L1, the mean under L2, or the class frequencies) and the random-encoder
network (the fixed-seed random encoder, frozen, with the task's decoder trained the same way).
Writes docs/sanity.md; prints one JSON line of the win rates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taskonomy_ray import config, tasks, training
from taskonomy_ray.dataset import TaskonomyDataset, batches
from taskonomy_ray.models import per_image_loss
from taskonomy_ray.tasks import TaskSpec

EPS = 1e-6


def render(root: Path, points: int, views: int, size: int, buildings: int, seed: int) -> None:
    """A mini-Taskonomy set, unless `root` already holds this very one."""
    from taskonomy_ray import layout

    want = {"points": points, "views": views, "size": size, "seed": seed, "buildings": buildings}
    if (root / layout.INFO_FILE).exists():
        info = layout.read_info(root)
        have = {**{k: info.get(k) for k in want}, "buildings": len(info.get("buildings", []))}
        if have != want:
            raise SystemExit(f"{root} holds another rendered set ({have}); pass another --root "
                             f"or delete it to render {want}")
        return
    from taskonomy_ray.render.synth import SynthConfig, synthesize

    synthesize(SynthConfig(str(root), points, views, size, seed, buildings), progress=False)


def label_statistics(spec: TaskSpec, data: TaskonomyDataset, channels: int) -> torch.Tensor:
    """The best constant prediction's parameters from the training split, per channel: the
    median of an L1 regression's valid pixels (L1's best constant: on sparse maps such as
    keypoints it is far below the mean), the mean of an L2 one's, class / bin frequencies, the
    mean distribution."""
    total = torch.zeros(channels, dtype=torch.float64)
    count = torch.zeros(channels, dtype=torch.float64)
    values: list[list[torch.Tensor]] = [[] for _ in range(channels)]  # L1: valid values
    for b in batches(data, 64):
        y = b[spec.name]
        if spec.loss in ("l1", "l2"):
            x = y.flatten(2) if y.dim() == 4 else y[..., None]  # (B, C, N)
            m = b.get(f"{spec.name}_mask")
            w = m.flatten(2).float() if m is not None else torch.ones_like(x[:, :1])
            total += (x * w).sum((0, 2)).double()
            count += w.sum((0, 2)).double().expand(channels)
            for c in range(channels if spec.loss == "l1" else 0):
                values[c].append(x[:, c][w[:, 0] > 0].float())
        elif spec.loss == "kl":
            total += y.sum(0).double()
            count += len(y)
        elif spec.loss == "cross_entropy":
            total += torch.bincount(y.flatten(), minlength=channels)[:channels].double()
            count += 1
    if spec.loss == "cross_entropy":
        if "segment_semantic" in spec.domains:
            total[0] = 0  # uncertain pixels are never scored
        return torch.log(total / total.sum() + EPS).float()
    if spec.loss == "l1":
        return torch.stack([torch.cat(v).median() for v in values])
    stat = (total / count.clamp_min(1)).float()
    return torch.log(stat + EPS) if spec.loss == "kl" else stat


def trivial_losses(spec: TaskSpec, stat: torch.Tensor | None, data: TaskonomyDataset,
                   emb_dim: int) -> dict[str, float]:
    """Per-image losses of the constant prediction (all-equal embeddings for metric tasks)."""
    out: dict[str, float] = {}
    for b in batches(data, 64):
        y = b[spec.name]
        n = len(b["image"])
        if spec.loss == "metric":
            pred = torch.zeros(n, emb_dim, *y.shape[-2:])
        elif spec.dense:
            pred = stat.view(1, -1, 1, 1).expand(n, -1, *y.shape[-2:])
        else:
            pred = stat.view(1, -1).expand(n, -1)
        loss = per_image_loss(spec, pred, b, deterministic=True)
        out.update(zip(b["image"], loss.tolist()))
    return out


def as_dict(table: Any) -> dict[str, float]:
    """image -> loss of a losses table."""
    return dict(zip(table["image"].to_pylist(), table["loss"].to_pylist()))


def win_rate(ours: dict[str, float], theirs: dict[str, float]) -> float:
    """Share of images on which `ours` has the strictly lower loss."""
    return float(np.mean([ours[i] < theirs[i] for i in ours]))


def check_task(name: str, root: Path, cfg: config.NetworkConfig) -> dict[str, Any]:
    """Train the gold and random-encoder networks of one task; score them per test image."""
    spec = tasks.get_task(name)
    gold = training.train_gold(name, root, cfg)
    rand = training.train_random_decoder(name, root, cfg)
    kw = {"size": cfg.model.image_size, "jigsaw_classes": cfg.model.jigsaw_classes}
    train = TaskonomyDataset(root, [name], split="train", **kw)
    test = TaskonomyDataset(root, [name], split="test", **kw)
    channels = training._channels(name, root, cfg.model)
    stat = None if spec.loss == "metric" else label_statistics(spec, train, channels)
    base = trivial_losses(spec, stat, test, cfg.model.embedding_dim)
    g, r = as_dict(gold.losses), as_dict(rand.losses)
    return {"task": name, "images": len(g), "gold": float(np.mean(list(g.values()))),
            "trivial": float(np.mean(list(base.values()))),
            "random": float(np.mean(list(r.values()))), "win_trivial": win_rate(g, base),
            "win_random": win_rate(g, r), "seconds": gold.seconds + rand.seconds,
            "start": float(np.mean(gold.history[:5])), "end": float(np.mean(gold.history[-5:]))}


def write_markdown(rows: list[dict[str, Any]], out: Path, meta: str) -> None:
    """docs/sanity.md: one row per task."""
    lines = [
        "# Sanity check: the mini gold networks learn",
        "",
        "Produced by `.venv/bin/python benchmarks/sanity_gold.py`",
        meta + ".",
        "",
        "Win rate = share of test images on which the gold network's loss is strictly lower",
        "than the baseline's.",
        "Trivial = the best constant prediction from the training split: per channel the",
        "median (L1 tasks) or mean (L2) label on valid pixels, or the class frequencies (equal",
        "embeddings for segment_unsup*); random =",
        "the fixed-seed random encoder, frozen, with the task's decoder trained the same way.",
        "",
        "| task | test images | gold loss | trivial loss | random-encoder loss | "
        "win vs trivial | win vs random | train loss, first -> last 5 steps |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['task']} | {r['images']} | {r['gold']:.4f} | {r['trivial']:.4f} | "
                     f"{r['random']:.4f} | {r['win_trivial']:.2f} | {r['win_random']:.2f} | "
                     f"{r['start']:.3f} -> {r['end']:.3f} |")
    beat = sum(r["win_trivial"] > 0.5 for r in rows)
    beat_r = sum(r["win_random"] > 0.5 for r in rows)
    lines += ["", f"Gold beats the trivial baseline on most images for {beat} of {len(rows)} "
              f"tasks, and the random-encoder network for {beat_r} of {len(rows)}.", ""]
    out.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="data/sanity10", help="dataset root (rendered if missing)")
    p.add_argument("--points", type=int, default=40)
    p.add_argument("--views", type=int, default=3)
    p.add_argument("--buildings", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="override the mini preset's steps")
    p.add_argument("--config", default=None, help="YAML overrides of the mini preset")
    p.add_argument("--tasks", nargs="*", default=None)
    p.add_argument("--out", default="docs/sanity.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = config.load_yaml(args.config, base="mini") if args.config else config.preset("mini")
    if args.steps:
        cfg = config.from_dict({"train": {"steps": args.steps}}, base=cfg)
    root = Path(args.root)
    render(root, args.points, args.views, cfg.model.image_size, args.buildings, args.seed)
    names = [t for t in tasks.resolve(args.tasks) if t != "random"]
    t0, rows = time.perf_counter(), []
    for name in names:
        rows.append(check_task(name, root, cfg))
        r = rows[-1]
        print(f"{name:20s} win_trivial={r['win_trivial']:.2f} win_random={r['win_random']:.2f} "
              f"({r['seconds']:.0f}s)", file=sys.stderr)
    meta = (f"(mini preset, {cfg.train.steps} steps; rendered set: {args.buildings} buildings x "
            f"{args.points} points x {args.views} views, {cfg.model.image_size} px, seed "
            f"{args.seed}; {time.perf_counter() - t0:.0f} s on 2 CPU cores)")
    write_markdown(rows, Path(args.out), meta)
    print(json.dumps({r["task"]: {"win_trivial": r["win_trivial"], "win_random": r["win_random"]}
                      for r in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
