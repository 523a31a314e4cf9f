"""Targets whose affinity rows the report flags as not to be trusted, and why.

Pure: read from the affinities table alone (no torch, no Ray).
"""

from __future__ import annotations

import pyarrow as pa

PSEUDO_COLUMNS = ("self", "pixels")  # not transfer sources: kept out of the matrices
RANDOM = "random"  # the untrained encoder every useful source should beat


def hopeless_targets(table: pa.Table, regime: int) -> list[str]:
    """Targets every transfer of which (any source, any order) lost to gold on every image.

    Then the target's affinities rank nothing and the taxonomy can only supervise it: a sign
    of a broken transfer (labels far from the transfer's start, a wrong scale), worth a look
    before trusting the taxonomy.
    """
    best: dict[str, float] = {}
    for r in table.to_pylist():  # (a quality not measured, None, says nothing either way)
        if (r["regime"] == regime and r["sources"][0] not in PSEUDO_COLUMNS
                and r["quality"] is not None):
            best[r["target"]] = max(best.get(r["target"], 0.0), r["quality"])
    return [t for t, q in best.items() if q == 0.0]


def random_led_targets(table: pa.Table, regime: int) -> list[str]:
    """Targets whose highest first-order affinity is the untrained `random` encoder's transfer.

    No trained representation helps them more than any image features do, so their edges say
    little (at the embedded default's scale, usually a target its gold network barely learned,
    or a regime too small for its transfers not to overfit).
    """
    rand: dict[str, float] = {}
    trained: dict[str, float] = {}
    for r in table.to_pylist():
        if r["regime"] != regime or r["order"] != 1 or r["affinity"] is None:
            continue
        source = r["sources"][0]
        if source == RANDOM:
            rand[r["target"]] = r["affinity"]
        elif source not in PSEUDO_COLUMNS:
            trained[r["target"]] = max(trained.get(r["target"], 0.0), r["affinity"])
    return [t for t, a in rand.items() if t in trained and a > trained[t]]
