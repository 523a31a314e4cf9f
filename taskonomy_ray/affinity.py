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


def compute_affinities(losses: pa.Table) -> pa.Table:
    """The affinities table (AFFINITIES_SCHEMA) of a per-image losses table (LOSSES_SCHEMA).

    Per regime and target the tournament holds every transfer into the target of that regime
    (any order, `random`, the target's own encoder) and the gold standard `self` (whose unit was
    trained on the full set, so it joins every regime); `pixels` (scratch) is left out of the
    tournament and only scores Gain. Every competitor must have a loss on the same test images.
    """
    table = check_schema(losses, LOSSES_SCHEMA, "losses")
    if table.num_rows == 0:
        raise DataError("the losses table is empty; run `taskonomy-ray sweep` first")
    loss = table.column("loss").to_numpy().astype(np.float32, copy=False)
    _check_finite(table, loss)
    target_codes, target_names = _encode(table.column("target"))
    small = np.int16 if len(target_names) < 2**15 else np.int64  # int16: numpy's radix sort
    order = np.argsort(target_codes.astype(small), kind="stable")
    bounds = np.searchsorted(target_codes[order], np.arange(len(target_names) + 1))
    keys = pc.binary_join(table.column("sources"), "\x1f")
    src_codes, src_names = _encode(keys)
    img_codes, img_names = _encode(table.column("image"))
    units = table.column("unit")  # read only where a transfer starts, for error messages
    regimes = table.column("regime").to_numpy()
    parts = []
    for t, target in enumerate(target_names):
        rows = order[bounds[t]:bounds[t + 1]]
        matrix, transfers = _pivot(rows, regimes, src_codes, src_names, img_codes, img_names,
                                   units, loss, target)
        parts.extend(_target_rows(target, matrix, transfers))
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


def _check_finite(table: pa.Table, loss: np.ndarray) -> None:
    bad = ~np.isfinite(loss)
    if bad.any():
        units = sorted(set(table.column("unit").take(np.flatnonzero(bad)[:1000]).to_pylist()))
        raise DataError(
            f"{int(bad.sum())} non-finite losses in unit(s) {units[:5]}: the training diverged; "
            "delete those units' loss files and re-run them (lower the learning rate)"
        )


def _pivot(rows: np.ndarray, regimes: np.ndarray, src_codes: np.ndarray, src_names: list[str],
           img_codes: np.ndarray, img_names: list[str], units: pa.ChunkedArray,
           loss: np.ndarray, target: str
           ) -> tuple[np.ndarray, list[_Transfer]]:
    """(transfers, images) loss matrix of one target, refusing duplicates and missing images."""
    src = src_codes[rows]
    reg = regimes[rows].astype(np.int64)
    is_gold = np.array([tuple(s.split("\x1f")) == GOLD for s in src_names])[src]
    reg = np.where(is_gold, -1, reg)  # the gold standard joins every regime
    key = reg * (len(src_names) + 1) + src
    ukeys, first, tr = np.unique(key, return_index=True, return_inverse=True)
    uimg, im = np.unique(img_codes[rows], return_inverse=True)
    transfers = [
        _Transfer(int(regimes[rows[f]]) if int(k // (len(src_names) + 1)) >= 0 else -1,
                  tuple(src_names[int(k % (len(src_names) + 1))].split("\x1f")),
                  units[int(rows[f])].as_py())
        for k, f in zip(ukeys, first)
    ]
    matrix = np.full((len(ukeys), len(uimg)), np.nan, dtype=np.float32)
    matrix[tr, im] = loss[rows]
    filled = np.count_nonzero(~np.isnan(matrix), axis=1)
    counts = np.bincount(tr, minlength=len(ukeys))
    for i, tf in enumerate(transfers):
        what = f"target {target!r}, sources {list(tf.sources)} (unit {tf.unit})"
        if counts[i] != filled[i]:
            raise DataError(f"{what}: {counts[i] - filled[i]} duplicate image losses; the same "
                            "transfer was written twice: delete one of its loss files")
        if filled[i] != len(uimg):
            missing = [img_names[int(uimg[j])] for j in np.flatnonzero(np.isnan(matrix[i]))[:3]]
            raise DataError(f"{what}: no loss on {len(uimg) - filled[i]} of the {len(uimg)} test "
                            f"images of this target (e.g. {missing}); every transfer must be "
                            "tested on the same images: re-run that unit's evaluation")
    return matrix, transfers


def _target_rows(target: str, matrix: np.ndarray, transfers: list[_Transfer]) -> list[dict]:
    """Affinity, quality and gain of every transfer into `target`, one regime at a time."""
    gold = [i for i, t in enumerate(transfers) if t.sources == GOLD]
    if len(gold) != 1:
        raise DataError(f"target {target!r}: no gold-standard (`self`) losses; train its task "
                        "network (stage 1) before ranking transfers into it")
    rows = []
    for regime in sorted({t.regime for t in transfers if t.regime >= 0}):
        idx = [i for i, t in enumerate(transfers) if t.regime == regime and t.sources != SCRATCH]
        scratch = [i for i, t in enumerate(transfers)
                   if t.regime == regime and t.sources == SCRATCH]
        if not scratch:
            raise DataError(f"target {target!r}, regime {regime}: no scratch (`pixels`) losses; "
                            "train its scratch network for this regime (stage 1b)")
        competitors = [*idx, gold[0]]
        block = matrix[competitors]
        wins = win_matrix(block)
        affinity = ahp_weights(wins)
        quality = wins[:, -1]
        gain = win_rate(block, matrix[scratch[0]])
        for k, i in enumerate(competitors):
            rows.append({"regime": regime, "target": target, "sources": list(transfers[i].sources),
                         "order": len(transfers[i].sources), "affinity": float(affinity[k]),
                         "quality": float(quality[k]), "gain": float(gain[k])})
    return rows
