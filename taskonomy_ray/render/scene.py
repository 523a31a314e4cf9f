"""Mini-Taskonomy rendering, step 1: buildings of Manhattan rooms, furnished by room type.

A building shares one style (palette and materials); each room is an axis-aligned box with doors
(insets), windows (openings), posters, skirting, ceiling lamps and furniture drawn from its room
type's distribution. Everything is derived from (seed, building index), so any worker rebuilds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import furniture as fu
from .materials import Material
from .raycast import Geometry

ROOM_TYPES = ("bedroom", "kitchen", "office", "living_room", "bathroom", "corridor")
# Room footprint ranges (width, depth) in metres per type, then furniture: (builder, lo, hi, wall).
ROOM_SIZE = {
    "bedroom": ((3.0, 4.5), (3.2, 5.0)), "kitchen": ((2.8, 5.0), (3.0, 5.5)),
    "office": ((3.0, 6.0), (3.0, 6.0)), "living_room": ((4.0, 7.0), (4.0, 7.0)),
    "bathroom": ((2.0, 3.0), (2.2, 3.5)), "corridor": ((1.5, 2.0), (4.0, 8.0)),
}
FURNISH: dict[str, tuple[tuple[str, int, int, bool], ...]] = {
    "bedroom": (("rug", 0, 1, False), ("bed", 1, 1, True), ("cabinet", 1, 2, True),
                ("shelf", 0, 1, True), ("floor_lamp", 0, 1, True), ("plant", 0, 1, True),
                ("desk", 0, 1, True), ("chair", 0, 1, False)),
    "kitchen": (("refrigerator", 1, 1, True), ("oven", 1, 1, True), ("counter", 1, 3, True),
                ("sink", 0, 1, True), ("dining_set", 0, 1, False), ("cabinet", 0, 1, True),
                ("plant", 0, 1, True)),
    "office": (("desk", 1, 3, True), ("shelf", 1, 2, True), ("cabinet", 0, 2, True),
               ("plant", 0, 2, True), ("table", 0, 1, False), ("chair", 0, 1, False),
               ("floor_lamp", 0, 1, True)),
    "living_room": (("rug", 0, 1, False), ("sofa", 1, 2, True), ("tv_stand", 1, 1, True),
                    ("coffee_table", 1, 1, False), ("shelf", 0, 2, True),
                    ("floor_lamp", 0, 1, True), ("plant", 0, 2, True), ("chair", 0, 2, False)),
    "bathroom": (("bathtub", 0, 1, True), ("toilet", 1, 1, True), ("sink", 1, 2, True),
                 ("cabinet", 0, 1, True), ("rug", 0, 1, False), ("plant", 0, 1, True)),
    "corridor": (("rug", 0, 2, False), ("cabinet", 0, 2, True), ("plant", 0, 2, True),
                 ("shelf", 0, 1, True), ("floor_lamp", 0, 1, True)),
}
WALL_COLOURS = ((0.86, 0.84, 0.78), (0.78, 0.84, 0.88), (0.82, 0.88, 0.8), (0.9, 0.86, 0.8),
                (0.75, 0.75, 0.76), (0.92, 0.9, 0.88))
WOOD_COLOURS = ((0.72, 0.55, 0.36), (0.45, 0.3, 0.18), (0.86, 0.85, 0.82), (0.55, 0.52, 0.5))
DOOR_W, DOOR_H = 0.9, 2.05


@dataclass
class Room:
    """One furnished room: geometry for the ray caster, looks, lights and free floor space."""

    index: int  # building-unique room id
    room_type: str
    lo: np.ndarray  # (3,) world corner of the shell
    hi: np.ndarray
    geometry: Geometry
    materials: list[Material]
    categories: list[str]  # per object id; id 0 is the room structure ("background")
    lights: np.ndarray  # (L, 4): world position and intensity
    ambient: float
    blocked: np.ndarray  # (K, 4) floor rectangles (x0, y0, x1, y1) cameras must avoid


@dataclass
class Building:
    """A building: a name and its rooms, all in one style."""

    name: str
    rooms: list[Room]


def building_name(index: int) -> str:
    """The folder name of building `index` (the split unit)."""
    return f"mini{index:04d}"


def make_building(seed: int, index: int) -> Building:
    """Build building `index` of the dataset with `seed`, deterministically."""
    rng = np.random.default_rng([seed, index, 0xB])
    style = _style(rng)
    n_rooms = int(rng.integers(4, 8))
    types = list(rng.permutation(ROOM_TYPES))[: min(n_rooms, len(ROOM_TYPES))]
    types += list(rng.choice(ROOM_TYPES, n_rooms - len(types)))
    height = float(rng.uniform(2.5, 3.1))
    rooms, x = [], 0.0
    for k, rtype in enumerate(types):
        room = _make_room(np.random.default_rng([seed, index, k, 0xA]), k, str(rtype), x, height,
                          style)
        rooms.append(room)
        x = float(room.hi[0]) + 0.3
    return Building(building_name(index), rooms)


def _style(rng: np.random.Generator) -> dict[str, Material]:
    """The building's shared materials, keyed by slot."""
    def pick(options: tuple) -> tuple[float, float, float]:
        c = np.asarray(options[int(rng.integers(len(options)))]) * rng.uniform(0.93, 1.05)
        return tuple(float(v) for v in np.clip(c, 0, 1))  # type: ignore[return-value]

    def colour(lo: float = 0.15, hi: float = 0.85) -> tuple[float, float, float]:
        return tuple(float(v) for v in rng.uniform(lo, hi, 3))  # type: ignore[return-value]

    s = int(rng.integers(1 << 30))
    wall, wood = pick(WALL_COLOURS), pick(WOOD_COLOURS)
    dark_wood = _scaled(wood, 0.6)
    return {
        "wall": Material("plain", wall, seed=s),
        "wall_accent": Material("stripes", wall, _scaled(colour(0.4, 0.9), 0.8),
                                float(rng.uniform(0.15, 0.4)), s + 1),
        "floor_wood": Material("wood", pick(WOOD_COLOURS), dark_wood, float(rng.uniform(0.12, 0.2)),
                               s + 2),
        "floor_carpet": Material("noise", colour(0.3, 0.6), colour(0.2, 0.5), 0.3, s + 3),
        "tiles": Material("tiles", pick(WALL_COLOURS), (0.35, 0.35, 0.35),
                          float(rng.uniform(0.2, 0.4)), s + 4),
        "ceiling": Material("plain", (0.93, 0.93, 0.92), seed=s + 5),
        "wood": Material("wood", wood, dark_wood, float(rng.uniform(0.08, 0.15)), s + 6),
        "fabric": Material("fabric", colour(), colour(), 0.25, s + 7),
        "fabric2": Material("fabric", colour(0.3, 0.9), colour(0.2, 0.7), 0.2, s + 8),
        "metal": Material("plain", (0.62, 0.63, 0.66), seed=s + 9),
        "ceramic": Material("plain", (0.92, 0.92, 0.9), seed=s + 10),
        "screen": Material("screen", (0.05, 0.05, 0.07), (0.2, 0.25, 0.35), 0.5, s + 11),
        "books": Material("books", colour(0.1, 0.5), colour(0.5, 0.95), 1.0, s + 12),
        "plant": Material("noise", (0.15, 0.45, 0.12), (0.3, 0.6, 0.2), 0.08, s + 13),
        "pot": Material("plain", (0.6, 0.35, 0.25), seed=s + 14),
        "accent": Material("plain", colour(0.3, 0.9), seed=s + 15),
        "worktop": Material("noise", (0.3, 0.3, 0.32), (0.6, 0.6, 0.6), 0.1, s + 16),
        "rug": Material("stripes", colour(0.2, 0.8), colour(0.2, 0.8), float(rng.uniform(0.1, 0.3)),
                        s + 17),
        "dark": Material("plain", (0.08, 0.08, 0.08), seed=s + 18),
        "door": Material("wood", wood, dark_wood, 0.3, s + 19),
        **{f"poster{k}": Material("poster", colour(0.05, 0.95), colour(0.05, 0.95),
                                  float(rng.uniform(0.3, 0.6)), s + 20 + k) for k in range(3)},
    }


