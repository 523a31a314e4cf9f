"""Exact geometry of the mini-Taskonomy ray caster on hand-made rooms."""

from __future__ import annotations

import numpy as np
import pytest

from taskonomy_ray.render.camera import Camera, look_at
from taskonomy_ray.render.domains import keypoints3d, occlusion_mask
from taskonomy_ray.render.materials import Material, pulse
from taskonomy_ray.render.raycast import Geometry, cast, cull_frustum
from taskonomy_ray.render.scene import Room
from taskonomy_ray.render.shading import render


def _room(**prims) -> Geometry:
    return Geometry(np.zeros(3), np.array([6.0, 6.0, 3.0]), np.zeros(6, np.int32), **prims)


def _one(g: Geometry, origin, direction):
    d = np.asarray(direction, float)
    return cast(g, np.asarray(origin, float), (d / np.linalg.norm(d))[None])


def test_box_hit_gives_exact_distance_outward_normal_and_zero_curvature():
    g = _room(box_lo=np.array([[2.0, 2.0, 0.0]]), box_hi=np.array([[3.0, 3.0, 1.0]]),
              box_obj=np.array([1], np.int32), box_mat=np.array([0], np.int32))
    h = _one(g, [0.5, 2.5, 0.5], [1, 0, 0])
    assert h.t[0] == pytest.approx(1.5, abs=1e-12)
    np.testing.assert_allclose(h.normal[0], [-1, 0, 0])
    np.testing.assert_allclose(h.curvature[0], [0, 0])
    assert h.obj[0] == 1


def test_cylinder_side_has_radial_normal_and_curvature_one_over_radius():
    g = _room(cyl=np.array([[3.0, 3.0, 0.0, 2.0, 0.25]]), cyl_obj=np.array([2], np.int32),
              cyl_mat=np.array([0], np.int32))
    h = _one(g, [0.5, 3.0, 1.0], [1, 0, 0])
    assert h.t[0] == pytest.approx(3.0 - 0.25 - 0.5, abs=1e-12)
    np.testing.assert_allclose(h.normal[0], [-1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(h.curvature[0], [4.0, 0.0])
    top = _one(g, [3.1, 3.0, 2.8], [0, 0, -1])  # the flat top cap
    assert top.t[0] == pytest.approx(0.8) and top.normal[0][2] == 1 and top.curvature[0][0] == 0


def test_sphere_has_both_principal_curvatures_one_over_radius():
    g = _room(sph=np.array([[3.0, 3.0, 1.5, 0.5]]), sph_obj=np.array([1], np.int32),
              sph_mat=np.array([0], np.int32))
    d = np.array([1.0, 1.0, 0.3])
    h = _one(g, [1.0, 1.0, 0.9], d)
    p = np.array([1.0, 1.0, 0.9]) + h.t[0] * d / np.linalg.norm(d)
    assert np.linalg.norm(p - [3, 3, 1.5]) == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_allclose(h.normal[0], (p - [3, 3, 1.5]) / 0.5, atol=1e-12)
    np.testing.assert_allclose(h.curvature[0], [2.0, 2.0])


def test_window_opening_lets_the_ray_leave_the_room():
    g = _room(openings=np.array([[1, 2.0, 4.0, 1.0, 2.0]]))  # hole in the +x wall
    through = _one(g, [3.0, 3.0, 1.5], [1, 0, 0])
    beside = _one(g, [3.0, 5.0, 1.5], [1, 0, 0])
    assert not through.valid[0] and through.surface[0] == -1
    assert beside.t[0] == pytest.approx(3.0) and beside.surface[0] == 1


def test_frustum_culling_changes_no_hit():
    rng = np.random.default_rng(0)
    lo = rng.uniform(0.5, 5.0, (30, 3)) * [1, 1, 0.4]
    g = _room(box_lo=lo, box_hi=lo + rng.uniform(0.1, 0.6, (30, 3)),
              box_obj=np.arange(30, dtype=np.int32), box_mat=np.zeros(30, np.int32))
    cam = Camera(np.array([0.3, 0.3, 1.5]), look_at(np.array([0.3, 0.3, 1.5]),
                                                    np.array([3.0, 4.0, 0.5])), 1.0)
    _, d = cam.ray_dirs(24)
    full, culled = cast(g, cam.position, d), cast(cull_frustum(g, cam.position, cam.rotation,
                                                                 cam.fov), cam.position, d)
    np.testing.assert_array_equal(full.t, culled.t)
    np.testing.assert_array_equal(full.surface, culled.surface)


def test_box_filtered_pulse_keeps_the_mean_coverage_of_thin_lines():
    x = np.linspace(0, 10, 10001)
    assert pulse(x, 0.07, np.full_like(x, 1e-6)).mean() == pytest.approx(0.07, abs=2e-3)
    wide = pulse(x, 0.07, np.full_like(x, 3.0))
    np.testing.assert_allclose(wide, 0.07, atol=1e-9)  # a footprint of whole periods: the mean


def _box_room_view(size: int):
    g = _room(box_lo=np.array([[2.5, 2.5, 0.0]]), box_hi=np.array([[3.5, 3.5, 1.0]]),
              box_obj=np.array([1], np.int32), box_mat=np.array([0], np.int32))
    room = Room(0, "office", g.shell_lo, g.shell_hi, g, [Material("plain", (0.7, 0.7, 0.7))],
                ["background", "table"], np.array([[3.0, 3.0, 2.8, 1.0]]), 0.3,
                np.zeros((0, 4)))
    pos = np.array([0.8, 0.9, 1.7])
    cam = Camera(pos, look_at(pos, np.array([3.0, 3.0, 0.8])), 0.9)
    return render(room, cam, size), cam


def test_central_pixel_of_an_odd_image_lies_on_the_optical_axis():
    view, cam = _box_room_view(33)
    c = 16
    assert view.depth_euclidean[c, c] == pytest.approx(view.depth_zbuffer[c, c], rel=1e-6)
    assert (view.depth_euclidean >= view.depth_zbuffer).all()


def test_occlusion_mask_marks_the_silhouette_not_the_crease_where_box_meets_floor():
    view, cam = _box_room_view(48)
    mask = occlusion_mask(view, cam.fov)
    box = view.segment_semantic >= 2
    # every occlusion pixel is on the box (the nearer side) and some box pixels are outline
    assert mask.any() and box[mask].all()
    # the box's bottom face rests on the floor: its lowest visible row is not an occlusion edge
    cols = np.flatnonzero(box.any(axis=0))
    mid = cols[len(cols) // 2]
    bottom = np.flatnonzero(box[:, mid]).max()
    assert not mask[bottom, mid]


def test_keypoints3d_respond_at_box_corners_and_not_on_open_planes():
    view, _ = _box_room_view(48)
    k = keypoints3d(view)
    box = view.segment_semantic >= 2
    assert k.max() > 0.3
    # a floor patch far from the box and the walls: one normal only
    floor = (view.normal[..., 1] > 0.9) & ~box
    rows, cols = np.nonzero(floor)
    far = floor & (np.abs(np.arange(48)[:, None] - rows.mean()) < 3)
    assert k[far].min() < 0.05
