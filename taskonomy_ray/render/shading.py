"""Mini-Taskonomy rendering, step 5: one view's exact buffers (geometry, appearance, semantics).

Geometry (depth, normals, curvature, reshading) comes straight from the ray hits; appearance is
textured albedo lit by ambient light and the room's point lights with Lambertian falloff and hard
shadows from the brightest lamp, so RGB differs from geometry; semantics come from object ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import layout
from .camera import Camera
from .furniture import CATEGORIES
from .materials import albedo
from .raycast import Hits, cast, cull_box, cull_frustum, nearest_object_t
from .scene import ROOM_TYPES, Room

# Pixels without geometry (windows) get the largest encodable depth: >= the release's invalid mark.
DEPTH_INVALID = layout.UINT16_MAX / layout.DEPTH_UNITS_PER_METRE
LIGHT_FALLOFF_M = 2.5  # intensity halves at this distance: 1 / (1 + (d / 2.5)^2)
SKY_TOP, SKY_LOW = np.array([0.55, 0.7, 0.92]), np.array([0.85, 0.9, 0.95])
SEMANTIC_NAMES = ("uncertain", "background", *CATEGORIES)


@dataclass
class View:
    """The buffers of one rendered view, (S, S[, C]) each; ids are per-pixel ints."""

    rgb: np.ndarray
    depth_zbuffer: np.ndarray
    depth_euclidean: np.ndarray
    normal: np.ndarray  # camera frame, facing the camera
    reshading: np.ndarray
    principal_curvature: np.ndarray
    surface: np.ndarray  # -1 where no geometry
    segment_semantic: np.ndarray
    class_object: np.ndarray
    class_scene: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """Pixels with geometry."""
        return self.surface >= 0


def render(room: Room, cam: Camera, size: int) -> View:
    """Ray cast `room` from `cam` at size x size pixels and derive every per-pixel buffer."""
    d_cam, d_world = cam.ray_dirs(size)
    h = cast(cull_frustum(room.geometry, cam.position, cam.rotation, cam.fov), cam.position,
             d_world)
    ok = h.valid
    t = np.where(ok, h.t, 0.0)
    zbuf = np.where(ok, t * -d_cam[:, 2], DEPTH_INVALID)
    euclid = np.where(ok, t, DEPTH_INVALID)
    n_cam = h.normal @ cam.rotation  # world -> camera frame (rotation is orthonormal)
    reshade = np.where(ok, np.clip(-(n_cam * d_cam).sum(axis=1), 0.0, 1.0), 0.0)
    footprint = t * (cam.fov / size) / np.maximum(reshade, 0.2)  # pixel extent on the surface
    rgb = _appearance(room, cam.position, d_world, h, footprint)
    sem = _semantic(room, h)
    shape = (size, size)
    return View(
        rgb=rgb.reshape(*shape, 3).astype(np.float32),
        depth_zbuffer=zbuf.reshape(shape).astype(np.float32),
        depth_euclidean=euclid.reshape(shape).astype(np.float32),
        normal=n_cam.reshape(*shape, 3).astype(np.float32),
        reshading=reshade.reshape(shape).astype(np.float32),
        principal_curvature=h.curvature.reshape(*shape, 2).astype(np.float32),
        surface=h.surface.reshape(shape),
        segment_semantic=sem.reshape(shape),
        class_object=class_distribution(sem),
        class_scene=np.eye(len(ROOM_TYPES), dtype=np.float32)[ROOM_TYPES.index(room.room_type)],
    )


def _appearance(room: Room, origin: np.ndarray, d: np.ndarray, h: Hits,
                footprint: np.ndarray) -> np.ndarray:
    """Linear RGB (N, 3): albedo x (ambient + lights), sky through windows."""
    ok = h.valid
    rgb = np.empty((len(d), 3))
    up = np.clip(d[:, 2:3], 0.0, 1.0)
    rgb[:] = SKY_LOW * (1 - up) + SKY_TOP * up
    if not ok.any():
        return rgb
    p = origin + h.t[ok, None] * d[ok]
    n = h.normal[ok]
    mats = h.mat[ok]
    alb = np.empty((len(p), 3))
    for m in np.unique(mats):
        sel = mats == m
        alb[sel] = albedo(room.materials[m], h.uv[ok][sel], footprint[ok][sel])
    light = np.full(len(p), room.ambient)
    strongest = int(np.argmax(room.lights[:, 3]))
    for k, (lx, ly, lz, power) in enumerate(room.lights):
        to_l = np.array([lx, ly, lz]) - p
        dist = np.linalg.norm(to_l, axis=1)
        l_dir = to_l / dist[:, None]
        lam = np.clip((n * l_dir).sum(axis=1), 0.0, None)
        if k == strongest:  # hard shadows from the main lamp
            lit = lam > 0
            src = p[lit] + 1e-4 * n[lit]
            light_pos = np.array([lx, ly, lz])
            near = cull_box(room.geometry, np.minimum(src.min(axis=0, initial=np.inf), light_pos),
                            np.maximum(src.max(axis=0, initial=-np.inf), light_pos))
            blocker = nearest_object_t(near, src, l_dir[lit])
            lam[np.flatnonzero(lit)[blocker < dist[lit] - 1e-3]] = 0.0
        light += power * lam / (1.0 + (dist / LIGHT_FALLOFF_M) ** 2)
    rgb[ok] = alb * light[:, None]
    return np.clip(rgb, 0.0, 1.0)


def _semantic(room: Room, h: Hits) -> np.ndarray:
    """segment_semantic ids: 0 no geometry, 1 room structure, 2 + category index for objects."""
    ids = np.array([1] + [2 + CATEGORIES.index(c) for c in room.categories[1:]], np.uint8)
    return np.where(h.valid, ids[np.maximum(h.obj, 0)], 0).astype(np.uint8)


def class_distribution(semantic: np.ndarray) -> np.ndarray:
    """class_object: the share of object pixels per category; uniform when no object is seen."""
    counts = np.bincount(semantic.ravel(), minlength=len(SEMANTIC_NAMES))[2:].astype(np.float64)
    if counts.sum() == 0:
        return np.full(len(CATEGORIES), 1.0 / len(CATEGORIES), np.float32)
    return (counts / counts.sum()).astype(np.float32)
