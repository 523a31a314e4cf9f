"""Mini-Taskonomy, the writer: render every view of every point and store it in the release layout.

Work is split by (building, point) across processes; every random choice is derived from (seed,
building, point, view), so the same seed gives byte-identical files whatever the worker count.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, layout
from ..errors import ConfigError
from .camera import Camera, Point, layout_vector, make_point, project, vanishing_points
from .domains import image_domains
from .furniture import CATEGORIES
from .scene import ROOM_TYPES, Building, building_name, make_building
from .shading import SEMANTIC_NAMES, View, render

VISIBLE_TOLERANCE = 0.02  # relative depth agreement for a point to count as visible in a view
CONVENTIONS = {
    "camera": "Blender axes: x right, y up, the camera looks down -z; camera_rotation_matrix is "
              "world-from-camera; world z is up; metres",
    "room_layout": "room box centre in the camera frame (3), box extents along the room's own "
                   "x, y, z axes (3), camera-from-room rotation as scipy 'xyz' Euler angles (3)",
    "vanishing_points_gaussian_sphere": "unit directions of the room's x, y and up axes in the "
                                        "camera frame; horizontal axes signed to point into the "
                                        "scene (z <= 0, ties x >= 0); the third is world up",
    "class_object": "share of object pixels per category; uniform when no object is in view",
    "class_scene": "one-hot room type",
    "reshading": "Lambertian cosine with a light at the camera centre, no falloff",
    "principal_curvature": "k1 >= k2 in 1/m, convex positive (planes 0, cylinders 1/r, spheres)",
}


@dataclass(frozen=True)
class SynthConfig:
    """What to render: points per building, views per point, image size, seed, buildings."""

    out: str
    points: int
    views: int = 3
    size: int = 64
    seed: int = 0
    buildings: int = 4
    workers: int = 0  # 0: one per CPU core
    preview: str | None = None

    def __post_init__(self) -> None:
        checks = [(self.points >= 1, "--points must be >= 1"),
                  (1 <= self.views <= 8, "--views must be between 1 and 8"),
                  (16 <= self.size <= 1024, "--size must be between 16 and 1024 pixels"),
                  (self.seed >= 0, "--seed must be >= 0"),
                  (self.buildings >= 1, "--buildings must be >= 1"),
                  (self.workers >= 0, "--workers must be >= 0 (0 = one per core)")]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    @property
    def n_workers(self) -> int:
        """Worker processes actually used."""
        return self.workers or mp.cpu_count()


@dataclass(frozen=True)
class SynthResult:
    """What was written: the view count, the bytes on disk and the wall time."""

    out: Path
    views: int
    bytes: int
    seconds: float
    buildings: list[str]


CHUNK_POINTS = 8  # points per unit of parallel work (planning, then rendering)


@lru_cache(maxsize=8)
def _building(seed: int, b: int) -> Building:
    """Building b (each worker rebuilds it from the seed: a few milliseconds)."""
    return make_building(seed, b)


def plan_points(cfg: SynthConfig, b: int, start: int, stop: int) -> list[Point]:
    """Points start..stop-1 of building b with their cameras (no rendering)."""
    building = _building(cfg.seed, b)
    return [make_point(cfg.seed, b, building, i, cfg.views, cfg.size) for i in range(start, stop)]


def render_point(cfg: SynthConfig, b: int, p: int,
                 points: tuple[Point, ...] | None = None) -> list[dict[str, Any]]:
    """Every view of point p in building b: a list of {domain: decoded value}.

    `points` are all the building's points (planned when not given); the other points are
    needed for point_info's nonfixated_points_in_view.
    """
    building = _building(cfg.seed, b)
    points = tuple(plan_points(cfg, b, 0, cfg.points)) if points is None else points
    point = points[p]
    room = building.rooms[point.room]
    out = []
    for v, cam in enumerate(point.cameras):
        view = render(room, cam, cfg.size)
        values: dict[str, Any] = {
            "rgb": view.rgb, "depth_zbuffer": view.depth_zbuffer,
            "depth_euclidean": view.depth_euclidean, "normal": view.normal,
            "reshading": view.reshading, "principal_curvature": view.principal_curvature,
            "segment_semantic": view.segment_semantic, "class_object": view.class_object,
            "class_scene": view.class_scene, **image_domains(view, cam.fov),
        }
        values["point_info"] = point_info(building, points, point, v, cam, view)
        out.append(values)
    return out


def point_info(building: Building, points: tuple[Point, ...], point: Point, v: int, cam: Camera,
               view: View) -> dict[str, Any]:
    """The view's point_info: pose, fov, fixated point, room layout, vanishing points, ids."""
    room = building.rooms[point.room]
    return {
        "building": building.name, "point": point.index, "view_id": v,
        "point_uuid": f"{building.name}_point_{point.index}",
        "camera_location": cam.position.tolist(),
        "camera_rotation_matrix": cam.rotation.tolist(),
        "field_of_view_rads": float(cam.fov),
        "point_location": point.location.tolist(),
        "point_normal": point.normal.tolist(),
        "room_layout": layout_vector(room, cam).tolist(),
        "vanishing_points_gaussian_sphere": vanishing_points(cam).tolist(),
        "room": room.index, "room_type": room.room_type,
        "resolution": int(view.rgb.shape[0]),
        "nonfixated_points_in_view": visible_points(points, point, cam, view),
    }


