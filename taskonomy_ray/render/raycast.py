"""Mini-Taskonomy rendering, step 2: exact, vectorised ray casting of a room's analytic primitives.

A room is an inward-facing axis-aligned box (the Manhattan shell, with window openings) holding
axis-aligned boxes, vertical cylinders and spheres. Every hit carries the distance, the exact
world normal, the principal curvatures, the surface/object/material ids and 2D texture coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EPS = 1e-6
CHUNK = 4096  # rays per broadcast block: bounds memory at (CHUNK, primitives, 3) floats
SHELL_FACES = 6  # surface ids 0..5: -x, +x, -y, +y, floor (-z), ceiling (+z) of the shell


@dataclass
class Geometry:
    """All primitives of one room, as flat arrays (world frame, metres, z up).

    Per-primitive `*_obj` is the object instance (0 = the room structure) and `*_mat` the index
    into the room's material list; `openings` are window holes in the shell walls, given as
    (face, u0, u1, z0, z1) with u the wall's horizontal coordinate.
    """

    shell_lo: np.ndarray
    shell_hi: np.ndarray
    shell_mat: np.ndarray  # (6,) material per shell face
    box_lo: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    box_hi: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    box_obj: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    box_mat: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    cyl: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))  # cx, cy, z0, z1, r
    cyl_obj: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    cyl_mat: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    sph: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # cx, cy, cz, r
    sph_obj: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    sph_mat: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    openings: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    # After culling: each kept primitive's index in the full room, and the full counts, so
    # surface ids stay those of the full room.
    box_id: np.ndarray | None = None
    cyl_id: np.ndarray | None = None
    sph_id: np.ndarray | None = None
    totals: tuple[int, int] | None = None  # (boxes, cylinders) of the full room

    def ids(self, kind: str) -> np.ndarray:
        """Full-room index of each primitive of `kind` (box, cyl, sph)."""
        own = getattr(self, f"{kind}_id")
        n = len({"box": self.box_lo, "cyl": self.cyl, "sph": self.sph}[kind])
        return np.arange(n) if own is None else own

    def bounding_spheres(self) -> tuple[np.ndarray, np.ndarray]:
        """Centres (P, 3) and radii (P,) of boxes, then cylinders, then spheres."""
        c_box = (self.box_lo + self.box_hi) / 2
        r_box = np.linalg.norm(self.box_hi - self.box_lo, axis=1) / 2
        cy = self.cyl
        c_cyl = np.stack([cy[:, 0], cy[:, 1], (cy[:, 2] + cy[:, 3]) / 2], axis=1)
        r_cyl = np.hypot(cy[:, 4], (cy[:, 3] - cy[:, 2]) / 2)
        return (np.concatenate([c_box, c_cyl, self.sph[:, :3]]),
                np.concatenate([r_box, r_cyl, self.sph[:, 3]]))

    def subset(self, keep: np.ndarray) -> Geometry:
        """The geometry with only the primitives where `keep` (boxes, cylinders, spheres) holds."""
        nb, nc = len(self.box_lo), len(self.cyl)
        kb, kc, ks = keep[:nb], keep[nb:nb + nc], keep[nb + nc:]
        return Geometry(
            self.shell_lo, self.shell_hi, self.shell_mat,
            self.box_lo[kb], self.box_hi[kb], self.box_obj[kb], self.box_mat[kb],
            self.cyl[kc], self.cyl_obj[kc], self.cyl_mat[kc],
            self.sph[ks], self.sph_obj[ks], self.sph_mat[ks], self.openings,
            self.ids("box")[kb], self.ids("cyl")[kc], self.ids("sph")[ks],
            self.totals or (nb, nc))

    @property
    def n_surfaces(self) -> int:
        """Number of distinct surface ids (shell faces, box faces, cylinder parts, spheres)."""
        nb, nc = self.totals or (len(self.box_lo), len(self.cyl))
        return SHELL_FACES + 6 * nb + 3 * nc + len(self.sph)


@dataclass
class Hits:
    """Per-ray results of `cast`; rays that leave through a window have t = inf and ids -1."""

    t: np.ndarray  # (N,) distance along the unit ray
    normal: np.ndarray  # (N, 3) world unit normal, facing the ray origin
    curvature: np.ndarray  # (N, 2) principal curvatures k1 >= k2, 1/m, convex positive
    surface: np.ndarray  # (N,) int32
    obj: np.ndarray  # (N,) int32
    mat: np.ndarray  # (N,) int32
    uv: np.ndarray  # (N, 2) texture coordinates in metres

    @property
    def valid(self) -> np.ndarray:
        """Rays that hit geometry."""
        return np.isfinite(self.t)


def _safe_inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        inv = 1.0 / np.where(d == 0.0, EPS * EPS, d)
    return inv


def _slabs(lo: np.ndarray, hi: np.ndarray, o: np.ndarray,
           inv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab test with broadcasting: entry distance (inf on a miss) and entry axis."""
    def axis_slab(k: int) -> tuple[np.ndarray, np.ndarray]:
        a = (lo[..., k] - o[..., k]) * inv[..., k]
        b = (hi[..., k] - o[..., k]) * inv[..., k]
        return np.minimum(a, b), np.maximum(a, b)

    t_near, t_far = axis_slab(0)  # one axis at a time keeps every array (N, B), not (N, B, 3)
    axis = np.zeros(t_near.shape, np.int8)
    for k in (1, 2):
        near, far = axis_slab(k)
        axis = np.where(near > t_near, np.int8(k), axis)
        t_near, t_far = np.maximum(t_near, near), np.minimum(t_far, far)
    hit = (t_far >= t_near) & (t_near > EPS)
    return np.where(hit, t_near, np.inf), axis


