"""Benchmark of step 2: transfers per minute, fused + cached against the naive way.

Run: `.venv/bin/python benchmarks/bench_transfers.py [--data DIR] [--steps 40] [--quick]` (about
3-5 min on 2 cores, plus ~30 s to render the data on the first run). In one process, on the same
rendered mini data (64 px, 4x4x8 representations), the same batches and the same steps:
- naive: one transfer at a time, every frozen source encoder re-run on every batch (and on the
  test images), as Taskonomy's code did;
- fused + cached: each source encodes each image set once (timed, charged once), then every
  order's transfers into a target train as one grouped module from the cache.
Per target the transfers follow the sweep's mix scaled by 1/5 (first order : pairs : triples :
quads = 5 : 2 : 2 : 3 of 26 : 10 : 10 : 15), so the naive side runs ~2.2 encoders per transfer.
Source encoders are fixed-seed random ones: the same code and cost as trained ones.
Also: feature-cache bytes per source and image, float16 vs float32 caches' effect on the
per-image losses, and a FLOP-based projection of the paper-scale sweep. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from taskonomy_ray import beam, features
from taskonomy_ray.config import preset
from taskonomy_ray.dataset import output_channels
from taskonomy_ray.fused import load_labels, stacked_inputs, train_group
from taskonomy_ray.models import random_encoder
from taskonomy_ray.models.encoder import Encoder
from taskonomy_ray.tables import Storage
from taskonomy_ray.tasks import get_task
from taskonomy_ray.transfer import TransferConfig, build_transfer_net, evaluate, train_transfer

REGIME = 64
SOURCES = ["autoencoding", "edge_texture", "reshading", "depth_zbuffer", "keypoints2d",
           "class_scene"]
# Target kinds of the dictionary's 22 targets: 14 dense, 4 vector/distribution, 4 multi-view.
TARGETS = {"normal": 14 / 22 / 2, "segment_semantic": 14 / 22 / 2, "room_layout": 4 / 22,
           "egomotion": 4 / 22}
PAPER_TEST_IMAGES = 10_000  # assumed test images scored per transfer at paper scale
# Views of the multi-view targets' samples, summed (egomotion 3, the pose / matching tasks 2).
MV_VIEWS = sum(get_task(t).views for t in ("egomotion", "fixated_pose", "nonfixated_pose",
                                            "point_matching"))


def transfer_mix(sources: list[str]) -> list[tuple[str, ...]]:
    """The sweep's per-target mix scaled by 1/5: 5 singles, 2 pairs, 2 triples, 3 quads."""
    s = sources
    mix = [s[i:i + 1] for i in range(5)] + [s[:2], s[1:3], s[:3], s[1:4], s[:4], s[1:5], s[2:6]]
    return [beam.canonical(x) for x in mix]


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(t: tuple[float, float]) -> tuple[float, float]:
    return time.perf_counter() - t[0], time.process_time() - t[1]


def render(data: Path) -> None:
    if (data / "dataset_info.json").exists():
        return
    from taskonomy_ray.render.synth import SynthConfig, synthesize

    synthesize(SynthConfig(out=str(data), points=24, views=3, size=64, buildings=4), False)


def load(data: Path, target: str, imageset: str, size: int):
    ds = features.open_imageset(str(data), imageset, image_size=size, tasks=[target])
    ids, labels = load_labels(ds, target)
    rgb = torch.stack([torch.as_tensor(ds[i]["rgb"]) for i in range(len(ds))])
    return ds, ids, labels, rgb


def data_ms_per_batch(ds, bs: int) -> float:
    t = time.perf_counter()
    for i in range(bs):
        ds[i]
    return 1000 * (time.perf_counter() - t)


def naive(target, sets, encoders, rgb_tr, lab_tr, rgb_te, lab_te, ids_te, clip, model, cfg,
          channels):
    """Each transfer alone, its k frozen encoders re-run on every batch and on the test set."""
    out = {}
    for ss in sets:
        net = build_transfer_net(target, ss, REGIME, model, cfg, channels, len(rgb_tr))
        net.readout.set_clip(clip[ss], cfg.clip_sigma)

        def inputs(idx, rgb, ss=ss):
            with torch.no_grad():
                x = rgb[idx]
                flat = x.reshape(-1, *x.shape[-3:])
                z = torch.cat([encoders[s](flat) for s in ss], 1)
                return z.reshape(*x.shape[:-3], *z.shape[1:])

        train_transfer(net, target, lambda i: inputs(i, rgb_tr), lab_tr, len(rgb_tr), cfg)
        out[ss] = evaluate(net, target, lambda i: inputs(i, rgb_te), lab_te, ids_te, cfg)
    return out


def fused(target, sets, cache, tr_set, te_set, ids_tr, lab_tr, ids_te, lab_te, model, cfg,
          channels):
    tr = {s: torch.from_numpy(cache.load(s, tr_set, ids_tr)) for s in SOURCES}
    te = {s: torch.from_numpy(cache.load(s, te_set, ids_te)) for s in SOURCES}
    out = {}
    for order in sorted({len(s) for s in sets}):
        group = [s for s in sets if len(s) == order]
        out.update(train_group(target, group, REGIME, tr, lab_tr, te, lab_te, ids_te, model, cfg,
                               channels))
    return out


