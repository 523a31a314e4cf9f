import io
import os

import numpy as np
import pytest
from PIL import Image

from taskonomy_ray import layout
from taskonomy_ray.errors import DataError, UnknownNameError

H, W = 12, 16
RNG = np.random.default_rng(0)


def point_info(building="b0", point=3, view=1):
    return {
        "building": building, "point": point, "view_id": view,
        "camera_location": [1.0, 2.0, 1.5],
        "camera_rotation_matrix": np.eye(3).tolist(),
        "field_of_view_rads": 1.0,
        "point_location": [1.0, 0.0, 1.0],
        "room_layout": list(np.arange(9.0)),
        "vanishing_points_gaussian_sphere": np.eye(3).ravel().tolist(),
    }


def sample(domain: str):
    """A decoded value of each domain, within its encoding's range."""
    if domain == "rgb":
        return RNG.random((H, W, 3)).astype(np.float32)
    if domain in layout.DEPTH_DOMAINS:
        return RNG.uniform(0.1, 120.0, (H, W)).astype(np.float32)
    if domain == "normal":
        n = RNG.normal(size=(H, W, 3))
        return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)
    if domain == "principal_curvature":
        return RNG.uniform(-7.0, 7.0, (H, W, 2)).astype(np.float32)
    if domain in ("segment_unsup2d", "segment_unsup25d", "segment_semantic"):
        return RNG.integers(0, 40, (H, W)).astype(np.uint8)
    if domain in ("class_object", "class_scene"):
        p = RNG.random(7).astype(np.float32)
        return p / p.sum()
    if domain == "point_info":
        return point_info()
    return RNG.random((H, W)).astype(np.float32)  # 16-bit maps and reshading in [0, 1]


# Half a quantisation step of each encoding.
TOLERANCE = {
    "rgb": 0.5 / 255, "reshading": 0.5 / 255, "normal": 0.5 / 127,
    "principal_curvature": 0.5 / layout.CURVATURE_SCALE,
    "depth_zbuffer": 0.5 / 512, "depth_euclidean": 0.5 / 512,
}


@pytest.mark.parametrize("domain", sorted(layout.DOMAINS))
def test_every_domain_round_trips_within_its_precision(tmp_path, domain):
    value = sample(domain)
    path = layout.write(tmp_path, "b0", 3, 1, domain, value)
    assert path == tmp_path / "b0" / domain / f"point_3_view_1_domain_{domain}.{path.suffix[1:]}"
    back = layout.read(tmp_path, "b0", 3, 1, domain)
    if domain == "point_info":
        assert back == value
    elif layout.DOMAINS[domain].storage == "ids8":
        np.testing.assert_array_equal(back, value)
    else:
        grey16 = layout.DOMAINS[domain].storage == "grey16"
        tol = TOLERANCE.get(domain, 0.5 / 65535 if grey16 else 1e-7)
        np.testing.assert_allclose(back, value, atol=tol * 1.0001, rtol=0)


def test_depth_is_16bit_in_units_of_1_over_512_m():
    data = layout.encode("depth_zbuffer", np.full((2, 2), 2.0, np.float32))
    raw = np.asarray(Image.open(io.BytesIO(data)))
    assert raw.dtype == np.uint16 and (raw == 1024).all()


def test_depth_at_or_above_64500_is_invalid():
    depth = np.array([[64499, 64500, 65535]], dtype=np.float32) / 512.0
    assert layout.depth_valid(depth).tolist() == [[True, False, False]]


def test_normal_encodes_zero_at_127():
    data = layout.encode("normal", np.zeros((1, 1, 3), np.float32))
    assert np.asarray(Image.open(io.BytesIO(data))).ravel().tolist() == [127, 127, 127]


def test_encoding_is_deterministic_byte_for_byte():
    v = sample("rgb")
    assert layout.encode("rgb", v) == layout.encode("rgb", v.copy())