def visible_points(points: tuple[Point, ...], point: Point, cam: Camera, view: View) -> list[int]:
    """Other points of the same room that project into the view unoccluded."""
    others = [q for q in points if q.room == point.room and q.index != point.index]
    if not others:
        return []
    size = view.rgb.shape[0]
    px, z = project(cam, size, np.array([q.location for q in others]))
    seen = []
    for q, (col, row), zq in zip(others, px, z):
        if zq > 0 and 0 <= col < size and 0 <= row < size:
            zr = float(view.depth_zbuffer[int(row), int(col)])
            if abs(zr - zq) <= VISIBLE_TOLERANCE * zq:
                seen.append(q.index)
    return seen


def _plan_task(args: tuple[SynthConfig, int, int, int]) -> list[Point]:
    return plan_points(*args)


def _render_task(args: tuple[SynthConfig, int, list[int], tuple[Point, ...]]) -> tuple[int, int]:
    """Render and write some points' views; returns (views, bytes written)."""
    cfg, b, ps, points = args
    name = building_name(b)
    total = 0
    for p in ps:
        for v, values in enumerate(render_point(cfg, b, p, points)):
            for dom, value in values.items():
                total += layout.write(cfg.out, name, p, v, dom, value).stat().st_size
    return len(ps) * cfg.views, total


def _chunks(cfg: SynthConfig) -> list[tuple[int, int, int]]:
    """(building, start, stop) point ranges, the unit of parallel work."""
    return [(b, s, min(s + CHUNK_POINTS, cfg.points)) for b in range(cfg.buildings)
            for s in range(0, cfg.points, CHUNK_POINTS)]


def dataset_info(cfg: SynthConfig) -> dict[str, Any]:
    """dataset_info.json: class names the loader sizes outputs with, and how it was made."""
    return {
        "generator": "taskonomy_ray.render", "version": __version__,
        "seed": cfg.seed, "points": cfg.points, "views": cfg.views, "size": cfg.size,
        "buildings": [building_name(b) for b in range(cfg.buildings)],
        "class_object": list(CATEGORIES), "class_scene": list(ROOM_TYPES),
        "segment_semantic": list(SEMANTIC_NAMES),
        "depth_invalid_m": layout.UINT16_MAX / layout.DEPTH_UNITS_PER_METRE,
        "conventions": CONVENTIONS,
    }


RENDER_STATES = ("empty", "complete", "partial", "other")


def render_state(cfg: SynthConfig) -> tuple[str, str]:
    """What `cfg.out` holds for this render: (state, why), state one of RENDER_STATES.

    `empty`: nothing yet (or no folder); `complete`: this very render, finished; `partial`: this
    render, interrupted (rendering again rewrites the same files); `other`: anything else (a
    real dataset, another render), which rendering into would mix with ours.
    """
    root = Path(cfg.out)
    if not root.is_dir() or not any(root.iterdir()):
        return "empty", f"{root} is empty"
    info = layout.read_info(root)
    if info.get("generator") != "taskonomy_ray.render":
        return "other", f"{root} holds files that taskonomy-ray's renderer did not write"
    want = dataset_info(cfg)
    differ = [k for k in ("seed", "points", "views", "size", "buildings")
              if info.get(k) != want[k]]
    if differ:
        have = ", ".join(f"{k} {info.get(k)!r}" for k in differ)
        return "other", (f"{root} holds another render ({have}, where this one has "
                         f"{', '.join(repr(want[k]) for k in differ)})")
    if info.get("complete") is False:
        return "partial", f"{root} holds this render, interrupted"
    if "complete" not in info:  # written before renders recorded completion: count the views
        if not all((root / b / "rgb").is_dir()
                   and sum(1 for _ in layout.scan(root, b)) == cfg.points * cfg.views
                   for b in want["buildings"]):
            return "partial", f"{root} holds this render, with views missing"
    return "complete", f"{root} holds this render, complete"


def synthesize(cfg: SynthConfig, progress: bool = True) -> SynthResult:
    """Render the whole dataset into cfg.out (in parallel), then the optional preview sheet.

    Workers are spawned processes (safe next to threads, e.g. inside a Ray worker), so a script
    that calls this with more than one worker needs the usual `if __name__ == "__main__":` guard.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    layout.write_info(cfg.out, {**dataset_info(cfg), "complete": False})
    n_views, n_bytes = 0, 0
    bar = tqdm(total=cfg.buildings * cfg.points * cfg.views, unit="view", disable=not progress,
               desc="synth")
    spawn = mp.get_context("spawn")
    with spawn.Pool(cfg.n_workers) if cfg.n_workers > 1 else contextlib.nullcontext() as pool:
        chunks = _chunks(cfg)
        ordered = pool.imap if pool else map
        # Phase 1: plan every point (cheap, in parallel); every chunk needs its building's points.
        plans: dict[int, list[Point]] = {b: [] for b in range(cfg.buildings)}
        bar.set_description("synth (placing cameras)")
        for (b, _, _), pts in zip(chunks, ordered(_plan_task, [(cfg, *c) for c in chunks])):
            plans[b] += pts
        bar.set_description("synth")
        # Phase 2: render and write, in any order (every file depends on its own view only).
        tasks = [(cfg, b, list(range(s, e)), tuple(plans[b])) for b, s, e in chunks]
        results = pool.imap_unordered(_render_task, tasks) if pool else map(_render_task, tasks)
        for v, nb in results:
            n_views, n_bytes = n_views + v, n_bytes + nb
            bar.update(v)
    bar.close()
    layout.write_info(cfg.out, {**dataset_info(cfg), "complete": True})  # every view is written
    if cfg.preview:
        from .preview import write_preview

        write_preview(cfg.out, cfg.preview)
    return SynthResult(Path(cfg.out), n_views, n_bytes, time.perf_counter() - start,
                       [building_name(b) for b in range(cfg.buildings)])