def compare(a: dict, b: dict) -> dict:
    """How two runs' per-image losses differ: mean relative change of each transfer's mean
    loss, mean relative per-image change, and the largest shift of a pairwise win rate."""
    return {"mean_loss_rel": float(np.mean([abs(a[k].mean() - b[k].mean()) / b[k].mean()
                                            for k in a])),
            "per_image_rel": float(np.mean([np.abs(a[k] - b[k]).mean() / b[k].mean()
                                            for k in a])),
            "max_win_rate_shift": win_shift(a, b)}


def win_shift(a: dict, b: dict) -> float:
    """Largest change of a pairwise win rate (the AHP input) between two loss sets."""
    keys, worst = list(a), 0.0
    for i, x in enumerate(keys):
        for y in keys[i + 1:]:
            wa = float(np.mean(a[x] < a[y]))
            wb = float(np.mean(b[x] < b[y]))
            worst = max(worst, abs(wa - wb))
    return worst


def paper_flops() -> dict:
    """FLOPs per image at paper scale (256 px, 16x16x8), counted on meta tensors."""
    model = preset("paper").model
    with torch.device("meta"), FlopCounterMode(display=False) as fc:
        Encoder(model)(torch.randn(1, 3, 256, 256))
    out = {"encoder_fwd": fc.get_total_flops()}
    cfg = TransferConfig(batch_size=2)
    for t, ch in [("normal", 3), ("room_layout", 9), ("egomotion", 18)]:
        for k in (1, 2, 3, 4):
            net = build_transfer_net(t, tuple(SOURCES[:k]), 1000, model, cfg, ch, 2).to("meta")
            v = get_task(t).views
            x = torch.randn(2, *(() if v == 1 else (v,)), 8 * k, 16, 16, device="meta")
            with FlopCounterMode(display=False) as fc:
                net(x).sum().backward()
            train = fc.get_total_flops() / 2
            with FlopCounterMode(display=False) as fc, torch.no_grad():
                net.eval()(x)
            out[f"{t}_k{k}"] = {"train": train, "eval": fc.get_total_flops() / 2, "views": v}
    return out


def projection(fl: dict) -> dict:
    """GPU-hours of the full paper-scale sweep's transfers (26 tasks, 1k and 16k, orders 1-4)."""
    counts = beam.planned_counts()  # per regime: {1: 572, 2: 220, 3: 220, 4: 330}
    steps = {1000: 1563, 16000: 5000}  # assumed: 50 epochs of 1k, 10 epochs of 16k, batch 32
    kinds = {"normal": 14 / 22, "room_layout": 4 / 22, "egomotion": 4 / 22}
    naive = fused_ = 0.0
    for regime, n_steps in steps.items():
        images_seen = n_steps * 32
        for order, n in counts.items():
            for kind, share in kinds.items():
                h = fl[f"{kind}_k{order}"]
                views = MV_VIEWS / 4 if h["views"] > 1 else 1  # mean views of the 4 targets
                enc = fl["encoder_fwd"] * order * views
                head = h["train"] * images_seen + h["eval"] * PAPER_TEST_IMAGES
                naive += n * share * (head + enc * (images_seen + PAPER_TEST_IMAGES))
                fused_ += n * share * head
        # the cache: every source encodes the regime subset, plus (once) the test images; each
        # multi-view target's sets again, view by view
        fused_ += 26 * fl["encoder_fwd"] * regime * (1 + MV_VIEWS)
    fused_ += 26 * fl["encoder_fwd"] * PAPER_TEST_IMAGES * (1 + MV_VIEWS)
    out = {"naive_pflop": naive / 1e15, "fused_pflop": fused_ / 1e15,
           "flop_ratio": naive / fused_}
    for tflops in (10, 100):  # assumed sustained throughput per GPU
        out[f"naive_gpu_hours_at_{tflops}tflops"] = naive / (tflops * 1e12) / 3600
        out[f"fused_gpu_hours_at_{tflops}tflops"] = fused_ / (tflops * 1e12) / 3600
    return out