def _scaled(c: tuple[float, float, float], k: float) -> tuple[float, float, float]:
    return (c[0] * k, c[1] * k, c[2] * k)


class _Builder:
    """Accumulates primitives with object ids and material slots into a `Geometry`."""

    def __init__(self, style: dict[str, Material]) -> None:
        self.slots = list(style)
        self.materials = list(style.values())
        self.boxes: list[tuple] = []
        self.cyls: list[tuple] = []
        self.sphs: list[tuple] = []
        self.categories = ["background"]

    def new_object(self, category: str) -> int:
        self.categories.append(category)
        return len(self.categories) - 1

    def add(self, prim: fu.Prim, obj: int) -> None:
        kind, a, slot = prim
        row = (tuple(float(v) for v in a), obj, self.slots.index(slot))
        {"box": self.boxes, "cyl": self.cyls, "sph": self.sphs}[kind].append(row)

    def geometry(self, lo: np.ndarray, hi: np.ndarray, shell: list[str],
                 openings: list[tuple]) -> Geometry:
        def arr(rows: list[tuple], k: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            if not rows:
                return np.zeros((0, n)), np.zeros(0, np.int32), np.zeros(0, np.int32)
            return (np.array([r[0] for r in rows]), np.array([r[1] for r in rows], np.int32),
                    np.array([r[2] for r in rows], np.int32))

        b, bo, bm = arr(self.boxes, 0, 6)
        c, co, cm = arr(self.cyls, 1, 5)
        s, so, sm = arr(self.sphs, 2, 4)
        return Geometry(lo, hi, np.array([self.slots.index(m) for m in shell], np.int32),
                        b[:, :3], b[:, 3:], bo, bm, c, co, cm, s, so, sm,
                        np.array(openings, np.float64).reshape(-1, 5))


def _make_room(rng: np.random.Generator, index: int, rtype: str, x0: float, height: float,
               style: dict[str, Material]) -> Room:
    (w0, w1), (d0, d1) = ROOM_SIZE[rtype]
    w, d = float(rng.uniform(w0, w1)), float(rng.uniform(d0, d1))
    lo, hi = np.array([x0, 0.0, 0.0]), np.array([x0 + w, d, height])
    b = _Builder(style)
    floor = {"kitchen": "tiles", "bathroom": "tiles"}.get(
        rtype, "floor_wood" if rng.random() < 0.7 else "floor_carpet")
    walls = ["tiles" if rtype == "bathroom" else "wall"] * 4
    if rtype != "bathroom" and rng.random() < 0.4:
        walls[int(rng.integers(4))] = "wall_accent"
    keep_clear, openings = _structure(rng, b, lo, hi, rtype)
    blocked = _furnish(rng, b, lo, hi, rtype, keep_clear)
    lights = _ceiling_lamps(rng, b, lo, hi)
    return Room(index, rtype, lo, hi, b.geometry(lo, hi, [*walls, floor, "ceiling"], openings),
                b.materials, b.categories, lights, float(rng.uniform(0.25, 0.35)), blocked)


def _wall_frame(wall: int, lo: np.ndarray, hi: np.ndarray) -> tuple[int, float, float, float]:
    """(quarter turns, fixed coordinate, along-wall start, along-wall end) of wall 0..3."""
    return [(1, lo[0], lo[1], hi[1]), (3, hi[0], lo[1], hi[1]),
            (2, lo[1], lo[0], hi[0]), (0, hi[1], lo[0], hi[0])][wall]


def _on_wall(wall: int, along: float, depth: float, lo: np.ndarray, hi: np.ndarray,
             d: float) -> tuple[int, float, float]:
    """Quarter turns and centre (x, y) of a footprint of depth d whose back touches `wall`."""
    turns, fixed, _, _ = _wall_frame(wall, lo, hi)
    inward = -1.0 if wall in (1, 3) else 1.0
    c = fixed + inward * (d / 2 + depth)
    return (turns, c, along) if wall < 2 else (turns, along, c)


def _free_segment(rng: np.random.Generator, used: list[tuple[int, float, float]], wall: int,
                  lo: np.ndarray, hi: np.ndarray, width: float, gap: float = 0.15) -> float | None:
    """An along-wall centre for something `width` wide that overlaps nothing on `wall`."""
    _, _, a0, a1 = _wall_frame(wall, lo, hi)
    if a1 - a0 < width + 2 * gap:
        return None
    for _ in range(12):
        c = float(rng.uniform(a0 + gap + width / 2, a1 - gap - width / 2))
        if all(w != wall or c + width / 2 + gap < u0 or c - width / 2 - gap > u1
               for w, u0, u1 in used):
            used.append((wall, c - width / 2, c + width / 2))
            return c
    return None


def _wall_piece(b: _Builder, prims: list[fu.Prim], wall: int, along: float, d: float,
                lo: np.ndarray, hi: np.ndarray, obj: int = 0) -> None:
    turns, cx, cy = _on_wall(wall, along, 0.0, lo, hi, d)
    for p in prims:
        b.add(fu.place(p, turns, cx, cy), obj)


def _structure(rng: np.random.Generator, b: _Builder, lo: np.ndarray, hi: np.ndarray,
               rtype: str) -> tuple[list[np.ndarray], list[tuple]]:
    """Doors (insets), windows (openings with frames), posters and skirting; all object id 0.

    Returns the floor rectangles in front of doors (kept clear of furniture) and the openings.
    """
    used: list[tuple[int, float, float]] = []  # (wall, from, to) already taken along each wall
    clear = _doors(rng, b, lo, hi, rtype, used)
    openings = _windows(rng, b, lo, hi, rtype, used)
    for k in range(int(rng.integers(0, 3))):
        wall, pw = int(rng.integers(4)), float(rng.uniform(0.4, 1.0))
        c = _free_segment(rng, used, wall, lo, hi, pw)
        if c is not None:
            z, ph = float(rng.uniform(1.3, 1.7)), float(rng.uniform(0.5, 0.9))
            _wall_piece(b, [fu.box(-pw / 2, -0.005, z - ph / 2, pw / 2, 0.005, z + ph / 2,
                                   f"poster{k}")], wall, c, 0.01, lo, hi)
    for wall in range(4):
        _, _, a0, a1 = _wall_frame(wall, lo, hi)
        _wall_piece(b, [fu.box(-(a1 - a0) / 2, -0.006, 0, (a1 - a0) / 2, 0.006, 0.08, "ceramic")],
                    wall, (a0 + a1) / 2, 0.012, lo, hi)
    return clear, openings


def _doors(rng: np.random.Generator, b: _Builder, lo: np.ndarray, hi: np.ndarray, rtype: str,
           used: list[tuple[int, float, float]]) -> list[np.ndarray]:
    """Door panels 3 cm proud of the wall, with knobs; returns the floor to keep clear."""
    clear = []
    n_doors = int(rng.integers(2, 4)) if rtype == "corridor" else 1 + int(rng.random() < 0.4)
    for _ in range(n_doors):
        wall = int(rng.integers(4))
        c = _free_segment(rng, used, wall, lo, hi, DOOR_W)
        if c is None:
            continue
        _wall_piece(b, [fu.box(-DOOR_W / 2, -0.015, 0, DOOR_W / 2, 0.015, DOOR_H, "door"),
                        ("sph", (DOOR_W / 2 - 0.1, -0.045, 1.0, 0.03), "metal")], wall, c, 0.03,
                    lo, hi)
        turns, cx, cy = _on_wall(wall, c, 0.0, lo, hi, 1.0)
        r = fu.place(fu.box(-0.55, -0.5, 0, 0.55, 0.5, 0, ""), turns, cx, cy)[1]
        clear.append(np.array([r[0], r[1], r[3], r[4]]))
    return clear


def _windows(rng: np.random.Generator, b: _Builder, lo: np.ndarray, hi: np.ndarray, rtype: str,
             used: list[tuple[int, float, float]]) -> list[tuple]:
    """Window holes in the shell (rays leave the room: no depth), framed by 5 cm bars."""
    openings = []
    for _ in range(0 if rtype == "corridor" else int(rng.integers(0, 3))):
        wall, width = int(rng.integers(4)), float(rng.uniform(0.8, 1.6))
        c = _free_segment(rng, used, wall, lo, hi, width + 0.1)
        if c is None:
            continue
        z0, z1 = float(rng.uniform(0.8, 1.0)), float(min(rng.uniform(2.0, 2.3), hi[2] - 0.2))
        openings.append((wall, c - width / 2, c + width / 2, z0, z1))
        t, w2 = 0.05, width / 2
        _wall_piece(b, [fu.box(-w2 - t, -t / 2, z0 - t, w2 + t, t / 2, z0, "ceramic"),
                        fu.box(-w2 - t, -t / 2, z1, w2 + t, t / 2, z1 + t, "ceramic"),
                        fu.box(-w2 - t, -t / 2, z0, -w2, t / 2, z1, "ceramic"),
                        fu.box(w2, -t / 2, z0, w2 + t, t / 2, z1, "ceramic")],
                    wall, c, t, lo, hi)
    return openings


def _fits(rect: np.ndarray, lo: np.ndarray, hi: np.ndarray, others: list[np.ndarray]) -> bool:
    inside = rect[0] >= lo[0] - 1e-9 and rect[1] >= lo[1] - 1e-9
    inside = inside and rect[2] <= hi[0] + 1e-9 and rect[3] <= hi[1] + 1e-9
    return inside and all(rect[2] <= o[0] or rect[0] >= o[2] or rect[3] <= o[1] or rect[1] >= o[3]
                          for o in others)


def _furnish(rng: np.random.Generator, b: _Builder, lo: np.ndarray, hi: np.ndarray, rtype: str,
             keep_clear: list[np.ndarray]) -> np.ndarray:
    """Place the room type's furniture without overlaps; items that do not fit are left out."""
    taken: list[np.ndarray] = []
    for name, n_lo, n_hi, on_wall in FURNISH[rtype]:
        for _ in range(int(rng.integers(n_lo, n_hi + 1))):
            item = fu.normalised(fu.BUILDERS[name](rng))
            for _attempt in range(40):
                if on_wall:
                    wall = int(rng.integers(4))
                    _, _, a0, a1 = _wall_frame(wall, lo, hi)
                    if a1 - a0 <= item.w + 0.04:
                        continue
                    along = float(rng.uniform(a0 + item.w / 2 + 0.02, a1 - item.w / 2 - 0.02))
                    turns, cx, cy = _on_wall(wall, along, 0.02, lo, hi, item.d)
                else:
                    turns = int(rng.integers(4))
                    cx = float(rng.uniform(lo[0], hi[0]))
                    cy = float(rng.uniform(lo[1], hi[1]))
                hw, hd = (item.d / 2, item.w / 2) if turns % 2 else (item.w / 2, item.d / 2)
                rect = np.array([cx - hw, cy - hd, cx + hw, cy + hd])
                if name == "rug" or _fits(rect, lo, hi, taken + keep_clear):
                    break
            else:
                continue
            if name != "rug":
                taken.append(rect + np.array([-0.05, -0.05, 0.05, 0.05]))
            for piece in item.pieces:
                obj = b.new_object(piece.category)
                for p in piece.prims:
                    b.add(fu.place(p, turns, cx, cy), obj)
    pad = np.array([-0.25, -0.25, 0.25, 0.25])
    return np.array([t + pad for t in taken]).reshape(-1, 4)


def _ceiling_lamps(rng: np.random.Generator, b: _Builder, lo: np.ndarray,
                   hi: np.ndarray) -> np.ndarray:
    """Hanging lamps (category lamp); each has a point light just below its globe."""
    area = (hi[0] - lo[0]) * (hi[1] - lo[1])
    n = 1 + int(area > 16 and rng.random() < 0.6)
    lights = []
    for _ in range(n):
        x = float(rng.uniform(lo[0] + 0.6, hi[0] - 0.6))
        y = float(rng.uniform(lo[1] + 0.6, hi[1] - 0.6))
        r, drop = float(rng.uniform(0.1, 0.18)), float(rng.uniform(0.2, 0.5))
        zc = hi[2] - drop - r
        obj = b.new_object("lamp")
        b.add(("cyl", (x, y, zc + r * 0.9, hi[2], 0.01), "metal"), obj)
        b.add(("sph", (x, y, zc, r), "ceramic"), obj)
        lights.append((x, y, zc - r - 0.08, float(rng.uniform(1.0, 1.5)) / np.sqrt(n)))
    return np.array(lights)