def test_filename_parses_back():
    name = layout.filename(12, 4, "segment_semantic")
    assert name == "point_12_view_4_domain_segment_semantic.png"
    assert layout.parse_filename(name) == (12, 4, "segment_semantic")
    with pytest.raises(DataError, match="not a Taskonomy file name"):
        layout.parse_filename("point_1_view_2_domain_normal.npy")


def test_missing_file_error_names_file_and_fix(tmp_path):
    with pytest.raises(DataError, match=r"missing file .*point_0_view_0_domain_rgb.png.*skip"):
        layout.read(tmp_path, "b0", 0, 0, "rgb")


@pytest.mark.parametrize("domain", ["rgb", "depth_zbuffer", "class_scene", "point_info"])
def test_corrupt_file_error_names_file_and_fix(tmp_path, domain):
    path = layout.path_for(tmp_path, "b0", 0, 0, domain)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=rf"{path.name}.*re-download or re-render"):
        layout.read(tmp_path, "b0", 0, 0, domain)


def test_wrong_shape_is_refused_on_write(tmp_path):
    with pytest.raises(DataError, match=r"expected an array of shape \(H, W, 3\)"):
        layout.write(tmp_path, "b0", 0, 0, "normal", np.zeros((4, 4), np.float32))


def test_point_info_missing_key_is_refused():
    info = point_info()
    del info["field_of_view_rads"]
    with pytest.raises(DataError, match="lacks 'field_of_view_rads'"):
        layout.encode("point_info", info)


def test_unknown_domain_suggests_close_match():
    with pytest.raises(UnknownNameError, match="did you mean 'normal'"):
        layout.domain("normals")


def test_scan_lists_points_and_views(tmp_path):
    for p, v in [(0, 0), (0, 1), (2, 0)]:
        layout.write(tmp_path, "bA", p, v, "rgb", sample("rgb"))
    assert layout.buildings(tmp_path) == ["bA"]
    assert list(layout.scan(tmp_path, "bA")) == [(0, 0), (0, 1), (2, 0)]


def _age(folder, seconds):
    """Move a folder's modification time `seconds` into the past, as if written long ago."""
    st = folder.stat()
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def test_scan_lists_an_unchanged_folder_once_and_a_changed_one_again(tmp_path, monkeypatch):
    for p, v in [(0, 0), (1, 0)]:
        layout.write(tmp_path, "bA", p, v, "rgb", sample("rgb"))
    folder = tmp_path / "bA" / "rgb"
    _age(folder, 60)
    listed = []
    real = os.scandir
    monkeypatch.setattr(layout.os, "scandir", lambda f: listed.append(f) or real(f))
    assert list(layout.scan(tmp_path, "bA")) == [(0, 0), (1, 0)]
    assert list(layout.scan(tmp_path, "bA")) == [(0, 0), (1, 0)]
    assert len(listed) == 1  # the second dataset of a sweep reuses the listing
    layout.write(tmp_path, "bA", 2, 0, "rgb", sample("rgb"))  # the folder changes
    assert list(layout.scan(tmp_path, "bA")) == [(0, 0), (1, 0), (2, 0)]
    _age(folder, 60)
    assert list(layout.scan(tmp_path, "bA")) == [(0, 0), (1, 0), (2, 0)]
    assert len(listed) == 3


def test_scan_lists_a_folder_modified_just_now_every_time(tmp_path, monkeypatch):
    # A file added within the clock's resolution could leave the mtime as it was: not cached.
    layout.write(tmp_path, "bA", 0, 0, "rgb", sample("rgb"))
    listed = []
    real = os.scandir
    monkeypatch.setattr(layout.os, "scandir", lambda f: listed.append(f) or real(f))
    for _ in range(3):
        assert list(layout.scan(tmp_path, "bA")) == [(0, 0)]
    assert len(listed) == 3


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    layout.write(tmp_path, "b0", 0, 0, "rgb", sample("rgb"))
    names = [p.name for p in (tmp_path / "b0" / "rgb").iterdir()]
    assert names == ["point_0_view_0_domain_rgb.png"]
