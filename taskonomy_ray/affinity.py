"""Step 3 of the method: ordinal normalisation of transfer results (Analytic Hierarchy Process).

Per-image test losses in, the affinities table (DESIGN.md) out: for each regime and target a
tournament over every transfer into the target, whose principal eigenvector is the affinity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DataError
from .tables import AFFINITIES_SCHEMA, LOSSES_SCHEMA, Storage, check_schema

# W is clipped before the ratio W / W^T so that a transfer that always wins (or always loses)
# gives a finite ratio; the bounds are the paper's (Sec. 3.3).
CLIP = (0.001, 0.999)
GOLD, SCRATCH = ("self",), ("pixels",)
_CHUNK = 1 << 22  # elements of the (n, n, images) comparison block evaluated at once


def win_matrix(losses: np.ndarray) -> np.ndarray:
    """W[i, j] = fraction of images on which row i's loss is lower than row j's, ties half.

    `losses` is (competitors, images). Only the strict "less than" counts are computed: with ties
    counted half, W[i, j] = 1/2 + (lt[i, j] - lt[j, i]) / (2 m), so W + W^T = 1 exactly.
    """
    x = np.ascontiguousarray(losses)
    n, m = x.shape
    if m == 0:
        raise DataError("a tournament needs at least one test image")
    lt = np.zeros((n, n), dtype=np.int64)
    step = max(1, min(m, _CHUNK // max(1, n * n)))
    buf = np.empty((n, n, step), dtype=bool)  # reused: a fresh block each time costs page faults
    for lo in range(0, m, step):
        block = x[:, lo:lo + step]  # (n, c)
        less = buf[:, :, :block.shape[1]]
        np.less(block[:, None, :], block[None, :, :], out=less)  # (n, n, c)
        lt += np.count_nonzero(less, axis=2)
    return 0.5 + (lt - lt.T) / (2.0 * m)


def win_rate(losses: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Fraction of images on which each row of `losses` beats `baseline` (one loss per image)."""
    lower = np.count_nonzero(losses < baseline, axis=1)
    ties = np.count_nonzero(losses == baseline, axis=1)
    return (lower + 0.5 * ties) / losses.shape[1]


def ahp_weights(wins: np.ndarray, clip: tuple[float, float] = CLIP) -> np.ndarray:
    """Principal eigenvector (sum 1) of the reciprocal matrix W' = W / W^T of a win matrix.

    Power iteration from the row geometric means (the exact answer when W' is consistent); a
    dense eigen-decomposition takes over if it has not converged, as both give the Perron vector.
    """
    w = np.clip(np.asarray(wins, dtype=np.float64), *clip)
    ratio = w / w.T
    v = np.exp(np.log(ratio).mean(axis=1))
    v /= v.sum()
    for _ in range(2000):
        nxt = ratio @ v
        nxt /= nxt.sum()
        if np.abs(nxt - v).max() < 1e-15:
            return nxt
        v = nxt
    vals, vecs = np.linalg.eig(ratio)
    top = np.real(vecs[:, np.argmax(np.real(vals))])
    return top / top.sum()


@dataclass(frozen=True)
class _Transfer:
    """One row of the loss matrix: a transfer (or baseline) into one target."""

    regime: int
    sources: tuple[str, ...]
    unit: str


