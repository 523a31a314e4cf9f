"""A real release's point_info records, read into the form this project's loaders use.

The release stores each camera as Blender Euler angles (`camera_rotation_final`, static x, y, z
axes: transforms3d's 'sxyz', as Taskonomy's own loaders decode it), the room as an axis-aligned
box (`bounding_box_ranges`) whose x and y are swapped against the cameras' world frame (their
room-layout loader swaps the camera's rows to match, "for some reason"), and vanishing points
as `{x, y, z}` unit vectors. This module rewrites those as `camera_rotation_matrix`,
`room_layout` and a flat `vanishing_points_gaussian_sphere`, keeping every original key, so the
pose, egomotion, room layout and vanishing point tasks read release roots and rendered ones
alike. Pure numpy and scipy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import DataError

RELEASE_ROTATION = "camera_rotation_final"
RELEASE_BOX = "bounding_box_ranges"
AXES = ("x", "y", "z")


def is_release_record(info: Any) -> bool:
    """Whether `info` is a release point_info (Euler angles, no rotation matrix)."""
    return (isinstance(info, dict) and RELEASE_ROTATION in info
            and "camera_rotation_matrix" not in info)


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
    point only by uuid. A record without `bounding_box_ranges` gets no `room_layout`: the pose
    and egomotion tasks read it, the room layout and vanishing point tasks refuse it by name.
    """
    out = dict(info)
    out.setdefault("building", building)
    out.setdefault("point", point)
    out.setdefault("view_id", view)
    rotation = euler_sxyz_matrix(_numbers(info[RELEASE_ROTATION], 3, RELEASE_ROTATION, where))
    out["camera_rotation_matrix"] = rotation.tolist()
    if RELEASE_BOX in info:
        position = _numbers(info.get("camera_location"), 3, "camera_location", where)
        lo, hi = release_room_box(info[RELEASE_BOX], where)
        out["room_layout"] = box_layout(lo, hi, position, rotation).tolist()
    vps = info.get("vanishing_points_gaussian_sphere")
    if isinstance(vps, dict):
        if any(a not in vps for a in AXES):
            raise DataError(f"{where}: vanishing_points_gaussian_sphere must map x, y and z to "
                            f"unit vectors, got {vps!r}; re-download this file")
        out["vanishing_points_gaussian_sphere"] = np.concatenate(
            [_numbers(vps[a], 3, f"vanishing_points_gaussian_sphere[{a!r}]", where)
             for a in AXES]).tolist()
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
