"""Physical consistency of a rendered mini-Taskonomy dataset, read back through the layout codec."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import maximum_filter

from taskonomy_ray import layout
from taskonomy_ray.cli import main
from taskonomy_ray.dataset import TaskonomyDataset
from taskonomy_ray.errors import ConfigError
from taskonomy_ray.render import SynthConfig, synthesize
from taskonomy_ray.render.synth import render_point

SIZE = 32
CFG = dict(points=3, views=3, size=SIZE, seed=5, buildings=2)
QUANT = 1.0 / layout.DEPTH_UNITS_PER_METRE


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mini") / "ds"
    synthesize(SynthConfig(str(out), workers=1, **CFG), progress=False)
    return out


def _views(root: Path):
    for b in layout.buildings(root):
        for p, v in layout.scan(root, b):
            yield b, p, v


def _read(root, key, dom):
    return layout.read(root, *key, dom)


def _cam_dirs(info: dict, size: int) -> np.ndarray:
    f = np.tan(info["field_of_view_rads"] / 2)
    c = (np.arange(size) + 0.5 - size / 2) / (size / 2) * f
    x, y = np.meshgrid(c, -c)
    d = np.stack([x, y, -np.ones_like(x)], axis=-1)
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def test_every_domain_of_every_view_is_written_and_decodes(root):
    keys = list(_views(root))
    assert len(keys) == CFG["buildings"] * CFG["points"] * CFG["views"]
    for key in keys:
        for dom in layout.DOMAINS:
            layout.read(root, *key, dom)


def test_dataset_info_names_size_the_class_outputs(root):
    info = layout.read_info(root)
    assert len(info["class_object"]) >= 10 and len(info["class_scene"]) >= 6
    assert info["segment_semantic"][:2] == ["uncertain", "background"]
    assert info["segment_semantic"][2:] == info["class_object"]
    for key in _views(root):
        assert _read(root, key, "class_object").shape == (len(info["class_object"]),)
        scene = _read(root, key, "class_scene")
        assert info["class_scene"][int(scene.argmax())] == _read(root, key, "point_info")[
            "room_type"] and scene.max() == 1.0


def test_depth_euclidean_is_at_least_zbuffer_and_equal_on_the_optical_axis(root):
    for key in _views(root):
        z, e = _read(root, key, "depth_zbuffer"), _read(root, key, "depth_euclidean")
        assert (e >= z - QUANT).all()
        c = slice(SIZE // 2 - 1, SIZE // 2 + 1)  # the four pixels around the axis
        np.testing.assert_allclose(e[c, c], z[c, c], rtol=2e-3, atol=QUANT)


def test_normals_are_unit_length_and_face_the_camera(root):
    for key in _views(root):
        valid = layout.depth_valid(_read(root, key, "depth_zbuffer"))
        n = _read(root, key, "normal")[valid]
        np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=0.03)
        d = _cam_dirs(_read(root, key, "point_info"), SIZE)[valid]
        assert ((n * d).sum(axis=1) < 0.03).all()


def test_reshading_is_the_cosine_to_a_light_at_the_camera(root):
    for key in _views(root):
        valid = layout.depth_valid(_read(root, key, "depth_zbuffer"))
        n = _read(root, key, "normal")
        d = _cam_dirs(_read(root, key, "point_info"), SIZE)
        expected = np.clip(-(n * d).sum(axis=-1), 0, 1)
        np.testing.assert_allclose(_read(root, key, "reshading")[valid], expected[valid],
                                   atol=0.04)


def test_edge_occlusion_fires_where_depth_jumps_and_stays_dark_where_depth_is_smooth(root):
    jumps = smooth_dark = 0
    for key in _views(root):
        z = _read(root, key, "depth_zbuffer")
        occ = _read(root, key, "edge_occlusion")
        valid = layout.depth_valid(z)
        rel = np.abs(np.diff(z, axis=1)) / np.minimum(z[:, 1:], z[:, :-1])
        both = valid[:, 1:] & valid[:, :-1]
        # a 40% step between surfaces not seen at grazing angles (where a pixel spans that much)
        facing = _read(root, key, "reshading") > 0.2
        for r, c in zip(*np.nonzero(both & (rel > 0.4) & facing[:, 1:] & facing[:, :-1])):
            near = c if z[r, c] < z[r, c + 1] else c + 1
            assert occ[r, near] > 0.5
            jumps += 1
        # pixels whose 7x7 neighbourhood is smooth (relative steps < 1% both ways) are not edges
        step = np.zeros_like(z)
        for axis in (0, 1):
            d = np.abs(np.diff(z, axis=axis)) / np.minimum(*(np.delete(z, e, axis=axis)
                                                            for e in (0, -1)))
            pad = [(0, 0), (0, 0)]
            pad[axis] = (0, 1)
            step = np.maximum(step, np.pad(d, pad))
            pad[axis] = (1, 0)
            step = np.maximum(step, np.pad(d, pad))
        smooth = (maximum_filter(step, 7) < 0.01) & (maximum_filter(~valid, 7) == 0)
        assert (occ[smooth] < 0.05).all()
        smooth_dark += int(smooth.sum())
    assert jumps > 0 and smooth_dark > 0


def test_texture_edges_are_not_all_occlusion_edges(root):
    tex_only = tex = 0
    for key in _views(root):
        t, o = _read(root, key, "edge_texture"), _read(root, key, "edge_occlusion")
        tex += int((t > 0.5).sum())
        tex_only += int(((t > 0.5) & (o < 0.1)).sum())
    assert tex > 0 and tex_only > 0.3 * tex


def test_appearance_is_not_a_function_of_geometry(root):
    from taskonomy_ray.render.domains import grey

    luma, shade = [], []
    for key in _views(root):
        valid = layout.depth_valid(_read(root, key, "depth_zbuffer"))
        luma.append(grey(_read(root, key, "rgb"))[valid])
        shade.append(_read(root, key, "reshading")[valid])
    # albedo (textures) and room lights, not the camera-light cosine, drive the image
    assert abs(np.corrcoef(np.concatenate(luma), np.concatenate(shade))[0, 1]) < 0.6


def test_segment_semantic_ids_agree_with_class_object(root):
    names = layout.read_info(root)["class_object"]
    for key in _views(root):
        seg = _read(root, key, "segment_semantic")
        dist = _read(root, key, "class_object")
        assert seg.max() < 2 + len(names)
        present = sorted(set(np.unique(seg[seg >= 2]) - 2))
        assert dist.sum() == pytest.approx(1.0, abs=1e-5)
        if present:
            assert sorted(np.flatnonzero(dist > 0)) == present
            counts = np.bincount(seg[seg >= 2] - 2, minlength=len(names))
            np.testing.assert_allclose(dist, counts / counts.sum(), atol=1e-6)
        else:
            np.testing.assert_allclose(dist, 1.0 / len(names))


def test_each_view_sees_its_fixated_point_at_the_centre_at_the_stated_depth(root):
    for key in _views(root):
        info = _read(root, key, "point_info")
        r = np.asarray(info["camera_rotation_matrix"])
        pc = r.T @ (np.asarray(info["point_location"]) - info["camera_location"])
        np.testing.assert_allclose(pc[:2], 0.0, atol=1e-9)  # on the optical axis
        z = _read(root, key, "depth_zbuffer")
        c = z[SIZE // 2 - 1: SIZE // 2 + 1, SIZE // 2 - 1: SIZE // 2 + 1]
        # the four pixels around the axis see the point's surface: their mean is its depth
        assert abs(c.mean() - -pc[2]) < 0.01 * -pc[2] + QUANT


def _backproject(info: dict, z: np.ndarray) -> np.ndarray:
    d = _cam_dirs(info, z.shape[0])
    pts_cam = d * (z / -d[..., 2])[..., None]
    r = np.asarray(info["camera_rotation_matrix"])
    return pts_cam @ r.T + np.asarray(info["camera_location"])


def test_relative_camera_poses_from_point_info_map_pixels_between_views(root):
    agree = total = 0
    for b in layout.buildings(root):
        for p in range(CFG["points"]):
            i0 = layout.read(root, b, p, 0, "point_info")
            z0 = layout.read(root, b, p, 0, "depth_zbuffer")
            for v in range(1, CFG["views"]):
                i1 = layout.read(root, b, p, v, "point_info")
                z1 = layout.read(root, b, p, v, "depth_zbuffer")
                r1 = np.asarray(i1["camera_rotation_matrix"])
                np.testing.assert_allclose(r1.T @ r1, np.eye(3), atol=1e-9)
                assert np.linalg.det(r1) == pytest.approx(1.0)
                world = _backproject(i0, z0)[layout.depth_valid(z0)]
                pc = (world - i1["camera_location"]) @ r1  # into view v's camera frame
                f = (SIZE / 2) / np.tan(i1["field_of_view_rads"] / 2)
                col = SIZE / 2 + f * pc[:, 0] / -pc[:, 2]
                row = SIZE / 2 - f * pc[:, 1] / -pc[:, 2]
                inside = (-pc[:, 2] > 0.1) & (col >= 0) & (col < SIZE) & (row >= 0) & (row < SIZE)
                zr = z1[row[inside].astype(int), col[inside].astype(int)]
                agree += int((np.abs(zr - -pc[inside, 2]) < 0.05 * zr).sum())
                total += int(inside.sum())
    assert total > 0 and agree > 0.5 * total


def test_nonfixated_pose_pairs_views_that_see_the_mates_fixated_point(tmp_path):
    # Each pair must overlap: the anchor's camera sees the point its mate fixates (in front of
    # it, inside its field of view), as point_info's nonfixated_points_in_view records.
    root = tmp_path / "ds"
    synthesize(SynthConfig(str(root), workers=1, points=24, views=1, size=32, seed=5,
                           buildings=1), progress=False)
    ds = TaskonomyDataset(root, ["nonfixated_pose"], split="all")
    assert len(ds.samples) >= 6
    for (a, b), _ in ds.samples:
        info_a, info_b = (layout.read(root, v.building, v.point, v.view, "point_info")
                          for v in (a, b))
        assert a.point != b.point and b.point in info_a["nonfixated_points_in_view"]
        r = np.asarray(info_a["camera_rotation_matrix"])  # world from camera
        x, y, z = r.T @ (np.asarray(info_b["point_location"]) - info_a["camera_location"])
        half = np.tan(info_a["field_of_view_rads"] / 2)
        assert z < 0 and abs(x / -z) <= half + 1e-6 and abs(y / -z) <= half + 1e-6


def test_room_layout_and_vanishing_points_follow_the_documented_conventions(root):
    from scipy.spatial.transform import Rotation

    for key in _views(root):
        info = _read(root, key, "point_info")
        r = np.asarray(info["camera_rotation_matrix"])
        lay = np.asarray(info["room_layout"])
        rot = Rotation.from_euler("xyz", lay[6:]).as_matrix()
        np.testing.assert_allclose(rot, r.T, atol=1e-9)  # camera-from-room
        inside = np.abs(rot.T @ -lay[:3])  # the camera, in the room frame, from the box centre
        assert (inside <= lay[3:6] / 2).all()
        vp = np.asarray(info["vanishing_points_gaussian_sphere"]).reshape(3, 3)
        np.testing.assert_allclose(vp @ vp.T, np.eye(3), atol=1e-9)
        np.testing.assert_allclose(vp[2], r.T @ [0, 0, 1], atol=1e-12)
        assert (vp[:2, 2] <= 1e-9).all()
        assert set(info["nonfixated_points_in_view"]) <= set(range(CFG["points"])) - {key[1]}


def test_layout_codec_round_trips_the_renderers_output(root):
    cfg = SynthConfig(str(root), workers=1, **CFG)
    b = layout.buildings(root)[0]
    for v, values in enumerate(render_point(cfg, 0, 1)):
        for dom, value in values.items():
            data = layout.encode(dom, value)
            assert data == layout.path_for(root, b, 1, v, dom).read_bytes()
            back = layout.decode(dom, data)
            assert layout.encode(dom, back) == data  # decoding loses nothing further
            if dom in ("depth_zbuffer", "depth_euclidean"):
                np.testing.assert_allclose(back, value, atol=QUANT)
            elif dom in ("rgb", "reshading", "normal", "edge_texture", "keypoints2d"):
                np.testing.assert_allclose(back, value, atol=1.0 / 120)
            elif dom == "segment_semantic" or dom.startswith("segment_unsup"):
                np.testing.assert_array_equal(back, value)


def test_same_seed_gives_byte_identical_files_whatever_the_worker_count(root, tmp_path):
    other = tmp_path / "ds2"
    synthesize(SynthConfig(str(other), workers=2, **CFG), progress=False)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(root, other, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors


def test_a_different_seed_renders_different_scenes(root, tmp_path):
    other = tmp_path / "ds3"
    synthesize(SynthConfig(str(other), workers=1, **{**CFG, "seed": 6, "points": 1,
                                                    "buildings": 1}), progress=False)
    b = layout.buildings(root)[0]
    assert (layout.path_for(root, b, 0, 0, "rgb").read_bytes()
            != layout.path_for(other, b, 0, 0, "rgb").read_bytes())


def test_synth_command_writes_a_dataset_and_a_preview(tmp_path, capsys):
    out, sheet = tmp_path / "cli", tmp_path / "sheet.png"
    code = main(["synth", str(out), "--points", "1", "--views", "2", "--size", "24",
                 "--buildings", "1", "--workers", "1", "--preview", str(sheet), "--no-progress"])
    assert code == 0 and sheet.stat().st_size > 0
    printed = capsys.readouterr()
    assert "wrote 2 views of 1 buildings" in printed.out
    assert "note: --views 2: a sweep needs 3 views per point" in printed.err  # (was silent)
    assert len(list(layout.scan(out, "mini0000"))) == 2
    # The same render again is fine; another one into the same folder would mix the two.
    again = ["synth", str(out), "--points", "1", "--views", "2", "--size", "24",
             "--buildings", "1", "--workers", "1", "--no-progress"]
    assert main(again) == 0
    assert main([*again[:3], "2", *again[4:]]) == 2
    err = capsys.readouterr().err
    assert "holds another render (points 1" in err and "give OUT an empty or new folder" in err
    assert len(list(layout.scan(out, "mini0000"))) == 2


def test_synth_rejects_bad_arguments_with_the_fix():
    with pytest.raises(ConfigError, match="--points must be >= 1"):
        SynthConfig("/tmp/x", points=0)
    assert main(["synth", "/tmp/never", "--points", "0"]) == 2
