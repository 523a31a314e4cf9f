"""A real release's point_info records, read into the form this project's loaders use.

The release stores each camera as Blender Euler angles (`camera_rotation_final`, static x, y, z
axes: transforms3d's 'sxyz', as Taskonomy's own loaders decode it) and the room as an
axis-aligned box (`bounding_box_ranges`) whose x and y are swapped against the cameras' world
frame (their room-layout loader swaps the camera's rows to match, "for some reason"). This
module adds `camera_rotation_matrix` and `room_layout` from those, and rewrites
`vanishing_points_gaussian_sphere` in this project's sign convention (the release's, a quarter
turn per view with no signs fixed, is kept as `release_vanishing_points`), so the pose,
egomotion, room layout and vanishing point tasks read release roots and rendered ones alike.
Pure numpy and scipy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import DataError

RELEASE_ROTATION = "camera_rotation_final"
RELEASE_BOX = "bounding_box_ranges"
AXES = ("x", "y", "z")


def is_release_record(info: Any) -> bool:
    """Whether `info` comes from a release (it has the release's Euler angles)."""
    return isinstance(info, dict) and RELEASE_ROTATION in info


def euler_sxyz_matrix(angles: Any) -> np.ndarray:
    """World-from-camera rotation of Blender Euler angles: about static x, then y, then z."""
    ax, ay, az = np.asarray(angles, np.float64)
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def box_layout(lo: np.ndarray, hi: np.ndarray, position: np.ndarray,
               rotation: np.ndarray) -> np.ndarray:
    """room_layout's 9 stored numbers of a world-axis-aligned box seen from a camera.

    Box centre in the camera frame (3), extents along the world x, y, z axes (3), and the
    camera-from-room rotation as scipy 'xyz' Euler angles (3).
    """
    from scipy.spatial.transform import Rotation

    camera_from_world = np.asarray(rotation, np.float64).T
    centre = camera_from_world @ ((np.asarray(lo) + np.asarray(hi)) / 2 - np.asarray(position))
    angles = Rotation.from_matrix(camera_from_world).as_euler("xyz")
    return np.concatenate([centre, np.asarray(hi) - np.asarray(lo), angles])


def manhattan_axes(rotation: np.ndarray) -> np.ndarray:
    """The world x, y and up axes in the camera frame, 9 numbers (vanishing points).

    Each horizontal axis is signed to point into the scene (camera-frame z <= 0; on a tie,
    camera-frame x >= 0); the vertical axis is always world up.
    """
    axes = np.asarray(rotation, np.float64).T.copy()  # columns: world axes in the camera frame
    for k in range(2):
        a = axes[:, k]
        flip = a[2] > 1e-9 or (abs(a[2]) <= 1e-9 and a[0] < 0)
        axes[:, k] = -a if flip else a
    return axes.T.reshape(-1)


def release_room_box(ranges: Any, where: str = "point_info") -> tuple[np.ndarray, np.ndarray]:
    """World-frame (lo, hi) corners of a release's `bounding_box_ranges` (x and y swapped)."""
    if not isinstance(ranges, dict) or any(a not in ranges for a in AXES):
        raise DataError(f"{where}: {RELEASE_BOX} must map x, y and z to [min, max], got "
                        f"{ranges!r}; re-download this file")
    box = np.array([_numbers(ranges[a], 2, f"{RELEASE_BOX}[{a!r}]", where) for a in AXES])
    box = np.sort(box, axis=1)
    if (box[:, 1] - box[:, 0] <= 0).any():
        raise DataError(f"{where}: {RELEASE_BOX} {ranges!r} encloses no volume; re-download "
                        "this file")
    world = box[[1, 0, 2]]  # the box's x is the cameras' world y and its y their x
    return world[:, 0], world[:, 1]


def from_release(info: dict[str, Any], building: str, point: int, view: int,
                 where: str = "point_info") -> dict[str, Any]:
    """`info` with the keys this project's loaders read added (see the module docstring).

    `building`, `point` and `view` come from the file's path, since release records name their
    point only by uuid. A key already in this project's form is kept. A record without
    `bounding_box_ranges` gets no `room_layout`: the pose and egomotion tasks read it, the room
    layout and vanishing point tasks refuse it by name.
    """
    out = dict(info)
    out.setdefault("building", building)
    out.setdefault("point", point)
    out.setdefault("view_id", view)
    if "camera_rotation_matrix" in info:
        rotation = np.asarray(info["camera_rotation_matrix"], np.float64)
    else:
        rotation = euler_sxyz_matrix(_numbers(info[RELEASE_ROTATION], 3, RELEASE_ROTATION,
                                              where))
        out["camera_rotation_matrix"] = rotation.tolist()
    if RELEASE_BOX in info and "room_layout" not in info:
        position = _numbers(info.get("camera_location"), 3, "camera_location", where)
        lo, hi = release_room_box(info[RELEASE_BOX], where)
        out["room_layout"] = box_layout(lo, hi, position, rotation).tolist()
    vps = info.get("vanishing_points_gaussian_sphere")
    if vps is not None and np.shape(vps) != (9,):
        out["release_vanishing_points"] = vps
        if rotation.shape == (3, 3):
            out["vanishing_points_gaussian_sphere"] = manhattan_axes(rotation).tolist()
    return out


def _numbers(value: Any, n: int, key: str, where: str) -> np.ndarray:
    """`value` as n finite floats, or a DataError naming the key."""
    try:
        arr = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise DataError(f"{where}: point_info[{key!r}] should be {n} finite numbers, got "
                        f"{value!r}; re-download this file")
    return arr
