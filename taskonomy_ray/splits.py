"""Building splits: by seeded fractions (the default), or by given lists such as the release's.

Split by building, as in the paper, so no room is seen both in training and in testing. The
Taskonomy release ships its splits as CSV files (`train_val_test_<size>.csv`: one row per
building, `name,train,val,test` with 0/1 flags); `read_split_file` reads them.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    """Fractions of the buildings in train / val / test, shuffled by `seed`; or given lists.

    With `buildings` ({split: names}) the fractions are not used: each split holds the listed
    buildings the dataset root has (a listed building missing there is skipped; one in no list
    is in no split). They are kept as sorted (split, names) pairs, so the config stays hashable
    (workers key their decoded image sets on it); `lists` gives them back as a mapping.
    """

    train: float = 0.6
    val: float = 0.2
    test: float = 0.2
    seed: int = 0
    # At most this many test samples (a subset drawn with `seed`), the same for every network
    # scored on the test split; None: all of them. A full Taskonomy test split holds ~400k
    # images: every transfer scored on all of them would cost more than training it.
    test_images: int | None = None
    buildings: Any = None  # Mapping[str, Sequence[str]] given; tuple of pairs kept

    def __post_init__(self) -> None:
        fr = (self.train, self.val, self.test)
        if min(fr) < 0 or abs(sum(fr) - 1) > 1e-6 or self.train <= 0:
            raise ConfigError(f"split fractions must be >= 0, sum to 1 and give train a share; "
                              f"got train={self.train} val={self.val} test={self.test}")
        n = self.test_images
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ConfigError(f"test_images must be a positive number of test samples, or None "
                              f"for the whole test split; got {self.test_images}")
        if self.buildings is not None:
            lists = dict(self.buildings)
            check_lists(lists, "buildings")
            object.__setattr__(self, "buildings",
                               tuple((k, tuple(sorted(lists[k]))) for k in SPLITS))

    @property
    def lists(self) -> dict[str, tuple[str, ...]] | None:
        """The given building lists ({split: names}), or None for fractional splits."""
        return None if self.buildings is None else dict(self.buildings)


def check_lists(lists: Mapping[str, Sequence[str]], where: str) -> None:
    """Refuse split lists that are not {train, val, test: names} or share a building."""
    if not isinstance(lists, Mapping) or set(lists) != set(SPLITS):
        got = sorted(lists) if isinstance(lists, Mapping) else type(lists).__name__
        raise ConfigError(f"{where} must map each of {list(SPLITS)} to a list of building "
                          f"names, got {got}")
    seen: dict[str, str] = {}
    for split in SPLITS:
        names = lists[split]
        if isinstance(names, str) or not all(isinstance(b, str) and b for b in names):
            raise ConfigError(f"{where}.{split} must be a list of building names, got {names!r}")
        for b in names:
            if b in seen:
                raise ConfigError(f"{where}: building {b!r} is in both {seen[b]} and {split}; "
                                  "a building belongs to one split")
            seen[b] = split
    if not lists["train"]:
        raise ConfigError(f"{where}.train lists no building: training needs at least one")


def split_buildings(buildings: Sequence[str], cfg: SplitConfig) -> dict[str, list[str]]:
    """Assign buildings to splits: each split with a positive fraction gets at least one."""
    if cfg.lists is not None:
        return listed_split(buildings, cfg.lists)
    names = sorted(buildings)
    wanted = [s for s, f in zip(SPLITS, (cfg.train, cfg.val, cfg.test)) if f > 0]
    if len(names) < len(wanted):
        raise DataError(f"{len(names)} building(s) cannot fill the {len(wanted)} splits "
                        f"{wanted}; render more buildings (`taskonomy-ray synth ... --buildings "
                        f"{len(wanted)}`); in Python, a SplitConfig fraction of 0 leaves its "
                        "split out")
    order = [names[i] for i in np.random.default_rng(cfg.seed).permutation(len(names))]
    n = len(names)
    n_val = max(1, round(n * cfg.val)) if cfg.val > 0 else 0
    n_test = max(1, round(n * cfg.test)) if cfg.test > 0 else 0
    while n - n_val - n_test < 1:  # rounding may leave train empty: take from the larger
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return {"train": sorted(order[: n - n_val - n_test]),
            "val": sorted(order[n - n_val - n_test: n - n_test]),
            "test": sorted(order[n - n_test:])}


def listed_split(found: Sequence[str], lists: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The listed buildings of each split that are in `found` (a root's buildings).

    A split that lists buildings but has none of them in the root is an error: the root is not
    the dataset the lists describe (or lacks that part of it).
    """
    have = set(found)
    out = {s: sorted(b for b in lists[s] if b in have) for s in SPLITS}
    for s in SPLITS:
        if lists[s] and not out[s]:
            shown = ", ".join(sorted(lists[s])[:5]) + (", ..." if len(lists[s]) > 5 else "")
            raise DataError(f"none of the {len(lists[s])} {s} buildings of the given split "
                            f"({shown}) is in the dataset root (which has "
                            f"{len(have)} buildings); point the data root at the dataset the "
                            "split describes, or use a split file for the part you have")
    return out


def read_split_file(path: str | Path) -> dict[str, list[str]]:
    """The building lists of a split CSV in the release's format.

    Each row is `name,train,val,test` with 0/1 flags; a building flagged nowhere is left out. A
    header row (the first row whose flags are not 0/1) is optional; when present, it names the
    flag columns, in any order.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of a name
    except (OSError, UnicodeError) as e:
        raise ConfigError(f"cannot read the split file {p}: {e}; give the path of the release's "
                          "train_val_test_<size>.csv (relative paths start where you run)") from e
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    columns: tuple[int, ...] = (1, 2, 3)  # train, val, test
    first = True
    for line, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if len(cells) != 4:
            raise ConfigError(f"{p}, line {line}: expected 4 columns (name,train,val,test), got "
                              f"{len(cells)}: {row}")
        header, first = first and not set(cells[1:]) <= {"0", "1"}, False
        if header:
            names = [c.lower() for c in cells]
            if sorted(names[1:]) != sorted(SPLITS):
                raise ConfigError(f"{p}, line {line}: a header must name the columns train, "
                                  f"val and test after the building's, got {row}")
            columns = tuple(names.index(s) for s in SPLITS)
            continue
        flags = [cells[i] for i in columns]
        if not set(flags) <= {"0", "1"}:
            raise ConfigError(f"{p}, line {line}: the train, val and test columns must be 0 or "
                              f"1, got {flags}")
        chosen = [s for s, f in zip(SPLITS, flags) if f == "1"]
        if len(chosen) > 1:
            raise ConfigError(f"{p}, line {line}: building {cells[0]!r} is flagged for "
                              f"{' and '.join(chosen)}; a building belongs to one split")
        if chosen and cells[0] not in out[chosen[0]]:  # a repeated row says nothing new
            out[chosen[0]].append(cells[0])
    try:
        check_lists(out, str(p))
    except ConfigError as e:
        raise ConfigError(f"{e} (read from the split file)") from None
    return out
