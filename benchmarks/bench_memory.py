"""What a workflow's transfer units hold, and how the estimate compares with measured peaks.

Run: `.venv/bin/python benchmarks/bench_memory.py [--workflow workflows/paper.yaml]
[--device cpu|cuda] [--no-check]` (about 1-2 minutes on 2 cores). Two parts:
- the estimate (`taskonomy_ray.memory`) of every transfer unit shape of the workflow: per output
  kind and order, the largest over targets and regimes of the heads per chunk and test batch
  that `transfer.device_memory_gb` allows, the device bytes and the host bytes;
- a check of the estimate: for a few paper-scale chunks, one real training step and one test
  batch of the fused heads, each in a fresh process, with the peak measured (CUDA: the
  allocator's peak; CPU: the growth of the resident memory, sampled every millisecond) against
  the estimate.
Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9
# (target, order, heads, batch, test batch): chunks of the paper's heads to run for real.
CHECKS = [("normal", 1, 4, 8, 16), ("segment_semantic", 1, 3, 8, 16),
          ("egomotion", 4, 4, 8, 16), ("room_layout", 2, 8, 8, 32)]


def estimate_table(workflow: Path) -> dict:
    """Largest estimate per (output kind, order) over the workflow's targets and regimes."""
    from taskonomy_ray.sweep import config
    from taskonomy_ray.sweep.resources import transfer_memory
    from taskonomy_ray.tasks import get_task

    cfg = config.load(workflow)
    n_test = cfg.data.test_images
    if n_test is None:
        raise SystemExit(f"{workflow}: data.test_images is unset; the test split's size is "
                         "known only from the data, so give the workflow a test_images")
    rows: dict[str, dict] = {}
    for unit, est in transfer_memory(cfg, n_test).items():
        target, _, o = unit.split()
        spec = get_task(target)
        kind = f"{spec.output}{'' if spec.views == 1 else f' x{spec.views}'} {o}"
        row = rows.setdefault(kind, {"device_gb": 0.0, "host_gb": 0.0, "heads": 99,
                                     "test_batch": 10**9, "worst": ""})
        if est.device / GB > row["device_gb"]:
            row.update(device_gb=round(est.device / GB, 2), worst=unit)
        row["host_gb"] = max(row["host_gb"], round(est.host / GB, 2))
        row["heads"] = min(row["heads"], est.heads)
        row["test_batch"] = min(row["test_batch"], est.test_batch)
    return rows


def _peak(q: mp.Queue, target: str, order: int, heads: int, batch: int, evals: int,
          device: str, mode: str) -> None:
    """One training step or one test batch of a paper-scale chunk; put its peak bytes on q."""
    import torch

    from taskonomy_ray.config import TransferConfig, preset
    from taskonomy_ray.fused import _head_losses
    from taskonomy_ray.grouped import fuse
    from taskonomy_ray.tasks import get_task
    from taskonomy_ray.transfer import build_transfer_net, make_optimiser

    torch.set_num_threads(2)
    spec, model = get_task(target), preset("paper").model
    ch = spec.channels
    nets = [build_transfer_net(target, ["autoencoding"] * order, 2, model, TransferConfig(), ch,
                               batch) for _ in range(heads)]
    group = fuse(nets, "grouped").to(device)
    opt = make_optimiser(group.parameters(), TransferConfig())  # the units' own (fused Adam)
    n = batch if mode == "train" else evals
    side, c = model.rep_size, model.rep_channels * order
    lead = (heads, n) if spec.views == 1 else (heads, n, spec.views)
    x = torch.randn(*lead, c, side, side, device=device)
    out_shape = (n, ch, model.image_size, model.image_size) if spec.dense else (n, ch)
    if spec.output == "pixel_classes":
        label = torch.randint(0, ch, (n, model.image_size, model.image_size), device=device)
    else:
        label = torch.randn(*out_shape, device=device)
    batch_labels = {target: label}
    if spec.masked:
        batch_labels[f"{target}_mask"] = torch.ones(n, 1, model.image_size, model.image_size,
                                                    dtype=torch.bool, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:  # the resident size, sampled every millisecond while the step runs
        base, peak, done = _rss(), [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss())
                time.sleep(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
    if mode == "train":
        group.train()
        loss = _head_losses(target, group(x).float(), batch_labels, 0, 0).mean(1).sum()
        loss.backward()
        opt.step()
    else:
        group.eval()
        with torch.no_grad():
            _head_losses(target, group(x).float(), batch_labels, 0, 0)
    if device == "cuda":
        torch.cuda.synchronize()
        q.put(torch.cuda.max_memory_allocated() - base)
    else:  # the step's growth; weights and inputs were resident before it
        done.set()
        sampler.join()
        q.put(max(peak[0], _rss()) - base)


def _rss() -> int:
    """This process's resident bytes now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def check(device: str) -> list[dict]:
    """Measured peaks of a few chunks against `memory.head_cost`'s estimate."""
    from taskonomy_ray.config import preset
    from taskonomy_ray.memory import head_cost
    from taskonomy_ray.tasks import get_task

    model, ctx, out = preset("paper").model, mp.get_context("spawn"), []
    for target, order, heads, batch, evals in CHECKS:
        cost = head_cost(target, order, model, get_task(target).channels)
        row = {"chunk": f"{target} order {order}: {heads} heads, batch {batch}, test {evals}"}
        for mode, est in (("train", heads * (cost.weights * 3 // 4 + batch * cost.train_per_image)),
                          ("eval", heads * evals * cost.eval_per_image)):
            q = ctx.Queue()
            p = ctx.Process(target=_peak, args=(q, target, order, heads, batch, evals, device,
                                                mode))
            p.start()
            p.join()
            if p.exitcode != 0:
                raise SystemExit(f"{row['chunk']} ({mode}) failed in its process: see above")
            measured = q.get(timeout=10)
            # In training the weights were resident before the step: only gradients and Adam's
            # two moments (3/4 of `weights`) grow with it.
            row[f"{mode}_estimate_gb"] = round(est / GB, 3)
            row[f"{mode}_measured_gb"] = round(measured / GB, 3)
            row[f"{mode}_measured_over_estimate"] = round(measured / est, 2)
        out.append(row)
        print(row, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workflow", type=Path, default=ROOT / "workflows/paper.yaml")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--no-check", action="store_true", help="the estimate table only")
    args = p.parse_args()
    table = estimate_table(args.workflow)
    print(f"{'kind and order':28} {'heads':>5} {'test batch':>10} {'device GB':>9} "
          f"{'host GB':>7}  largest")
    for kind, r in sorted(table.items()):
        print(f"{kind:28} {r['heads']:5d} {r['test_batch']:10d} {r['device_gb']:9.2f} "
              f"{r['host_gb']:7.2f}  {r['worst']}")
    checks = [] if args.no_check else check(args.device)
    print(json.dumps({"benchmark": "memory", "workflow": str(args.workflow), "device": args.device,
                      "estimate": table, "check": checks}))


if __name__ == "__main__":
    main()
