"""Check a dataset root against a workflow before a sweep spends GPU-hours on it.

A release download often lacks a domain or a few files; the sweep would find out unit by unit
(each failing with the file's name). This opens every dataset the sweep's units will open, with
the same settings (`training.network_datasets`), reads a few seeded samples of each, and counts
each needed domain's files per building against the rgb views, so every gap shows in one list.
No Ray, no training; reading only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import layout
from ..errors import DataError
from ..splits import SPLITS, split_buildings
from ..tasks import DEPTH_MASK_DOMAIN, get_task
from . import config as sweep_config
from .units import splits as split_config


@dataclass(frozen=True)
class Check:
    """One thing checked: a task's dataset on one split, or one building's domain folder."""

    what: str  # e.g. "normal train", "normal r16000", "files mini0001/normal"
    samples: int | None = None  # samples the dataset holds (None: it could not be opened)
    problem: str | None = None


@dataclass
class DataReport:
    """What `check_data` found: the split's buildings and every check, problems first."""

    root: str
    buildings: dict[str, list[str]]
    checks: list[Check] = field(default_factory=list)

    @property
    def problems(self) -> list[Check]:
        """The checks that found something wrong."""
        return [c for c in self.checks if c.problem]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (`ok`, the buildings, every check)."""
        return {"root": self.root, "ok": not self.problems, "buildings": self.buildings,
                "checks": [asdict(c) for c in self.checks]}


def needed_domains(task: str) -> tuple[str, ...]:
    """The dataset domains a sample of `task` reads: rgb, its labels, its validity mask."""
    spec = get_task(task)
    extra = (DEPTH_MASK_DOMAIN,) if spec.masked else ()
    return tuple(dict.fromkeys(("rgb", *spec.domains, *extra)))


def file_gaps(root: str | Path, building: str, domains: list[str]) -> list[Check]:
    """Each domain folder of `building` checked for one file per rgb view."""
    views = set(layout.scan(root, building, "rgb"))
    out = []
    for d in domains:
        if d == "rgb":
            continue
        what = f"files {building}/{d}"
        folder = Path(root) / building / d
        if not folder.is_dir():
            out.append(Check(what, 0, f"{folder} is missing ({len(views)} views need it); "
                                      f"download the {d} domain for {building}"))
            continue
        lack = sorted(views - set(layout.scan(root, building, d)))
        problem = None
        if lack:
            problem = (f"{folder} has files for {len(views) - len(lack)} of {len(views)} views "
                       f"(missing e.g. {layout.filename(*lack[0], d)}); download them again: a "
                       "unit stops at the first missing file it reads")
        out.append(Check(what, len(views) - len(lack), problem))
    return out


def _sample(what: str, ds: Any, reads: int, seed: int) -> Check:
    """Decode up to `reads` seeded samples of an opened dataset."""
    rng = np.random.default_rng(seed)
    for i in sorted(rng.choice(len(ds), min(reads, len(ds)), replace=False).tolist()):
        try:
            ds[i]
        except DataError as e:
            return Check(what, len(ds), str(e))
    return Check(what, len(ds))


def check_data(cfg: sweep_config.SweepConfig, root: str | Path, *, reads: int = 4,
               progress: bool = False) -> DataReport:
    """Every dataset the sweep of `cfg` opens on `root`, opened and sampled; file gaps counted.

    Gold networks: each task's training and test splits. Transfers and scratch networks: each
    target's regime subsets of the validation split. Raises DataError when the root is missing.
    """
    from tqdm import tqdm

    from ..training import network_dataset, network_datasets

    splits = split_config(cfg)
    by_split = split_buildings(layout.buildings(root), splits)
    report = DataReport(str(root), {s: list(by_split[s]) for s in SPLITS})
    trained = [t for t in cfg.tasks if get_task(t).output != "none"]
    domains = sorted({d for t in trained for d in needed_domains(t)})
    every = sorted({b for s in SPLITS for b in by_split[s]})
    for b in tqdm(every, desc="files", unit="building", disable=not progress):
        report.checks += file_gaps(root, b, domains)
    gold, scratch = cfg.gold_network(), cfg.scratch_network()
    jobs = [(t, None) for t in trained] + [(t, r) for t in cfg.targets for r in cfg.regimes]
    for task, regime in tqdm(jobs, desc="datasets", disable=not progress):
        names = [f"{task} train", f"{task} test"] if regime is None else [f"{task} r{regime}"]
        try:
            if regime is None:
                opened = network_datasets(task, root, gold, splits)
            else:  # the scratch network's and the transfers' training subset
                opened = (network_dataset(task, root, scratch, splits, split="val",
                                          subset=regime, subset_seed=cfg.seed),)
        except DataError as e:
            report.checks.append(Check(" / ".join(names), None, str(e)))
            continue
        report.checks += [_sample(n, ds, reads, cfg.seed) for n, ds in zip(names, opened)]
    report.checks.sort(key=lambda c: c.problem is None)
    return report
