"""The published Taskonomy results as an affinities table, so steps 4-5 run on the paper's numbers.

Reads the shared `transfers.csv`, or the `results/` folder of a clone of StanfordVL/taskonomy
(pickles of `{"src1__...__target": float}`) through an unpickler that only builds plain data.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from . import tasks
from .errors import DataError, UnknownNameError
from .tables import AFFINITIES_SCHEMA, bad_scores, rows_table

# A source of the published table outside the 26-task dictionary: object classification trained
# on a selected subset of classes. Kept as a name the solver accepts only through --sources.
EXTRA_SOURCES = {"class_selected": "class_object_selected"}
PSEUDO = ("self", "pixels", "random")
# Regime of a results pickle from its file-name suffix (`..._16k.pkl` -> 16000). Files without
# a suffix repeat one of the regimes without saying which, so they are not read.
_SUFFIX = re.compile(r"_(\d+)k\.pkl$")
_FILES = {"affinity": "all_affinities", "quality": "wins_vs_task", "gain": "wins_vs_pixels"}


def task_name(name: str) -> str:
    """The dataset name of a task as named in the published results (legacy or current)."""
    if name in PSEUDO:
        return name
    if name in EXTRA_SOURCES or name in EXTRA_SOURCES.values():
        return EXTRA_SOURCES.get(name, name)
    return tasks.from_legacy_name(name)


def load_published(path: str | Path) -> pa.Table:
    """The affinities table of a published `transfers.csv` or of a clone's `results/` folder."""
    p = Path(path)
    if p.is_dir() or p.is_file():
        table = read_results_dir(p) if p.is_dir() else read_published_csv(p)
        bad = bad_scores(table, None if p.is_dir() else 2)  # (CSV: line 1 is the header)
        if bad:
            raise DataError(f"{p}: {bad}; correct it there (the published values are "
                            "affinities >= 0 and win rates in [0, 1], one row per transfer)")
        return table
    raise DataError(f"{p} does not exist; pass the published transfers.csv or the results/ "
                    "folder of a StanfordVL/taskonomy clone")


def read_published_csv(path: str | Path) -> pa.Table:
    """Read `transfers.csv` (columns of its README) into AFFINITIES_SCHEMA.

    wins_vs_task becomes `quality` and wins_vs_pixels `gain`; empty cells stay null.
    """
    types = {"regime": pa.int32(), "target": pa.string(), "sources": pa.string(),
             "order": pa.int8(), "affinity": pa.float64(), "wins_vs_task": pa.float64(),
             "wins_vs_pixels": pa.float64()}
    try:
        # Only an empty cell is missing: Arrow's default also reads "nan", "NA" and "null" as
        # null, which would pass a damaged value as an unranked transfer.
        raw = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types=types, null_values=[""]))
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"cannot read the published table {path}: {e}") from e
    missing = [c for c in types if c not in raw.column_names]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; is this the published transfers.csv?")
    rows = []
    for line, r in enumerate(raw.to_pylist(), start=2):  # line 1 is the header
        try:
            sources = [task_name(s) for s in r["sources"].split("+")]
            target = task_name(r["target"])
        except UnknownNameError as e:
            raise DataError(f"{path}, line {line}: {e}") from None
        if len(sources) != r["order"]:
            raise DataError(f"{path}: row {r} has order {r['order']} but {len(sources)} sources")
        rows.append(_row(r["regime"], target, sources, r["affinity"],
                         r["wins_vs_task"], r["wins_vs_pixels"]))
    return rows_table(rows, AFFINITIES_SCHEMA)


