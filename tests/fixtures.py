"""Tiny random but well-formed Taskonomy roots, written through `layout.write`, for tests.

Every domain of every view is written; labels are simple functions of the RGB image so that
networks trained on them can learn, and point_info is geometrically consistent (rooms shared by
several points, so every multi-view pairing has partners).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from taskonomy_ray import layout

CLASS_OBJECT = ["chair", "table", "sofa", "bed", "plant"]
CLASS_SCENE = ["kitchen", "bedroom", "office", "bathroom"]
SEMANTIC = ["uncertain", "background", "chair", "table", "sofa"]


def _smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random (H, W, 3) image in [0, 1]: a few low-frequency waves per channel."""
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for c in range(3):
        for _ in range(3):
            fy, fx, ph = rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 6.3)]
            img[..., c] += np.sin(2 * np.pi * (fy * y + fx * x) + ph)
    return (img - img.min()) / (img.max() - img.min() + 1e-9)


def _point_info(building: str, point: int, view: int, room: np.ndarray,
                rng: np.random.Generator) -> dict:
    loc = room + rng.uniform(-1, 1, 3)
    rot = Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()
    box_centre_cam = rot.T @ (room - loc)  # the room box seen from this camera
    return {
        "building": building, "point": point, "view_id": view,
        "camera_location": loc.tolist(), "camera_rotation_matrix": rot.tolist(),
        "field_of_view_rads": 1.0, "point_location": (room + [0.0, 0.0, 0.5]).tolist(),
        "room_layout": [*box_centre_cam.tolist(), 4.0, 3.0, 2.5, 0.0, 0.0, 0.0],
        "vanishing_points_gaussian_sphere": rot.T.reshape(-1).tolist(),
    }


def write_view(root: Path, building: str, point: int, view: int, room: np.ndarray,
               rng: np.random.Generator, size: int) -> None:
    """Every domain of one view, each a function of its RGB image."""
    rgb = _smooth_image(rng, size)
    lum = rgb.mean(-1)
    depth = 1.0 + 4.0 * rgb[..., 0]
    depth[:2, :2] = 127.0  # a corner without geometry: invalid in the release's encoding
    grad = np.stack(np.gradient(lum), -1)
    normal = np.concatenate([grad, np.ones(lum.shape + (1,))], -1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    seg = (lum * 3.999).astype(np.uint8)
    values = {
        "rgb": rgb, "depth_zbuffer": depth, "depth_euclidean": depth * 1.1, "normal": normal,
        "reshading": lum, "principal_curvature": np.stack([grad[..., 0], grad[..., 1]], -1),
        "edge_texture": np.abs(grad).sum(-1).clip(0, 1), "edge_occlusion": rgb[..., 1],
        "keypoints2d": rgb[..., 2], "keypoints3d": 1 - rgb[..., 2],
        "segment_unsup2d": seg, "segment_unsup25d": (rgb[..., 0] * 2.999).astype(np.uint8),
        "segment_semantic": np.minimum(seg + 1, len(SEMANTIC) - 1).astype(np.uint8),
        "class_object": np.eye(len(CLASS_OBJECT))[int(lum.mean() * 4.999)] * 0.8 + 0.04,
        "class_scene": np.full(len(CLASS_SCENE), 1.0 / len(CLASS_SCENE)),
        "point_info": _point_info(building, point, view, room, rng),
    }
    for domain, value in values.items():
        layout.write(root, building, point, view, domain, value)


def make_root(root: str | Path, *, buildings: int = 3, points: int = 4, views: int = 3,
              size: int = 32, rooms: int = 2, seed: int = 0) -> Path:
    """Write a fixture root with `buildings` x `points` x `views` images; returns its path."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for b in range(buildings):
        name = f"building{b}"
        centres = rng.uniform(-10, 10, (rooms, 3))
        for p in range(points):
            for v in range(views):
                write_view(root, name, p, v, centres[p % rooms], rng, size)
    layout.write_info(root, {"class_object": CLASS_OBJECT, "class_scene": CLASS_SCENE,
                             "segment_semantic": SEMANTIC})
    return root
