"""Mini-Taskonomy renderer speed: views per second at 64 and 256 px, bytes per view, and the wall
time of a 2,000-view 64x64 dataset written with one worker per core.

Run: .venv/bin/python benchmarks/bench_synth.py [--quick]   (about 1-2 min; --quick skips the
2,000-view set). The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
from pathlib import Path

from taskonomy_ray.render import SynthConfig, synthesize


def _cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (the pool's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _measure(out: Path, size: int, points: int, buildings: int, workers: int) -> dict:
    """Render one set: wall seconds, and CPU ms per view (this process and its workers).

    CPU time does not depend on what else runs on the machine, so `cpu_ms_per_view / cores`
    is the wall time per view an otherwise idle machine would give.
    """
    cfg = SynthConfig(str(out), points=points, views=3, size=size, seed=0, buildings=buildings,
                      workers=workers)
    cpu0 = _cpu_seconds()
    r = synthesize(cfg, progress=False)
    cpu = _cpu_seconds() - cpu0
    return {"views": r.views, "seconds": round(r.seconds, 2),
            "views_per_s": round(r.views / r.seconds, 2),
            "cpu_ms_per_view": round(1000 * cpu / r.views, 1),
            "bytes_per_view": round(r.bytes / r.views)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="skip the 2,000-view set")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        load = os.getloadavg()[0]
        one_64 = _measure(tmp / "a", 64, points=20, buildings=2, workers=1)
        print("64 px, 1 worker:", one_64, flush=True)
        one_256 = _measure(tmp / "b", 256, points=3, buildings=2, workers=1)
        print("256 px, 1 worker:", one_256, flush=True)
        full = None
        if not args.quick:
            # 4 buildings x 167 points x 3 views = 2,004 views
            full = _measure(tmp / "c", 64, points=167, buildings=4, workers=0)
            print("2,004 views at 64 px, one worker per core:", full, flush=True)
        print(json.dumps({
            "cores": os.cpu_count(), "load_avg_1min_at_start": round(load, 2),
            "views_per_s_64_one_worker": one_64["views_per_s"],
            "cpu_ms_per_view_64": one_64["cpu_ms_per_view"],
            "views_per_s_256_one_worker": one_256["views_per_s"],
            "cpu_ms_per_view_256": one_256["cpu_ms_per_view"],
            "bytes_per_view_64": one_64["bytes_per_view"],
            "bytes_per_view_256": one_256["bytes_per_view"],
            "seconds_2000_views_64": full["seconds"] if full else None,
            "views_per_s_64_all_cores": full["views_per_s"] if full else None,
            "cpu_seconds_2000_views_64": (round(full["cpu_ms_per_view"] * full["views"] / 1000, 1)
                                          if full else None),
        }))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