def read_results_dir(folder: str | Path) -> pa.Table:
    """Read the pickles of a StanfordVL/taskonomy `results/` folder (or of the clone's root).

    Per regime, the keys of the affinity and win-rate pickles are joined; a transfer missing
    from one of them gets a null there (the published tables have a few unranked transfers).
    """
    root = Path(folder)
    if (root / "results").is_dir():
        root = root / "results"
    values: dict[tuple[int, str], dict[str, float]] = {}
    found = 0
    for column, stem in _FILES.items():
        for f in sorted(root.rglob(f"{stem}_*k.pkl")):
            match = _SUFFIX.search(f.name)
            if not match:
                continue
            regime = int(match.group(1)) * 1000
            found += 1
            for key, value in load_plain_pickle(f).items():
                values.setdefault((regime, key), {})[column] = value
    if not found:
        raise DataError(f"no results pickles (all_affinities_*k.pkl, wins_vs_task_*k.pkl, "
                        f"wins_vs_pixels_*k.pkl) under {root}; pass the results/ folder of a "
                        "StanfordVL/taskonomy clone")
    rows = []
    for (regime, key), v in sorted(values.items()):
        *sources, target = key.split("__")
        if not sources:
            raise DataError(f"key {key!r} has no source; expected 'src1__...__target'")
        try:
            names = [task_name(s) for s in sources], task_name(target)
        except UnknownNameError as e:
            raise DataError(f"{root}, key {key!r} of the {regime // 1000}k pickles: {e}") from None
        rows.append(_row(regime, names[1], names[0], v.get("affinity"), v.get("quality"),
                         v.get("gain")))
    return rows_table(rows, AFFINITIES_SCHEMA)


def _row(regime: int, target: str, sources: list[str], affinity: float | None,
         quality: float | None, gain: float | None) -> dict[str, Any]:
    if target in tasks.SOURCE_ONLY or target not in tasks.BY_NAME:
        raise DataError(f"{target!r} is not a target task of the dictionary")
    return {"regime": regime, "target": target, "sources": sources, "order": len(sources),
            "affinity": affinity, "quality": quality, "gain": gain}


# --- a pickle reader that builds numbers and containers only ---------------------------------

_NUMERIC_KINDS = "biuf"


def _scalar(dtype: Any, data: Any = None) -> float | int:
    """The numpy scalar reconstructor, limited to numeric dtypes and returning a Python number."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS:
        raise DataError(f"refusing a pickled numpy scalar of dtype {dtype!r}")
    buf = data.encode("latin1") if isinstance(data, str) else data
    if not isinstance(buf, bytes) or len(buf) != dtype.itemsize:
        raise DataError("malformed pickled numpy scalar")
    return np.frombuffer(buf, dtype=dtype)[0].item()


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """The numpy dtype constructor, limited to plain numeric type codes."""
    if not isinstance(spec, str) or not re.fullmatch(r"[<>=|]?[biuf]\d{1,2}", spec):
        raise DataError(f"refusing a pickled numpy dtype {spec!r}")
    return np.dtype(spec)


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """How protocol-2 pickles from Python 3 spell a bytes object; only this use is allowed."""
    if not isinstance(text, str) or encoding != "latin1":
        raise DataError("refusing a pickled call to _codecs.encode")
    return text.encode("latin1")


_ALLOWED = {
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "dtype"): _dtype,
}


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, strings and numbers; any other class or call is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(f"refusing to unpickle {module}.{name}: the published results hold "
                            "only plain containers and numbers, so this file is not one of "
                            "them (or it was tampered with)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError("refusing a pickle with persistent references")


def load_plain_pickle(path: str | Path) -> dict[str, float]:
    """A `{str: number}` pickle (Python 2 or 3), read without running any pickled code."""
    data = Path(path).read_bytes()
    try:
        obj = _PlainUnpickler(io.BytesIO(data), encoding="latin1").load()
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DataError(f"{path} is not a readable pickle: {e}") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict of transfer keys to numbers, got "
                        f"{type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if isinstance(k, bytes):
            k = k.decode("latin1")
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)):
            raise DataError(f"{path}: entry {k!r}: {v!r} is not 'src__...__target': number")
        out[k] = float(v)
    return out


def load_affinities(storage: str | None = None, published: str | Path | None = None) -> pa.Table:
    """The affinities of a run's storage, or of the published results: exactly one of the two."""
    if (storage is None) == (published is None):
        raise DataError("give either a run STORAGE or --published CSV_OR_RESULTS_DIR (one of them)")
    if published is not None:
        return load_published(published)
    from .tables import Storage

    return Storage(str(storage)).read_affinities()
