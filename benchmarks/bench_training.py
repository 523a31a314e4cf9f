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


# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) of GPUs a sweep is likely to meet, from
# the vendors' data sheets; `--peak-tflops` overrides (or supplies) the figure.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 70.0,
                    "L40S": 362.0}


def gpu_peak_tflops(name: str) -> float | None:
    """The bf16 peak of a GPU named like `NVIDIA H100 80GB HBM3` (None when unknown)."""
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name.upper()), None)


def bench_paper_encoder(batch: int, iters: int, threads: int, *, amp: bool = False,
                        device: str = "cpu") -> dict[str, Any]:
    """Images/s of the paper encoder's forward+backward at 256 px (channels-last).

    `amp` runs it under bf16 autocast, as `train.amp: on` (and `auto` on CUDA) does.
    """
    torch.set_num_threads(threads)
    dev = torch.device(device)
    enc = Encoder(config.preset("paper").model).to(dev, memory_format=torch.channels_last)
    x = torch.rand(batch, 3, 256, 256, device=dev).contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(enc.parameters(), 0.01)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for i in range(iters + 1):
        if i == 1:
            sync()
            t, c = time.perf_counter(), time.process_time()
        opt.zero_grad()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            y = enc(x)
        y.float().square().mean().backward()
        opt.step()
    sync()
    ips = batch * iters / (time.perf_counter() - t)
    flops = conv_flops(enc.cpu(), 256) * 3  # backward ~ 2x forward
    tag = f"{device}_{'bf16' if amp else 'fp32'}_{threads}t" if dev.type == "cpu" else \
        f"cuda_{'bf16' if amp else 'fp32'}_b{batch}"
    out = {f"paper_encoder_img_s_{tag}": round(ips, 2),
           f"paper_encoder_gflop_s_{tag}": round(ips * flops / 1e9, 1),
           "paper_encoder_gflop_per_img_fwd_bwd": round(flops / 1e9, 2)}
    if dev.type == "cpu":  # per busy core-second x threads
        out[f"paper_encoder_img_per_cpu_s_{tag}"] = round(
            batch * iters * threads / (time.process_time() - c), 2)
    return out


def bench_gpu(peak: float | None) -> dict[str, Any]:
    """The paper encoder on the first CUDA device: images/s and the fraction of its bf16 peak."""
    name = torch.cuda.get_device_name(0)
    peak = peak or gpu_peak_tflops(name)
    out: dict[str, Any] = {"gpu": name, "gpu_bf16_peak_tflops": peak}
    for amp in (False, True):
        r = bench_paper_encoder(64, 20, 1, amp=amp, device="cuda")
        out.update(r)
        tag = f"cuda_{'bf16' if amp else 'fp32'}_b64"
        if amp and peak:
            out["paper_encoder_fraction_of_bf16_peak"] = round(
                r[f"paper_encoder_gflop_s_{tag}"] / 1e3 / peak, 3)
    return out


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
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the GPU's dense bf16 peak, when not in BF16_PEAK_TFLOPS")
    p.add_argument("--gpu-only", action="store_true", help="only the CUDA encoder figures")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = config.preset("mini")
    if args.quick:
        cfg = config.from_dict({"train": {"steps": 10}}, base=cfg)
    figures: dict[str, Any] = {"torch": torch.__version__}
    if torch.cuda.is_available():
        figures.update(bench_gpu(args.peak_tflops))
    elif args.gpu_only:
        raise SystemExit("--gpu-only: no CUDA device is visible")
    if args.gpu_only:
        print(json.dumps(figures))
        return 0
    root = Path(args.root)
    render(root, 20, 4, cfg.model.image_size)
    figures.update(bench_loader(root, cfg.model.image_size))
    torch.set_num_threads(1)
    figures.update(bench_gold(root, cfg))
    figures["gold_peak_rss_gib"] = round(peak_rss_gib(), 2)
    iters = 1 if args.quick else 3
    figures.update(bench_paper_encoder(4, iters, 1))
    figures.update(bench_paper_encoder(4, iters, 1, amp=True))
    figures.update(bench_paper_encoder(4, iters, 2))
    figures["peak_rss_gib"] = round(peak_rss_gib(), 2)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
