"""Mini-Taskonomy rendering, step 1b: furniture as composites of analytic primitives.

Each builder returns object instances in a local frame: the footprint spans x in [-w/2, w/2] and
y in [-d/2, d/2], the back is at y = +d/2 (against a wall), z = 0 is the floor. A primitive names a
material slot that the room maps onto its building's style.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# The object categories (segment_semantic ids 2.. in this order; class_object's entries).
CATEGORIES = (
    "chair", "table", "sofa", "bed", "shelf", "cabinet", "lamp", "tv", "plant", "toilet",
    "sink", "bathtub", "refrigerator", "oven", "rug", "vase",
)

Prim = tuple[str, tuple[float, ...], str]  # ("box" | "cyl" | "sph", parameters, material slot)


@dataclass
class Piece:
    """One object instance: its category and primitives in the local frame."""

    category: str
    prims: Sequence[Prim]


@dataclass
class Item:
    """What a builder returns: the pieces and the footprint size (w along x, d along y)."""

    pieces: list[Piece]
    w: float
    d: float


def box(x0: float, y0: float, z0: float, x1: float, y1: float, z1: float, slot: str) -> Prim:
    """An axis-aligned box primitive."""
    return ("box", (x0, y0, z0, x1, y1, z1), slot)


def _legs(w: float, d: float, h: float, t: float, slot: str, round_: bool) -> list[Prim]:
    out = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx, cy = sx * (w / 2 - t), sy * (d / 2 - t)
            out.append(("cyl", (cx, cy, 0.0, h, t / 2), slot) if round_
                       else box(cx - t / 2, cy - t / 2, 0, cx + t / 2, cy + t / 2, h, slot))
    return out


def table(rng: np.random.Generator, low: bool = False) -> Item:
    """A table (top + legs, or a round pedestal table), maybe with a vase on it."""
    h = rng.uniform(0.38, 0.46) if low else rng.uniform(0.72, 0.77)
    if not low and rng.random() < 0.3:
        r = rng.uniform(0.4, 0.6)
        prims: list[Prim] = [("cyl", (0, 0, h - 0.04, h, r), "wood"),
                             ("cyl", (0, 0, 0.02, h, 0.05), "metal"),
                             ("cyl", (0, 0, 0, 0.03, 0.25), "metal")]
        w = d = 2 * r
    else:
        w, d = rng.uniform(0.9, 1.7), rng.uniform(0.6, 0.95)
        prims = [box(-w / 2, -d / 2, h - 0.04, w / 2, d / 2, h, "wood"),
                 *_legs(w, d, h - 0.04, 0.06, "wood", bool(rng.random() < 0.4))]
    pieces = [Piece("table", prims)]
    if rng.random() < 0.5:
        r = rng.uniform(0.06, 0.1)
        pieces.append(Piece("vase", [("sph", (0.1, 0.05, h + r * 0.9, r), "ceramic"),
                                     ("cyl", (0.1, 0.05, h + r * 1.6, h + r * 2.4, r / 3),
                                      "ceramic")]))
    return Item(pieces, w, d)


def chair(rng: np.random.Generator) -> Item:
    """A chair: seat, four legs and a back (the back at +y)."""
    s, h = rng.uniform(0.42, 0.5), rng.uniform(0.43, 0.47)
    prims = [box(-s / 2, -s / 2, h - 0.05, s / 2, s / 2, h, "wood"),
             *_legs(s, s, h - 0.05, 0.04, "wood", bool(rng.random() < 0.5)),
             box(-s / 2, s / 2 - 0.05, h, s / 2, s / 2, h + rng.uniform(0.35, 0.5), "wood")]
    if rng.random() < 0.5:
        prims.append(box(-s / 2 + 0.03, -s / 2 + 0.03, h, s / 2 - 0.03, s / 2 - 0.07, h + 0.05,
                         "fabric"))
    return Item([Piece("chair", prims)], s, s)


def dining_set(rng: np.random.Generator) -> Item:
    """A table with chairs pulled up on its long sides, as one footprint."""
    t = table(rng)
    pieces = list(t.pieces)
    n = int(rng.integers(1, 3))
    for side in (-1, 1):
        for k in range(n):
            x = (k - (n - 1) / 2) * t.w / max(n, 1) * 0.9
            c = chair(rng).pieces[0]
            # Rotate the chair to face the table: its back to the outside.
            prims = [_flip_y(p) if side < 0 else p for p in c.prims]
            pieces.append(Piece("chair", [_shift(p, x, side * (t.d / 2 + 0.1)) for p in prims]))
    return Item(pieces, max(t.w, 1.0), t.d + 1.2)


def sofa(rng: np.random.Generator) -> Item:
    """A sofa: base, back, two arms and seat cushions."""
    w, d, sh = rng.uniform(1.6, 2.4), rng.uniform(0.8, 0.95), rng.uniform(0.38, 0.44)
    arm = 0.18
    prims = [box(-w / 2, -d / 2, 0.08, w / 2, d / 2, sh, "fabric"),
             box(-w / 2, d / 2 - 0.2, sh, w / 2, d / 2, sh + rng.uniform(0.4, 0.5), "fabric"),
             box(-w / 2, -d / 2, sh, -w / 2 + arm, d / 2, sh + 0.22, "fabric"),
             box(w / 2 - arm, -d / 2, sh, w / 2, d / 2, sh + 0.22, "fabric"),
             *_legs(w, d, 0.08, 0.05, "metal", True)]
    n = int(rng.integers(2, 4))
    inner = (w - 2 * arm) / n
    for k in range(n):
        x0 = -w / 2 + arm + k * inner
        prims.append(box(x0 + 0.01, -d / 2 + 0.02, sh, x0 + inner - 0.01, d / 2 - 0.2, sh + 0.08,
                         "fabric2"))
    return Item([Piece("sofa", prims)], w, d)


def bed(rng: np.random.Generator) -> Item:
    """A bed: frame, mattress, blanket, headboard (+y) and pillows."""
    w, d = (rng.uniform(1.4, 1.8) if rng.random() < 0.7 else rng.uniform(0.9, 1.0)), 2.05
    prims = [box(-w / 2, -d / 2, 0.0, w / 2, d / 2, 0.3, "wood"),
             box(-w / 2 + 0.03, -d / 2 + 0.03, 0.3, w / 2 - 0.03, d / 2 - 0.06, 0.52, "fabric"),
             box(-w / 2, -d / 2, 0.42, w / 2, d / 2 - 0.55, 0.55, "fabric2"),
             box(-w / 2, d / 2 - 0.06, 0.0, w / 2, d / 2, rng.uniform(0.9, 1.2), "wood")]
    n = 2 if w > 1.2 else 1
    for k in range(n):
        x = (k - (n - 1) / 2) * w / 2
        prims.append(box(x - 0.3, d / 2 - 0.5, 0.52, x + 0.3, d / 2 - 0.12, 0.64, "ceramic"))
    return Item([Piece("bed", prims)], w, d)


def shelf(rng: np.random.Generator) -> Item:
    """A bookshelf: sides, back, boards and blocks of book spines."""
    w, d, h = rng.uniform(0.7, 1.3), rng.uniform(0.28, 0.36), rng.uniform(1.5, 2.1)
    n = int(rng.integers(3, 6))
    t = 0.025
    prims = [box(-w / 2, -d / 2, 0, -w / 2 + t, d / 2, h, "wood"),
             box(w / 2 - t, -d / 2, 0, w / 2, d / 2, h, "wood"),
             box(-w / 2, d / 2 - 0.01, 0, w / 2, d / 2, h, "wood")]
    for k in range(n + 1):
        z = k * (h - t) / n
        prims.append(box(-w / 2 + t, -d / 2, z, w / 2 - t, d / 2 - 0.01, z + t, "wood"))
        if k < n and rng.random() < 0.85:
            bw = rng.uniform(0.4, 0.95) * (w - 2 * t)
            x0 = -w / 2 + t + rng.uniform(0, w - 2 * t - bw)
            bh = min(rng.uniform(0.18, 0.3), (h - t) / n - t - 0.02)
            prims.append(box(x0, -d / 2 + 0.03, z + t, x0 + bw, d / 2 - 0.03, z + t + bh, "books"))
    return Item([Piece("shelf", prims)], w, d)


def cabinet(rng: np.random.Generator, w: float | None = None, h: float | None = None) -> Item:
    """A cabinet: body, door panels proud of the front by 1 cm, spherical knobs."""
    w = rng.uniform(0.5, 1.2) if w is None else w
    h = rng.uniform(0.55, 1.0) if h is None else h
    d = rng.uniform(0.4, 0.55)
    prims = [box(-w / 2, -d / 2 + 0.01, 0, w / 2, d / 2, h, "wood")]
    n = max(1, int(round(w / 0.5)))
    for k in range(n):
        x0 = -w / 2 + k * w / n
        prims.append(box(x0 + 0.015, -d / 2, 0.08, x0 + w / n - 0.015, -d / 2 + 0.011, h - 0.03,
                         "accent"))
        prims.append(("sph", (x0 + w / n - 0.07, -d / 2 - 0.012, h - 0.12, 0.018), "metal"))
    return Item([Piece("cabinet", prims)], w, d)


def tv_stand(rng: np.random.Generator) -> Item:
    """A low cabinet with a television (screen on a stand) on top."""
    c = cabinet(rng, w=rng.uniform(1.0, 1.6), h=rng.uniform(0.45, 0.6))
    h = c.pieces[0].prims[0][1][5]
    sw = min(c.w - 0.1, rng.uniform(0.8, 1.3))
    sh = sw * 0.58
    tv = [("cyl", (0, 0.05, h, h + 0.08, 0.12), "metal"),
          box(-sw / 2, 0.0, h + 0.08, sw / 2, 0.05, h + 0.08 + sh, "screen")]
    return Item([c.pieces[0], Piece("tv", tv)], c.w, c.d)


def desk(rng: np.random.Generator) -> Item:
    """A desk (table) with a monitor and a chair in front of it."""
    t = table(rng)
    if t.pieces[0].prims[0][0] == "cyl":  # a round table is no desk: use a rectangular one
        return desk(rng)
    h = t.pieces[0].prims[0][1][5]
    sw = rng.uniform(0.45, 0.65)
    y = t.d / 2 - 0.15
    tv = Piece("tv", [("cyl", (0, y, h, h + 0.12, 0.08), "metal"),
                      box(-sw / 2, y - 0.03, h + 0.12, sw / 2, y, h + 0.12 + sw * 0.6, "screen")])
    c = chair(rng).pieces[0]
    ch = Piece("chair", [_shift(_flip_y(p), 0.0, -t.d / 2 - 0.15) for p in c.prims])
    return Item([t.pieces[0], tv, ch], t.w, t.d + 0.9)


def floor_lamp(rng: np.random.Generator) -> Item:
    """A floor lamp: base disc, pole, and a cylindrical or spherical shade."""
    hgt = rng.uniform(1.3, 1.7)
    prims: list[Prim] = [("cyl", (0, 0, 0, 0.03, 0.16), "metal"),
                         ("cyl", (0, 0, 0.03, hgt, 0.015), "metal")]
    if rng.random() < 0.5:
        prims.append(("cyl", (0, 0, hgt - 0.05, hgt + 0.25, 0.2), "accent"))
    else:
        prims.append(("sph", (0, 0, hgt + 0.1, 0.16), "ceramic"))
    return Item([Piece("lamp", prims)], 0.4, 0.4)


def plant(rng: np.random.Generator) -> Item:
    """A potted plant: a cylindrical pot and a few spherical clumps of foliage."""
    r, ph = rng.uniform(0.12, 0.2), rng.uniform(0.25, 0.4)
    prims: list[Prim] = [("cyl", (0, 0, 0, ph, r), "pot")]
    for _ in range(int(rng.integers(2, 5))):
        fr = rng.uniform(0.15, 0.25)
        prims.append(("sph", (rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1),
                              ph + fr + rng.uniform(0.0, 0.35), fr), "plant"))
    return Item([Piece("plant", prims)], 2 * r + 0.3, 2 * r + 0.3)


def toilet(rng: np.random.Generator) -> Item:
    """A toilet: pedestal, round bowl and a tank against the wall."""
    return Item([Piece("toilet", [box(-0.15, -0.2, 0, 0.15, 0.2, 0.3, "ceramic"),
                                  ("cyl", (0, -0.05, 0.3, 0.42, 0.2), "ceramic"),
                                  box(-0.2, 0.12, 0.3, 0.2, 0.3, 0.8, "ceramic")])], 0.45, 0.6)


def sink(rng: np.random.Generator) -> Item:
    """A vanity: a cabinet body with a basin on top."""
    w = rng.uniform(0.6, 1.0)
    return Item([Piece("sink", [box(-w / 2, -0.25, 0, w / 2, 0.25, 0.8, "accent"),
                                ("cyl", (0, -0.02, 0.8, 0.9, 0.2), "ceramic"),
                                ("cyl", (0, 0.18, 0.8, 1.0, 0.02), "metal")])], w, 0.5)


def bathtub(rng: np.random.Generator) -> Item:
    """A bathtub: a floor slab and four rims around an open (concave) interior."""
    w, d, h, t = rng.uniform(0.7, 0.8), rng.uniform(1.5, 1.8), 0.55, 0.08
    return Item([Piece("bathtub", [box(-w / 2, -d / 2, 0, w / 2, d / 2, 0.12, "ceramic"),
                                   box(-w / 2, -d / 2, 0, -w / 2 + t, d / 2, h, "ceramic"),
                                   box(w / 2 - t, -d / 2, 0, w / 2, d / 2, h, "ceramic"),
                                   box(-w / 2, -d / 2, 0, w / 2, -d / 2 + t, h, "ceramic"),
                                   box(-w / 2, d / 2 - t, 0, w / 2, d / 2, h, "ceramic")])], w, d)


def refrigerator(rng: np.random.Generator) -> Item:
    """A refrigerator: a tall body, two doors and vertical handle bars."""
    w, h = rng.uniform(0.6, 0.8), rng.uniform(1.7, 1.95)
    split = h * 0.35
    return Item([Piece("refrigerator", [
        box(-w / 2, -0.33, 0, w / 2, 0.35, h, "metal"),
        box(-w / 2 + 0.01, -0.35, 0.02, w / 2 - 0.01, -0.33, split - 0.01, "metal"),
        box(-w / 2 + 0.01, -0.35, split + 0.01, w / 2 - 0.01, -0.33, h - 0.02, "metal"),
        ("cyl", (w / 2 - 0.08, -0.38, split + 0.1, split + 0.6, 0.015), "dark"),
        ("cyl", (w / 2 - 0.08, -0.38, split - 0.35, split - 0.1, 0.015), "dark")])], w, 0.75)


def oven(rng: np.random.Generator) -> Item:
    """A stove: a body, a dark oven window and four burners."""
    w = 0.6
    prims = [box(-w / 2, -0.3, 0, w / 2, 0.3, 0.9, "metal"),
             box(-0.22, -0.31, 0.2, 0.22, -0.3, 0.6, "screen")]
    for sx in (-1, 1):
        for sy in (-1, 1):
            prims.append(("cyl", (sx * 0.14, sy * 0.13, 0.9, 0.915, 0.08), "dark"))
    return Item([Piece("oven", prims)], w, 0.62)


def counter(rng: np.random.Generator) -> Item:
    """A kitchen counter run: base cabinets under a worktop."""
    c = cabinet(rng, w=rng.uniform(1.2, 2.4), h=0.86)
    top = box(-c.w / 2, -c.d / 2 - 0.03, 0.86, c.w / 2, c.d / 2, 0.9, "worktop")
    return Item([Piece("cabinet", [*c.pieces[0].prims, top])], c.w, c.d + 0.03)


def rug(rng: np.random.Generator) -> Item:
    """A rug: a 1 cm slab whose outline is a texture edge, not an occlusion edge."""
    w, d = rng.uniform(1.2, 2.4), rng.uniform(0.8, 1.8)
    return Item([Piece("rug", [box(-w / 2, -d / 2, 0, w / 2, d / 2, 0.01, "rug")])], w, d)


def _shift(p: Prim, dx: float, dy: float) -> Prim:
    kind, a, slot = p
    if kind == "box":
        return (kind, (a[0] + dx, a[1] + dy, a[2], a[3] + dx, a[4] + dy, a[5]), slot)
    return (kind, (a[0] + dx, a[1] + dy, *a[2:]), slot)


def _flip_y(p: Prim) -> Prim:
    kind, a, slot = p
    if kind == "box":
        return (kind, (a[0], -a[4], a[2], a[3], -a[1], a[5]), slot)
    return (kind, (a[0], -a[1], *a[2:]), slot)


def _bounds(p: Prim) -> tuple[float, float, float, float]:
    kind, a, _ = p
    if kind == "box":
        return a[0], a[1], a[3], a[4]
    r = a[4] if kind == "cyl" else a[3]
    return a[0] - r, a[1] - r, a[0] + r, a[1] + r


def normalised(item: Item) -> Item:
    """The item re-centred on its primitives' true footprint (back edge at y = +d/2)."""
    b = np.array([_bounds(p) for piece in item.pieces for p in piece.prims])
    x0, y0, x1, y1 = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    pieces = [Piece(pc.category, [_shift(p, -cx, -cy) for p in pc.prims]) for pc in item.pieces]
    return Item(pieces, float(x1 - x0), float(y1 - y0))


