"""Mini-Taskonomy, the contact sheet: every written domain of a few views, decoded from disk.

Reading the files back (rather than the renderer's arrays) shows exactly what a loader will see;
the room_layout column draws the stored room box and vanishing directions over the RGB image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy.spatial.transform import Rotation

from .. import layout
from ..errors import DataError

COLUMNS = ("rgb", "depth_zbuffer", "depth_euclidean", "normal", "reshading",
           "principal_curvature", "edge_texture", "edge_occlusion", "keypoints2d", "keypoints3d",
           "segment_unsup2d", "segment_unsup25d", "segment_semantic", "class_object",
           "class_scene", "room_layout")
TILE = 128
LABEL_H = 14


def _colormap(x: np.ndarray, name: str = "magma") -> np.ndarray:
    from matplotlib import colormaps

    return colormaps[name](np.clip(x, 0, 1))[..., :3]


def _ids(ids: np.ndarray) -> np.ndarray:
    """Distinct colours for integer ids (0 stays black)."""
    rng = np.random.default_rng(7)
    table = rng.uniform(0.15, 1.0, (256, 3))
    table[0] = 0.0
    return table[ids.astype(np.int64)]


def _text_tile(lines: list[str]) -> np.ndarray:
    im = Image.new("RGB", (TILE, TILE), (24, 24, 24))
    draw = ImageDraw.Draw(im)
    for k, line in enumerate(lines[:10]):
        draw.text((4, 4 + 12 * k), line, fill=(230, 230, 230))
    return np.asarray(im).astype(np.float64) / 255.0


def _top(dist: np.ndarray, names: list[str], k: int = 6) -> list[str]:
    order = np.argsort(-dist, kind="stable")[:k]
    return [f"{dist[i]:.2f} {names[i] if i < len(names) else i}" for i in order if dist[i] > 0]


def _layout_tile(rgb: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """The RGB image with the stored room box (green) and vanishing directions drawn on it."""
    im = Image.fromarray((rgb * 255).astype(np.uint8))
    im = im.resize((TILE, TILE), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(im)
    f = (TILE / 2) / np.tan(info["field_of_view_rads"] / 2)
    lay = np.asarray(info["room_layout"])
    rot = Rotation.from_euler("xyz", lay[6:]).as_matrix()
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    corners = lay[:3] + (signs * lay[3:6] / 2) @ rot.T
    for i in range(8):
        for j in range(i + 1, 8):
            if np.abs(signs[i] - signs[j]).sum() == 2:  # the 12 box edges
                seg = _clip_near(corners[i], corners[j])
                if seg is not None:
                    draw.line([_pix(q, f) for q in seg], fill=(40, 255, 40), width=2)
    for k, colour in enumerate([(255, 60, 60), (60, 120, 255), (255, 255, 60)]):
        vp = np.asarray(info["vanishing_points_gaussian_sphere"][3 * k: 3 * k + 3])
        tip = _clip_near(np.array([0, 0, -1.0]), np.array([0, 0, -1.0]) + 0.5 * vp)
        if tip is not None:
            draw.line([_pix(q, f) for q in tip], fill=colour, width=2)
    return np.asarray(im).astype(np.float64) / 255.0


def _clip_near(a: np.ndarray, b: np.ndarray, near: float = 0.05) -> tuple | None:
    """The part of segment a-b in front of the camera (z < -near), or None."""
    za, zb = -a[2], -b[2]
    if za < near and zb < near:
        return None
    if za < near:
        a = a + (b - a) * (near - za) / (zb - za)
    elif zb < near:
        b = b + (a - b) * (near - zb) / (za - zb)
    return a, b


def _pix(q: np.ndarray, f: float) -> tuple[float, float]:
    return (TILE / 2 + f * q[0] / -q[2], TILE / 2 - f * q[1] / -q[2])


def _tiles(root: Path, building: str, point: int, view: int,
           info_json: dict[str, Any]) -> list[np.ndarray]:
    def get(d: str) -> Any:
        return layout.read(root, building, point, view, d)

    info = get("point_info")
    depth = get("depth_zbuffer")
    valid = layout.depth_valid(depth)
    dmax = max(float(depth[valid].max()) if valid.any() else 1.0, 1e-3)
    out = {
        "rgb": get("rgb"),
        "depth_zbuffer": np.where(valid[..., None], _colormap(depth / dmax), 0.0),
        "depth_euclidean": np.where(valid[..., None],
                                    _colormap(get("depth_euclidean") / dmax), 0.0),
        "normal": (get("normal") + 1) / 2,
        "principal_curvature": np.dstack([get("principal_curvature") / 8.0 + 0.5,
                                          np.full(depth.shape, 0.5)]),
        "segment_unsup2d": _ids(get("segment_unsup2d")),
        "segment_unsup25d": _ids(get("segment_unsup25d")),
        "segment_semantic": _ids(get("segment_semantic")),
        "class_object": _text_tile(["class_object", *_top(get("class_object"),
                                                          info_json.get("class_object", []))]),
        "class_scene": _text_tile(["class_scene", *_top(get("class_scene"),
                                                        info_json.get("class_scene", []))]),
        "room_layout": _layout_tile(get("rgb"), info),
    }
    for d in ("reshading", "edge_texture", "edge_occlusion", "keypoints2d", "keypoints3d"):
        out[d] = np.repeat(get(d)[..., None], 3, axis=2)
    return [_fit(out[c]) for c in COLUMNS]


def _fit(a: np.ndarray) -> np.ndarray:
    if a.shape[0] == TILE:
        return a
    im = Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8))
    return np.asarray(im.resize((TILE, TILE), Image.Resampling.NEAREST)).astype(np.float64) / 255.0


def pick_views(root: Path, n: int = 4, per_building: int = 12) -> list[tuple[str, int, int]]:
    """Up to n telling views: of different room types where possible, most object classes first.

    Candidates are view 0 of the first `per_building` points of every building.
    """
    scored = []
    for building in layout.buildings(root):
        for p, v in [pv for pv in layout.scan(root, building) if pv[1] == 0][:per_building]:
            seg = layout.read(root, building, p, v, "segment_semantic")
            room = layout.read(root, building, p, v, "point_info").get("room_type", "")
            scored.append((-len(np.unique(seg[seg >= 2])), room, (building, p, v)))
    scored.sort(key=lambda s: s[0])  # stable: ties keep the dataset order
    picked: list[tuple[str, int, int]] = []
    rooms: set[str] = set()
    for _score, room, key in scored:  # first pass: one view per room type
        if room not in rooms and len(picked) < n:
            picked.append(key)
            rooms.add(room)
    picked += [key for _, _, key in scored if key not in picked][: n - len(picked)]
    return picked


def _labelled(tile: np.ndarray, label: str) -> np.ndarray:
    im = Image.fromarray((np.clip(tile, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, 6 * len(label) + 4, LABEL_H - 2), fill=(0, 0, 0))
    draw.text((2, 1), label, fill=(255, 255, 255))
    return np.asarray(im)


def write_preview(root: str | Path, path: str | Path, n: int = 4) -> Path:
    """Write the contact sheet of n views of the dataset at `root` to the PNG `path`.

    Each view takes two rows of eight labelled tiles; views are separated by a dark band.
    """
    root = Path(root)
    views = pick_views(root, n)
    if not views:
        raise DataError(f"{root} holds no rendered views; run `taskonomy-ray synth` first")
    info_json = layout.read_info(root)
    half = len(COLUMNS) // 2
    blocks = []
    for v in views:
        tiles = [_labelled(t, c) for t, c in zip(_tiles(root, *v, info_json), COLUMNS)]
        blocks += [np.concatenate(tiles[:half], axis=1), np.concatenate(tiles[half:], axis=1),
                   np.full((6, half * TILE, 3), 40, np.uint8)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(blocks[:-1], axis=0)).save(path)
    return path
