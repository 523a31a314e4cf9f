"""Benchmark of steps 3-4: AHP affinities at the published scale and the BIP taxonomy solver.

Run: `.venv/bin/python benchmarks/bench_solver.py [--published CSV] [--quick]` (about 1-2 min on
2 cores). Measures, in one process:
- one solve on the published 16k table, orders <= 4, budget 4: end to end (read CSV, build,
  solve) and the solve alone;
- the whole budget curve, budgets 1-26 for each maximum order 1-4 (104 solves), with HiGHS;
- CBC vs HiGHS (both through PuLP) on the same 20 problems (orders 1-4 x budgets 1,4,8,16,26),
  each solved 3 times per back-end, alternating, summing the best times;
- AHP on synthetic losses of 1,800 transfers x 17,000 test images (22 targets).
The last stdout line is one JSON object of the figures (docs/benchmarks.md records them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa

from taskonomy_ray import affinity, published, tables, taxonomy

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO.parent / "shared" / "reference" / "taskonomy-published" / "transfers.csv"


def _cpu() -> float:
    """CPU seconds of this process and its finished children (CBC runs as a subprocess)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn, repeat=1):
    """(result, median wall seconds, median CPU seconds): CPU time is the fairer figure on a
    shared machine, where wall time also counts waiting for a core. Medians over `repeat`."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), _cpu()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
    return out, statistics.median(walls), statistics.median(cpus)


def bench_solver(csv: Path, quick: bool) -> dict:
    taxonomy.solve(taxonomy.build_problem(published.read_published_csv(csv),
                                          taxonomy.ProblemSpec(regime=16000)), 1)  # warm-up

    def end_to_end():
        table = published.read_published_csv(csv)
        problem = taxonomy.build_problem(table, taxonomy.ProblemSpec(max_order=4, regime=16000))
        return taxonomy.solve(problem, 4)

    result, e2e, e2e_cpu = _timed(end_to_end, repeat=5)
    table = published.read_published_csv(csv)
    problems = {k: taxonomy.build_problem(table, taxonomy.ProblemSpec(max_order=k, regime=16000))
                for k in (1, 2, 3, 4)}
    _, solve_only, solve_cpu = _timed(lambda: taxonomy.solve(problems[4], 4), repeat=5)
    budgets = range(1, 27) if not quick else range(1, 27, 5)
    _, curve, curve_cpu = _timed(
        lambda: [taxonomy.budget_curve(p, budgets) for p in problems.values()])
    subset = [(k, b) for k in (1, 2, 3, 4) for b in (1, 4, 8, 16, 26)]
    per_backend = {b: ([], 0.0, 0.0) for b in ("highs", "cbc")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # PuLP 4 will drop PULP_CBC_CMD
        for k, n in subset:  # alternate back-ends per problem; the best of 3 resists contention
            for backend in ("highs", "cbc"):
                runs = [_timed(lambda b=backend, k=k, n=n: taxonomy.solve(problems[k], n, b))
                        for _ in range(3)]
                objs, wall, cpu = per_backend[backend]
                per_backend[backend] = (objs + [runs[0][0].objective],
                                        wall + min(r[1] for r in runs),
                                        cpu + min(r[2] for r in runs))
    agree = np.allclose(per_backend["highs"][0], per_backend["cbc"][0], atol=1e-9)
    full = taxonomy.build_problem(table, taxonomy.ProblemSpec(max_order=4, regime=16000),
                                  prune=False)
    return {
        "solve_16k_order4_budget4_end_to_end_s": round(e2e, 4),
        "solve_16k_order4_budget4_end_to_end_cpu_s": round(e2e_cpu, 4),
        "solve_16k_order4_budget4_solve_only_s": round(solve_only, 4),
        "solve_16k_order4_budget4_solve_only_cpu_s": round(solve_cpu, 4),
        "objective_16k_order4_budget4": round(result.objective, 6),
        "transfers_order4": len(full.edges), "transfers_after_pruning": len(problems[4].edges),
        "curve_solves": 4 * len(budgets), "curve_budgets_1_26_orders_1_4_s": round(curve, 3),
        "curve_cpu_s": round(curve_cpu, 3),
        "backend_subset_solves": len(subset),
        "highs_subset_s": round(per_backend["highs"][1], 3),
        "cbc_subset_s": round(per_backend["cbc"][1], 3),
        "highs_subset_cpu_s": round(per_backend["highs"][2], 3),
        "cbc_subset_cpu_s": round(per_backend["cbc"][2], 3),
        "cbc_over_highs": round(per_backend["cbc"][1] / per_backend["highs"][1], 2),
        "cbc_over_highs_cpu": round(per_backend["cbc"][2] / per_backend["highs"][2], 2),
        "backends_agree": bool(agree),
    }


def synthetic_losses(n_transfers: int, n_images: int, n_targets: int, seed: int = 0) -> pa.Table:
    """A losses table of the published shape: per target gold, scratch and ranked transfers."""
    rng = np.random.default_rng(seed)
    per = n_transfers // n_targets
    images = pa.array([f"point_{i}_view_0" for i in range(n_images)])
    parts = []
    for t in range(n_targets):
        base = rng.gamma(2.0, 1.0, n_images).astype(np.float32)
        for k in range(per):
            kind, sources, regime = ("gold", ["self"], 3_000_000) if k == 0 else (
                ("scratch", ["pixels"], 16000) if k == 1 else
                ("transfer", [f"s{k}", f"s{k + 1}"][: 1 + k % 2], 16000))
            noise = rng.normal(0.0, 0.3, n_images).astype(np.float32)
            loss = np.abs(base * (0.5 + k / per) + noise)
            n = n_images
            parts.append(pa.table({
                "unit": pa.array([f"u{t}_{k}"] * n), "kind": pa.array([kind] * n),
                "target": pa.array([f"target{t}"] * n),
                "sources": pa.array([sources] * n, pa.list_(pa.string())),
                "order": pa.array(np.full(n, len(sources), np.int8)),
                "regime": pa.array(np.full(n, regime, np.int32)), "image": images,
                "loss": pa.array(loss)}, schema=tables.LOSSES_SCHEMA))
    return pa.concat_tables(parts)


def bench_ahp(quick: bool) -> dict:
    n_transfers, n_images = (1800, 17000) if not quick else (360, 4000)
    losses = synthetic_losses(n_transfers, n_images, 22)
    out, t, t_cpu = _timed(lambda: affinity.compute_affinities(losses))
    block = np.random.default_rng(1).random((82, n_images), dtype=np.float32)
    _, win, _ = _timed(lambda: affinity.win_matrix(block), repeat=3)
    return {"ahp_transfers": losses.num_rows // n_images, "ahp_images": n_images,
            "ahp_rows": losses.num_rows, "ahp_compute_affinities_s": round(t, 3),
            "ahp_compute_affinities_cpu_s": round(t_cpu, 3),
            "ahp_win_matrix_82_competitors_s": round(win, 4), "ahp_output_rows": out.num_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--published", type=Path, default=PUBLISHED)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    figures: dict = {"benchmark": "solver", "quick": args.quick}
    if args.published.exists():
        figures.update(bench_solver(args.published, args.quick))
    else:
        print(f"published table not found at {args.published}: solver figures skipped",
              file=sys.stderr)
        figures["solver"] = "skipped: published table not found"
    figures.update(bench_ahp(args.quick))
    figures["load_average_1min"] = round(os.getloadavg()[0], 2)  # wall times depend on it
    figures["cpus"] = os.cpu_count()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