def place(p: Prim, quarter_turns: int, x: float, y: float) -> Prim:
    """The primitive turned by quarter_turns x 90 degrees about z, then moved to (x, y)."""
    kind, a, slot = p
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][quarter_turns % 4]
    if kind == "box":
        xs = [c * a[0] - s * a[1], c * a[3] - s * a[4]]
        ys = [s * a[0] + c * a[1], s * a[3] + c * a[4]]
        return (kind, (min(xs) + x, min(ys) + y, a[2], max(xs) + x, max(ys) + y, a[5]), slot)
    px, py = c * a[0] - s * a[1], s * a[0] + c * a[1]
    return (kind, (px + x, py + y, *a[2:]), slot)


Builder = Callable[[np.random.Generator], Item]
BUILDERS: dict[str, Builder] = {
    "table": table, "coffee_table": lambda r: table(r, low=True), "chair": chair,
    "dining_set": dining_set, "sofa": sofa, "bed": bed, "shelf": shelf, "cabinet": cabinet,
    "tv_stand": tv_stand, "desk": desk, "floor_lamp": floor_lamp, "plant": plant,
    "toilet": toilet, "sink": sink, "bathtub": bathtub, "refrigerator": refrigerator,
    "oven": oven, "counter": counter, "rug": rug,
}