def _boxes_t(g: Geometry, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Approximate entry distance (N, B) of every ray into every box, in float32 for speed."""
    f = np.float32
    return _slabs(g.box_lo[None].astype(f), g.box_hi[None].astype(f), o[:, None, :].astype(f),
                  _safe_inverse(d)[:, None, :].astype(f))[0]


def _box_exact(g: Geometry, j: np.ndarray, o: np.ndarray,
               d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact (float64) entry distance and axis of each ray into its own box j."""
    return _slabs(g.box_lo[j], g.box_hi[j], o, _safe_inverse(d))


def _cylinders_t(g: Geometry, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entry distance (N, C) into every vertical cylinder, and the part hit (side, top, base)."""
    cx, cy, z0, z1, r = (g.cyl[None, :, i] for i in range(5))
    ox, oy, oz = (o[:, None, i] for i in range(3))
    dx, dy, dz = (d[:, None, i] for i in range(3))
    px, py = ox - cx, oy - cy
    a = dx * dx + dy * dy
    b = px * dx + py * dy
    c = px * px + py * py - r * r
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-b - np.sqrt(disc)) / a
    z_side = oz + t_side * dz
    side_ok = (disc >= 0) & (a > EPS) & (t_side > EPS) & (z_side >= z0) & (z_side <= z1)
    t_side = np.where(side_ok, t_side, np.inf)
    dz_safe = np.where(dz == 0.0, EPS * EPS, dz)
    t_cap = np.where(dz < 0, (z1 - oz) / dz_safe, (z0 - oz) / dz_safe)
    qx, qy = px + t_cap * dx, py + t_cap * dy
    cap_ok = (t_cap > EPS) & (qx * qx + qy * qy <= r * r) & (dz != 0.0)
    t_cap = np.where(cap_ok, t_cap, np.inf)
    part = np.where(t_cap < t_side, np.where(dz < 0, 1, 2), 0)
    return np.minimum(t_side, t_cap), part


def _spheres_t(g: Geometry, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Entry distance (N, S) into every sphere (inf on a miss)."""
    p = o[:, None, :] - g.sph[None, :, :3]  # (N, S, 3)
    b = (p * d[:, None, :]).sum(axis=2)
    c = (p * p).sum(axis=2) - g.sph[None, :, 3] ** 2
    disc = b * b - c
    with np.errstate(invalid="ignore"):
        t = -b - np.sqrt(disc)
    return np.where((disc >= 0) & (t > EPS), t, np.inf)


def _shell(g: Geometry, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exit distance (N,) through the inside of the shell and the face id (0..5)."""
    inv = _safe_inverse(d)
    t = np.where(d > 0, (g.shell_hi - o) * inv, (g.shell_lo - o) * inv)  # (N, 3)
    t = np.where(d == 0.0, np.inf, t)  # a ray parallel to a wall pair never meets it
    axis = t.argmin(axis=1)
    t_exit = t[np.arange(len(t)), axis]
    face = 2 * axis + (d[np.arange(len(d)), axis] > 0)
    return t_exit, face.astype(np.int32)


def _in_opening(g: Geometry, face: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Whether shell hits fall inside a window opening (so the ray leaves the room)."""
    out = np.zeros(len(face), bool)
    for f, u0, u1, z0, z1 in g.openings:
        u = p[:, 1] if int(f) < 2 else p[:, 0]  # walls -x/+x run along y, -y/+y along x
        out |= (face == int(f)) & (u >= u0) & (u <= u1) & (p[:, 2] >= z0) & (p[:, 2] <= z1)
    return out


def nearest_object_t(g: Geometry, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Distance (N,) to the nearest furniture primitive (inf if none); for shadow rays."""
    best = np.full(len(o), np.inf)
    for s in range(0, len(o), CHUNK):
        oc, dc = o[s:s + CHUNK], d[s:s + CHUNK]
        parts = [best[s:s + CHUNK]]
        if len(g.box_lo):
            parts.append(_boxes_t(g, oc, dc).min(axis=1))
        if len(g.cyl):
            parts.append(_cylinders_t(g, oc, dc)[0].min(axis=1))
        if len(g.sph):
            parts.append(_spheres_t(g, oc, dc).min(axis=1))
        best[s:s + CHUNK] = np.min(np.stack(parts), axis=0)
    return best


def cast(g: Geometry, origins: np.ndarray, dirs: np.ndarray) -> Hits:
    """Cast unit rays (N, 3) from `origins` (N, 3) or one origin (3,) inside the room."""
    dirs = np.asarray(dirs, np.float64)
    origins = np.broadcast_to(np.asarray(origins, np.float64), dirs.shape)
    parts = [_cast_chunk(g, origins[s:s + CHUNK], dirs[s:s + CHUNK])
             for s in range(0, len(dirs), CHUNK)]
    return Hits(*(np.concatenate([getattr(h, f) for h in parts]) for f in
                  ("t", "normal", "curvature", "surface", "obj", "mat", "uv")))


def _cast_chunk(g: Geometry, o: np.ndarray, d: np.ndarray) -> Hits:
    n = len(o)
    rows = np.arange(n)
    t, face = _shell(g, o, d)
    kind = np.zeros(n, np.int8)  # 0 shell, 1 box, 2 cylinder, 3 sphere
    index = face.copy()
    sub = np.zeros(n, np.int64)  # box entry axis or cylinder part
    if len(g.box_lo):
        j = _boxes_t(g, o, d).argmin(axis=1)
        tb, axis = _box_exact(g, j, o, d)
        closer = tb < t
        t, kind, index, sub = _take(closer, tb, t, 1, kind, j, index, axis, sub)
    if len(g.cyl):
        tc, part = _cylinders_t(g, o, d)
        j = tc.argmin(axis=1)
        closer = tc[rows, j] < t
        t, kind, index, sub = _take(closer, tc[rows, j], t, 2, kind, j, index, part[rows, j], sub)
    if len(g.sph):
        ts = _spheres_t(g, o, d)
        j = ts.argmin(axis=1)
        closer = ts[rows, j] < t
        t, kind, index, sub = _take(closer, ts[rows, j], t, 3, kind, j, index, 0, sub)
    return _shade_hits(g, o, d, t, kind, index, sub)


def _take(closer, t_new, t, k, kind, j, index, s_new, sub):  # noqa: ANN001, ANN202
    return (np.where(closer, t_new, t), np.where(closer, k, kind).astype(np.int8),
            np.where(closer, j, index), np.where(closer, s_new, sub))


def _shade_hits(g: Geometry, o: np.ndarray, d: np.ndarray, t: np.ndarray, kind: np.ndarray,
                index: np.ndarray, sub: np.ndarray) -> Hits:
    """Normals, curvature, ids and uv of the nearest hits, per primitive kind."""
    n = len(t)
    p = o + t[:, None] * d
    normal = np.zeros((n, 3))
    curv = np.zeros((n, 2))
    surface = np.full(n, -1, np.int32)
    obj = np.zeros(n, np.int32)
    mat = np.zeros(n, np.int32)
    uv = np.zeros((n, 2))
    m = kind == 0  # shell: inward normals
    f = index[m]
    axis = f // 2
    normal[m, axis] = np.where(f % 2 == 1, -1.0, 1.0)
    surface[m], mat[m] = f, g.shell_mat[f]
    uv[m] = _plane_uv(p[m], axis)
    m = kind == 1  # boxes: outward normal on the entry face
    j, axis = index[m], sub[m]
    normal[m, axis] = -np.sign(d[m, axis])
    nb, nc = g.totals or (len(g.box_lo), len(g.cyl))
    surface[m] = SHELL_FACES + 6 * g.ids("box")[j] + 2 * axis + (normal[m, axis] > 0)
    obj[m], mat[m], uv[m] = g.box_obj[j], g.box_mat[j], _plane_uv(p[m], axis)
    _cylinder_hits(g, kind == 2, index, sub, p, normal, curv, surface, obj, mat, uv)
    m = kind == 3
    j = index[m]
    c, r = g.sph[j, :3], g.sph[j, 3]
    normal[m] = (p[m] - c) / r[:, None]
    curv[m] = (1.0 / r)[:, None]
    surface[m] = SHELL_FACES + 6 * nb + 3 * nc + g.ids("sph")[j]
    obj[m], mat[m] = g.sph_obj[j], g.sph_mat[j]
    uv[m] = np.stack([np.arctan2(normal[m, 1], normal[m, 0]) * r, p[m, 2]], axis=1)
    hole = (kind == 0) & _in_opening(g, np.where(kind == 0, index, -1), p)
    t = np.where(hole, np.inf, t)
    surface[hole], obj[hole], mat[hole] = -1, -1, -1
    normal[hole] = 0.0
    return Hits(t, normal, curv, surface, obj, mat, uv)


def _cylinder_hits(g, m, index, sub, p, normal, curv, surface, obj, mat, uv) -> None:  # noqa: ANN001
    """Fill the cylinder rows `m` of the hit arrays in place."""
    j, part = index[m], sub[m]
    cx, cy, r = g.cyl[j, 0], g.cyl[j, 1], g.cyl[j, 4]
    rx, ry = (p[m, 0] - cx) / r, (p[m, 1] - cy) / r
    side = part == 0
    nz = np.where(part == 1, 1.0, -1.0)
    normal[m] = np.stack([np.where(side, rx, 0), np.where(side, ry, 0),
                          np.where(side, 0, nz)], axis=1)
    curv[m] = np.stack([np.where(side, 1.0 / r, 0.0), np.zeros(len(j))], axis=1)
    nb = (g.totals or (len(g.box_lo), 0))[0]
    surface[m] = SHELL_FACES + 6 * nb + 3 * g.ids("cyl")[j] + part
    obj[m], mat[m] = g.cyl_obj[j], g.cyl_mat[j]
    u_side = np.arctan2(ry, rx) * r
    uv[m] = np.stack([np.where(side, u_side, p[m, 0]), np.where(side, p[m, 2], p[m, 1])], axis=1)


def _plane_uv(p: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Texture coordinates on an axis-aligned face: (horizontal, z) on walls, (x, y) on floors."""
    u = np.where(axis == 0, p[:, 1], p[:, 0])
    v = np.where(axis == 2, p[:, 1], p[:, 2])
    return np.stack([u, v], axis=1)


def cull_frustum(g: Geometry, position: np.ndarray, rotation: np.ndarray, fov: float) -> Geometry:
    """The primitives whose bounding spheres reach into a square pinhole frustum."""
    c, r = g.bounding_spheres()
    pc = (c - position) @ rotation  # camera frame, looking down -z
    tan = np.tan(fov / 2)
    norm = np.sqrt(1 + tan * tan)
    keep = -pc[:, 2] + r > 0
    for k in (0, 1):
        for sign in (-1.0, 1.0):  # side planes: sign * x_k <= tan * (-z)
            keep &= (sign * pc[:, k] + tan * pc[:, 2]) / norm <= r
    return g.subset(keep)


def cull_box(g: Geometry, lo: np.ndarray, hi: np.ndarray) -> Geometry:
    """The primitives whose bounding spheres meet the box [lo, hi] (e.g. around shadow rays)."""
    c, r = g.bounding_spheres()
    gap = np.maximum(lo - c, 0) + np.maximum(c - hi, 0)
    return g.subset(np.linalg.norm(gap, axis=1) <= r)