def warm_up(model) -> None:
    """Pay one-off lazy imports (the optimiser's first use) before any timer starts."""
    cfg = TransferConfig(steps=1, batch_size=2)
    net = build_transfer_net("room_layout", ("normal",), 2, model, cfg, 9, 2)
    x, y = torch.randn(2, 8, 4, 4), {"room_layout": torch.randn(2, 9)}
    train_transfer(net, "room_layout", lambda i: x[i], y, 2, cfg)
    train_group("room_layout", [("normal",)], 2, {"normal": x}, y, {"normal": x}, y, ["a", "b"],
                model, cfg, 9)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=None, help="mini data root (rendered if absent)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--quick", action="store_true", help="2 targets, 10 steps")
    a = p.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_transfers_"))
    data = a.data or tmp / "data"
    render(data)
    model = preset("mini").model
    warm_up(model)
    cfg = TransferConfig(steps=10 if a.quick else a.steps, batch_size=16, eval_batch_size=64)
    targets = dict(list(TARGETS.items())[::3]) if a.quick else TARGETS
    encoders = {s: random_encoder(model, seed=i) for i, s in enumerate(SOURCES)}
    sets = transfer_mix(SOURCES)
    keys = {s: f"random-{i}" for i, s in enumerate(SOURCES)}
    caches = {d: features.FeatureCache(Storage(str(tmp / f"run-{d}")),
                                       features.keyed_paths(keys, d), d)
              for d in ("float16", "float32")}
    res: dict = {"targets": {}, "steps": cfg.steps, "regime": REGIME,
                 "transfers_per_target": len(sets)}
    tot = {"naive": [0.0, 0.0], "fused": [0.0, 0.0]}
    for target in targets:
        tr_set = features.imageset_name(target, REGIME)
        te_set = features.imageset_name(target, None)
        ds_tr, ids_tr, lab_tr, rgb_tr = load(data, target, tr_set, model.image_size)
        _, ids_te, lab_te, rgb_te = load(data, target, te_set, model.image_size)
        channels = output_channels(target, str(data), jigsaw_classes=model.jigsaw_classes,
                                   embedding_dim=model.embedding_dim)
        t = clock()  # the cache step, charged once per image set (shared by single-view targets)
        for s in SOURCES:
            for imageset, ds in ((tr_set, ds_tr), (te_set, None)):
                if not caches["float16"].is_cached(s, imageset):
                    ds = ds or features.open_imageset(str(data), imageset,
                                                      image_size=model.image_size)
                    caches["float16"].ensure(s, imageset, encoders[s], ds)
        cache_w, cache_c = since(t)
        t = clock()
        f16 = fused(target, sets, caches["float16"], tr_set, te_set, ids_tr, lab_tr, ids_te,
                    lab_te, model, cfg, channels)
        fw, fc = since(t)
        for s in SOURCES:  # float32 cache (for the float16 comparison only; not timed)
            for imageset in (tr_set, te_set):
                ds = features.open_imageset(str(data), imageset, image_size=model.image_size)
                caches["float32"].ensure(s, imageset, encoders[s], ds)
        f32 = fused(target, sets, caches["float32"], tr_set, te_set, ids_tr, lab_tr, ids_te,
                    lab_te, model, cfg, channels)
        f32tr = {s: torch.from_numpy(caches["float32"].load(s, tr_set, ids_tr)) for s in SOURCES}
        clip = {ss: x for ss, x in zip(sets, [stacked_inputs(f32tr, [ss])(
            torch.arange(len(ids_tr)))[0] for ss in sets])}
        t = clock()
        nv = naive(target, sets, encoders, rgb_tr, lab_tr, rgb_te, lab_te, ids_te, clip, model,
                   cfg, channels)
        nw, nc = since(t)
        res["targets"][target] = {
            "naive_wall_s": nw, "naive_cpu_s": nc, "fused_wall_s": fw + cache_w,
            "fused_cpu_s": fc + cache_c, "cache_wall_s": cache_w,
            "speedup_wall": nw / (fw + cache_w), "speedup_cpu": nc / (fc + cache_c),
            "data_ms_per_batch": data_ms_per_batch(ds_tr, cfg.batch_size),
            # float16 cache vs float32 cache, against the noise floor: the same float32 inputs
            # trained naive vs fused differ only in rounding order, which training amplifies
            "f16_vs_f32": compare(f16, f32), "naive_vs_fused_f32": compare(nv, f32)}
        w = targets[target]
        tot["naive"][0] += w * nw
        tot["naive"][1] += w * nc
        tot["fused"][0] += w * (fw + cache_w)
        tot["fused"][1] += w * (fc + cache_c)
        print(target, json.dumps(res["targets"][target]), flush=True)
    n = len(sets)
    wsum = sum(targets.values())
    # Per minute of single-thread CPU time (robust on a shared machine) and of wall time.
    for mode in ("naive", "fused"):
        res[f"transfers_per_cpu_min_{mode}"] = 60 * n * wsum / tot[mode][1]
        res[f"transfers_per_wall_min_{mode}"] = 60 * n * wsum / tot[mode][0]
    res["speedup_wall"] = tot["naive"][0] / tot["fused"][0]
    res["speedup_cpu"] = tot["naive"][1] / tot["fused"][1]
    for d, cache in caches.items():  # one single-view entry: array and file bytes per image
        rel = cache.path_of(SOURCES[0], f"r{REGIME}")
        blob = cache.storage.read_bytes(rel)
        entry = features.from_bytes(blob, rel)
        res[f"cache_{d}_bytes_per_image"] = entry.bytes_per_image
        res[f"cache_{d}_file_bytes_per_image"] = len(blob) / len(entry.images)
    res["cache_float16_bytes_per_image_paper"] = 16 * 16 * 8 * 2  # 16x16x8 at 2 bytes
    res["paper_flops_per_image"] = paper_flops()
    res["projection"] = projection(res["paper_flops_per_image"])
    print(json.dumps(res))


if __name__ == "__main__":
    main()