def compute_affinities(losses: pa.Table, *, need_scratch: bool = True) -> pa.Table:
    """The affinities table (AFFINITIES_SCHEMA) of a per-image losses table (LOSSES_SCHEMA).

    Per regime and target the tournament holds every transfer into the target of that regime
    (any order, `random`, the target's own encoder) and the gold standard `self` (whose unit was
    trained on the full set, so it joins every regime); `pixels` (scratch) is left out of the
    tournament and only scores Gain. Every competitor must have a loss on the same test images.
    `need_scratch=False` ranks without a scratch network (the beam search, which reads only
    affinities): where there is none, Gain is NaN.
    """
    table = check_schema(losses, LOSSES_SCHEMA, "losses")
    if table.num_rows == 0:
        raise DataError("the losses table is empty; run `taskonomy-ray sweep` first")
    _check_finite(table, table.column("loss").to_numpy())
    # Work one target at a time on its own rows: every per-row array then has about 1/22 of
    # the rows, so the 30 M-row scale never allocates whole-table temporaries.
    target_codes, target_names = _encode_few(table.column("target"))
    runs = _runs(target_codes)
    parts = []
    for t, target in enumerate(target_names):
        matrix, transfers = _pivot(_rows_of(table, runs, t), target)
        parts.extend(_target_rows(target, matrix, transfers, need_scratch))
    if not parts:
        raise DataError("no transfers to rank: the losses table holds only baselines")
    return pa.Table.from_pylist(parts, schema=AFFINITIES_SCHEMA)


def write_affinities(storage: Storage) -> pa.Table:
    """Read a run's losses, compute the affinities and write `affinities.parquet`; returns it."""
    table = compute_affinities(storage.read_losses())
    storage.write_affinities(table)
    return table


def _encode(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[str]]:
    """Dictionary codes (int64 numpy) and the dictionary of a string column."""
    if isinstance(column, pa.ChunkedArray):
        try:  # one array: encoding thousands of per-unit chunks separately is ~10x slower
            column = column.combine_chunks()
        except pa.ArrowInvalid:  # over 2 GiB of strings: encode chunk by chunk, then unify
            pass
    enc = pc.dictionary_encode(column)
    chunks = enc.unify_dictionaries().chunks if isinstance(enc, pa.ChunkedArray) else [enc]
    if not chunks:
        return np.zeros(0, dtype=np.int64), []
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks])
    return codes.astype(np.int64), chunks[0].dictionary.to_pylist()


def _encode_few(column: pa.ChunkedArray, join: bool = False) -> tuple[np.ndarray, list[str]]:
    """Like `_encode`, for a column with few distinct values that is near constant per chunk.

    Losses arrive as one chunk per unit, each with one target and few source lists, so encoding
    chunk by chunk and merging the small dictionaries beats one pass over 30 M strings.
    `join` first joins a list<string> column with a separator.
    """
    index: dict[str, int] = {}
    parts = []
    for chunk in column.chunks:
        if join:
            chunk = pc.binary_join(chunk, "\x1f")
        enc = pc.dictionary_encode(chunk)
        remap = np.array([index.setdefault(v, len(index)) for v in enc.dictionary.to_pylist()],
                         dtype=np.int64)
        parts.append(remap[enc.indices.to_numpy(zero_copy_only=False)] if len(remap) else
                     np.zeros(len(chunk), dtype=np.int64))
    codes = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return codes, list(index)


def _check_finite(table: pa.Table, loss: np.ndarray) -> None:
    bad = ~np.isfinite(loss)
    if bad.any():
        units = sorted(set(table.column("unit").take(np.flatnonzero(bad)[:1000]).to_pylist()))
        raise DataError(
            f"{int(bad.sum())} non-finite losses in unit(s) {units[:5]}: the training diverged; "
            "delete those units' loss files and re-run them (lower the learning rate)"
        )


