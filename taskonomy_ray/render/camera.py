"""Mini-Taskonomy rendering, step 4: fixated points and the cameras that look at them.

A point is a 3D surface point seen by a ray from free space; each of its views is a pinhole camera
at another free position whose optical axis passes through the point, so the point projects at
the image centre (the pairs and triples for pose, egomotion and point matching).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from ..point_info import box_layout, manhattan_axes
from .raycast import cast
from .scene import Building, Room

CAMERA_HEIGHT = (0.8, 1.9)  # metres above the floor
WALL_MARGIN = 0.35  # cameras keep this far from walls (and `Room.blocked` keeps them off furniture)
VIEW_DISTANCE = (1.2, 5.0)  # camera-to-point distance range
FOV_RANGE = (np.deg2rad(45.0), np.deg2rad(75.0))
MIN_FACING = 0.25  # cosine between the point's normal and the direction to the camera
MAX_PITCH = np.deg2rad(65.0)
ATTEMPTS = 100


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: world position, world-from-camera rotation (Blender axes) and fov."""

    position: np.ndarray  # (3,)
    rotation: np.ndarray  # (3, 3) columns: camera x (right), y (up), z (backwards) in world
    fov: float  # full field of view in radians, horizontal = vertical (square images)

    def ray_dirs(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Unit ray directions through pixel centres, camera (S*S, 3) and world (S*S, 3)."""
        f = np.tan(self.fov / 2)
        c = (np.arange(size) + 0.5 - size / 2) / (size / 2) * f
        x, y = np.meshgrid(c, -c)  # row 0 is the top of the image
        d = np.stack([x, y, -np.ones_like(x)], axis=-1).reshape(-1, 3)
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        return d, d @ self.rotation.T


@dataclass(frozen=True)
class Point:
    """A fixated point: where it is, its surface normal, its room and its views' cameras."""

    index: int
    location: np.ndarray
    normal: np.ndarray
    room: int
    cameras: tuple[Camera, ...]


def look_at(position: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """World-from-camera rotation of a camera at `position` looking at `target`, z up."""
    f = target - position
    f = f / np.linalg.norm(f)
    x = np.cross(f, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    z = -f
    y = np.cross(z, x)
    c, s = np.cos(roll), np.sin(roll)
    return np.stack([c * x + s * y, -s * x + c * y, z], axis=1)


def _free_mask(room: Room, p: np.ndarray) -> np.ndarray:
    """Which positions (K, 3) are in free space: off the walls and off the furniture."""
    lo, hi = room.lo + WALL_MARGIN, room.hi - WALL_MARGIN
    ok = (lo[0] <= p[:, 0]) & (p[:, 0] <= hi[0]) & (lo[1] <= p[:, 1]) & (p[:, 1] <= hi[1])
    b = room.blocked[None]  # (1, R, 4)
    x, y = p[:, None, 0], p[:, None, 1]
    inside = (b[..., 0] <= x) & (x <= b[..., 2]) & (b[..., 1] <= y) & (y <= b[..., 3])
    return ok & ~inside.any(axis=1)


def _candidates(rng: np.random.Generator, room: Room, k: int) -> np.ndarray:
    """The free positions among `k` uniform draws in the room at camera height, in draw order."""
    p = np.stack([rng.uniform(room.lo[0], room.hi[0], k), rng.uniform(room.lo[1], room.hi[1], k),
                  room.lo[2] + rng.uniform(*CAMERA_HEIGHT, k)], axis=1)
    return p[_free_mask(room, p)]


def _free_position(rng: np.random.Generator, room: Room) -> np.ndarray | None:
    free = _candidates(rng, room, 20)
    return free[0] if len(free) else None


def _surface_point(rng: np.random.Generator, room: Room) -> tuple[np.ndarray, np.ndarray] | None:
    """A surface point hit by a ray from a free position.

    The ray aims at a random primitive (60%) or along a random, mostly level direction, so
    furniture, walls, floors and ceilings all get points.
    """
    o = _free_position(rng, room)
    if o is None:
        return None
    centres, radii = room.geometry.bounding_spheres()
    if len(centres) and rng.random() < 0.6:
        k = int(rng.integers(len(centres)))
        d = centres[k] + rng.uniform(-0.5, 0.5, 3) * radii[k] - o
        d = d[None] / np.linalg.norm(d)
    else:
        yaw, pitch = rng.uniform(0, 2 * np.pi), rng.uniform(-0.7, 0.2)
        d = np.array([[np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)]])
    h = cast(room.geometry, o, d)
    if not h.valid[0] or -(h.normal[0] @ d[0]) < MIN_FACING:
        return None
    return o + h.t[0] * d[0], h.normal[0]


def _fixating_camera(rng: np.random.Generator, room: Room, point: np.ndarray,
                     normal: np.ndarray, size: int, k: int = 24) -> Camera | None:
    """A camera from free space whose optical axis hits `point` unoccluded, facing its surface.

    The four pixels around the image centre must see the point's own surface too, so the point
    is at the centre of a `size` x `size` image and not on a sliver at an object's edge. `k`
    candidate positions are tried in one batched ray cast; the first that passes is kept.
    """
    pos = _candidates(rng, room, k)
    rolls, fovs = rng.normal(0.0, np.deg2rad(4.0), k), rng.uniform(*FOV_RANGE, k)
    to_cam = pos - point
    dist = np.linalg.norm(to_cam, axis=1)
    keep = (dist >= VIEW_DISTANCE[0]) & (dist <= VIEW_DISTANCE[1])
    keep &= to_cam @ normal >= MIN_FACING * dist
    keep &= np.abs(to_cam[:, 2]) <= np.sin(MAX_PITCH) * dist
    idx = np.flatnonzero(keep)
    if not len(idx):
        return None
    cams = [Camera(pos[i], look_at(pos[i], point, float(rolls[i])), float(fovs[i])) for i in idx]
    rays = []
    for cam in cams:
        half = np.tan(cam.fov / 2) / size  # half a pixel, in the image plane at unit depth
        d = np.array([[0, 0, -1.0], [-half, -half, -1], [half, -half, -1], [-half, half, -1],
                      [half, half, -1]])
        rays.append((d / np.linalg.norm(d, axis=1, keepdims=True)) @ cam.rotation.T)
    h = cast(room.geometry, np.repeat(pos[idx], 5, axis=0), np.concatenate(rays))
    t, surface = h.t.reshape(-1, 5), h.surface.reshape(-1, 5)
    seen = np.abs(t[:, 0] - dist[idx]) <= 1e-6 * np.maximum(dist[idx], 1.0)  # nothing in between
    whole = (surface[:, 1:] == surface[:, :1]).all(axis=1)  # not on an edge at this resolution
    good = np.flatnonzero(seen & whole)
    return cams[good[0]] if len(good) else None


def make_point(seed: int, building_index: int, building: Building, index: int,
               views: int, size: int) -> Point:
    """Point `index` of a building and its `views` cameras, from (seed, building, point, view).

    Points go round-robin over the rooms (in a per-building random order); a room where no point
    is seen by `views` cameras after ATTEMPTS tries (a small, crowded bathroom with many views)
    passes the point on to the next room of the order.
    """
    order = _room_order(seed, building_index, len(building.rooms))
    for shift in range(len(order)):
        room = building.rooms[order[(index + shift) % len(order)]]
        rng = np.random.default_rng([seed, building_index, index, shift, 0x9])
        for _ in range(ATTEMPTS):
            found = _surface_point(rng, room)
            if found is None:
                continue
            cams = _cameras(seed, building_index, index, views, size, room, found,
                            int(rng.integers(1 << 30)))
            if cams is not None:
                return Point(index, found[0], found[1], room.index, cams)
    raise DataError(f"{building.name}: no room has a point seen by {views} cameras; use fewer "
                    "--views or another --seed")


def _cameras(seed: int, building_index: int, index: int, views: int, size: int, room: Room,
             found: tuple[np.ndarray, np.ndarray], salt: int) -> tuple[Camera, ...] | None:
    """The point's cameras, view v drawn from (seed, building, point, v); None if one fails."""
    cams = []
    for v in range(views):
        vr = np.random.default_rng([seed, building_index, index, v, salt])
        cam = next((c for c in (_fixating_camera(vr, room, *found, size) for _ in range(4))
                    if c is not None), None)
        if cam is None:
            return None
        cams.append(cam)
    return tuple(cams)


def _room_order(seed: int, building_index: int, n_rooms: int) -> np.ndarray:
    """Rooms in a per-building random order; point i goes to room order[i % n]: an even spread."""
    return np.random.default_rng([seed, building_index, 0x7]).permutation(n_rooms)


def layout_vector(room: Room, cam: Camera) -> np.ndarray:
    """room_layout: the room box relative to the camera, 9 numbers.

    Box centre (camera frame), size (x, y, z extents), and the camera-from-room rotation as
    scipy 'xyz' Euler angles (radians).
    """
    return box_layout(room.lo, room.hi, cam.position, cam.rotation)


def vanishing_points(cam: Camera) -> np.ndarray:
    """The Manhattan axes (world x, world y, up) in the camera frame, 9 numbers.

    Sign convention: each horizontal axis points into the scene (camera-frame z <= 0; on a tie,
    camera-frame x >= 0); the vertical axis is always world up.
    """
    return manhattan_axes(cam.rotation)


def project(cam: Camera, size: int, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (K, 2) as (column, row) and z-buffer depth (K,) of world points."""
    pc = (points - cam.position) @ cam.rotation  # camera frame
    z = -pc[:, 2]
    f = (size / 2) / np.tan(cam.fov / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        col = size / 2 + f * pc[:, 0] / z
        row = size / 2 - f * pc[:, 1] / z
    return np.stack([col, row], axis=1), z
