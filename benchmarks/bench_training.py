"""Benchmark of step 1: all 26 `mini` gold networks, the `paper` encoder, the data loader.

Run: `.venv/bin/python benchmarks/bench_training.py` (about 6 minutes on 2 CPU cores; `--quick`
for a 1-minute smoke run). Renders a mini-Taskonomy set (or reads `--root`), trains every mini
gold network with the preset's default steps (one torch thread, as the 2-core CI box allows one
training per core), times the paper encoder's forward+backward at 256 px and the data loader, and
prints one JSON line of figures; the budget is < 6 min in total and < 8 GiB peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from taskonomy_ray import config, tasks, training
from taskonomy_ray.dataset import TaskonomyDataset, batches
from taskonomy_ray.models.encoder import Encoder


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def render(root: Path, points: int, buildings: int, size: int) -> None:
    """A mini-Taskonomy set for the benchmark, unless `root` already holds one."""
    if (root / "dataset_info.json").exists():
        return
    from taskonomy_ray.render.synth import SynthConfig, synthesize

    synthesize(SynthConfig(str(root), points, 3, size, 0, buildings), progress=False)


def bench_gold(root: Path, cfg: config.NetworkConfig) -> dict[str, Any]:
    """Train all 26 mini gold networks one after the other: wall and CPU seconds.

    With one torch thread, CPU time is what the wall time would be on an idle core; the shared
    CI box is often busy, so both are reported.
    """
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for name in tasks.task_names():
        t, c = time.perf_counter(), time.process_time()
        training.train_gold(name, root, cfg)
        wall[name] = round(time.perf_counter() - t, 2)
        cpu[name] = round(time.process_time() - c, 2)
        print(f"  {name:20s} {wall[name]:6.1f} s wall {cpu[name]:6.1f} s cpu", file=sys.stderr)
    return {"gold_total_wall_s": round(time.perf_counter() - t0, 1),
            "gold_total_cpu_s": round(time.process_time() - c0, 1),
            "gold_per_task_cpu_s": cpu, "gold_steps": cfg.train.steps,
            "gold_batch": cfg.train.batch_size}


def conv_flops(enc: Encoder, size: int) -> float:
    """Forward multiply-adds x 2 of the encoder's convolutions at `size` px (per image)."""
    total = 0.0

    def hook(m: torch.nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        total += 2.0 * k * out.shape[1] * out.shape[2] * out.shape[3]

    handles = [m.register_forward_hook(hook) for m in enc.modules()
               if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        enc(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


def bench_paper_encoder(batch: int, iters: int, threads: int) -> dict[str, Any]:
    """Images/s of the paper encoder's forward+backward at 256 px on the CPU."""
    torch.set_num_threads(threads)
    enc = Encoder(config.preset("paper").model)
    x = torch.rand(batch, 3, 256, 256)
    opt = torch.optim.SGD(enc.parameters(), 0.01)
    for i in range(iters + 1):
        if i == 1:
            t, c = time.perf_counter(), time.process_time()
        opt.zero_grad()
        enc(x).square().mean().backward()
        opt.step()
    ips = batch * iters / (time.perf_counter() - t)
    cpu_ips = batch * iters * threads / (time.process_time() - c)  # per busy core-second x threads
    flops = conv_flops(enc, 256) * 3  # backward ~ 2x forward
    return {f"paper_encoder_img_s_{threads}t": round(ips, 2),
            f"paper_encoder_img_per_cpu_s_x{threads}t": round(cpu_ips, 2),
            f"paper_encoder_gflop_s_{threads}t": round(ips * flops / 1e9, 1),
            "paper_encoder_gflop_per_img_fwd_bwd": round(flops / 1e9, 2)}


def bench_loader(root: Path, size: int) -> dict[str, Any]:
    """Samples/s of the data loader for a dense, a derived and a multi-view task."""
    out: dict[str, Any] = {}
    for name in ("normal", "colorization", "egomotion"):
        ds = TaskonomyDataset(root, [name], split="train", size=size)
        for workers in (0, 2):
            t = time.perf_counter()
            n = sum(len(b["image"]) for b in batches(ds, 16, num_workers=workers))
            out[f"loader_{name}_w{workers}_samples_s"] = round(n / (time.perf_counter() - t), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="data/bench", help="dataset root (rendered if missing)")
    p.add_argument("--quick", action="store_true", help="10 steps per task, fewer repeats")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = config.preset("mini")
    if args.quick:
        cfg = config.from_dict({"train": {"steps": 10}}, base=cfg)
    root = Path(args.root)
    render(root, 20, 4, cfg.model.image_size)
    figures: dict[str, Any] = {"torch": torch.__version__}
    figures.update(bench_loader(root, cfg.model.image_size))
    torch.set_num_threads(1)
    figures.update(bench_gold(root, cfg))
    figures["gold_peak_rss_gib"] = round(peak_rss_gib(), 2)
    iters = 1 if args.quick else 3
    figures.update(bench_paper_encoder(4, iters, 1))
    figures.update(bench_paper_encoder(4, iters, 2))
    figures["peak_rss_gib"] = round(peak_rss_gib(), 2)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