def _runs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, code) of every run of equal consecutive codes."""
    starts = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate([np.zeros(1, dtype=np.int64), starts])
    ends = np.concatenate([starts[1:], np.array([len(codes)], dtype=np.int64)])
    return starts, ends, codes[starts]


def _rows_of(table: pa.Table, runs: tuple[np.ndarray, ...], code: int) -> pa.Table:
    """The rows of one target, as zero-copy slices when they form few runs.

    Runs are the usual case (one unit per chunk); scattered rows are gathered instead.
    """
    starts, ends, codes = runs
    pick = codes == code
    if pick.sum() > 64 + table.num_rows // 1024:  # scattered rows: gathering them is cheaper
        rows = np.concatenate([np.arange(a, b) for a, b in zip(starts[pick], ends[pick])])
        return table.take(rows)
    return pa.concat_tables([table.slice(a, b - a) for a, b in zip(starts[pick], ends[pick])])


def _pivot(part: pa.Table, target: str) -> tuple[np.ndarray, list[_Transfer]]:
    """(transfers, images) loss matrix of one target's rows, refusing duplicates and gaps."""
    src, src_names = _encode(pc.binary_join(part.column("sources"), "\x1f"))
    im, img_names = _encode(part.column("image"))
    regimes = part.column("regime").to_numpy().astype(np.int64)
    is_gold = np.array([tuple(s.split("\x1f")) == GOLD for s in src_names], dtype=bool)[src]
    reg = np.where(is_gold, -1, regimes)  # the gold standard joins every regime
    key = reg * (len(src_names) + 1) + src
    ukeys, first, tr = np.unique(key, return_index=True, return_inverse=True)
    units = part.column("unit")
    transfers = [
        _Transfer(int(regimes[f]) if int(k // (len(src_names) + 1)) >= 0 else -1,
                  tuple(src_names[int(k % (len(src_names) + 1))].split("\x1f")),
                  units[int(f)].as_py())
        for k, f in zip(ukeys, first)
    ]
    matrix = np.full((len(ukeys), len(img_names)), np.nan, dtype=np.float32)
    matrix[tr, im] = part.column("loss").to_numpy()
    filled = np.count_nonzero(~np.isnan(matrix), axis=1)
    counts = np.bincount(tr, minlength=len(ukeys))
    for i, tf in enumerate(transfers):
        what = f"target {target!r}, sources {list(tf.sources)} (unit {tf.unit})"
        if counts[i] != filled[i]:
            writers = sorted(set(units.filter(pa.array(tr == i)).to_pylist()))
            raise DataError(f"{what}: {counts[i] - filled[i]} duplicate image losses, written "
                            f"by units {writers}; the same transfer was written twice: delete "
                            "all but one of their loss files")
        if filled[i] != len(img_names):
            missing = [img_names[int(j)] for j in np.flatnonzero(np.isnan(matrix[i]))[:3]]
            raise DataError(f"{what}: no loss on {len(img_names) - filled[i]} of the "
                            f"{len(img_names)} test images of this target (e.g. {missing}); "
                            "every transfer must be tested on the same images. If the dataset "
                            "changed since other units ran (adding or removing buildings "
                            "moves buildings between splits), start a new storage; otherwise "
                            "re-run that unit")
    return matrix, transfers


def _target_rows(target: str, matrix: np.ndarray, transfers: list[_Transfer],
                 need_scratch: bool = True) -> list[dict]:
    """Affinity, quality and gain of every transfer into `target`, one regime at a time."""
    gold = [i for i, t in enumerate(transfers) if t.sources == GOLD]
    if len(gold) != 1:
        raise DataError(f"target {target!r}: no gold-standard (`self`) losses; train its task "
                        "network (stage 1) before ranking transfers into it")
    rows = []
    for regime in sorted({t.regime for t in transfers if t.regime >= 0}):
        idx = [i for i, t in enumerate(transfers) if t.regime == regime and t.sources != SCRATCH]
        if not idx:  # scratch only (transfers not trained yet): nothing to rank in this regime
            continue
        scratch = [i for i, t in enumerate(transfers)
                   if t.regime == regime and t.sources == SCRATCH]
        if not scratch and need_scratch:
            raise DataError(f"target {target!r}, regime {regime}: no scratch (`pixels`) losses; "
                            "train its scratch network for this regime (stage 1b)")
        competitors = [*idx, gold[0]]
        block = matrix[competitors]
        wins = win_matrix(block)
        affinity = ahp_weights(wins)
        quality = wins[:, -1]
        gain = (win_rate(block, matrix[scratch[0]]) if scratch
                else np.full(len(competitors), np.nan))
        for k, i in enumerate(competitors):
            rows.append({"regime": regime, "target": target, "sources": list(transfers[i].sources),
                         "order": len(transfers[i].sources), "affinity": float(affinity[k]),
                         "quality": float(quality[k]), "gain": float(gain[k])})
    return rows
