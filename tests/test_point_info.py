"""A real release's point_info (Euler angles, room box) reads as the renderer's: same labels."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from taskonomy_ray import layout
from taskonomy_ray.dataset import BadFile, TaskonomyDataset
from taskonomy_ray.errors import DataError
from taskonomy_ray.point_info import euler_sxyz_matrix, from_release, release_room_box
from taskonomy_ray.render import SynthConfig, synthesize

POSE_TASKS = ["fixated_pose", "egomotion", "nonfixated_pose"]
LAYOUT_TASKS = ["room_layout", "vanishing_point"]


def to_release(info: dict, box: bool = True) -> dict:
    """A rendered record as the release stores it: Euler angles, swapped room box, {x, y, z}."""
    rot = np.asarray(info["camera_rotation_matrix"])
    stored = np.asarray(info["room_layout"])
    centre = np.asarray(info["camera_location"]) + rot @ stored[:3]  # rooms are world-aligned
    lo, hi = centre - stored[3:6] / 2, centre + stored[3:6] / 2
    vps = np.asarray(info["vanishing_points_gaussian_sphere"]).reshape(3, 3)
    out = {k: v for k, v in info.items() if k not in (
        "camera_rotation_matrix", "room_layout", "building", "point",
        "vanishing_points_gaussian_sphere")}
    out["camera_rotation_final"] = Rotation.from_matrix(rot).as_euler("xyz").tolist()
    out["vanishing_points_gaussian_sphere"] = dict(zip("xyz", vps.tolist()))
    if box:  # the release's box has the world's x and y swapped
        out["bounding_box_ranges"] = {"x": [lo[1], hi[1]], "y": [lo[0], hi[0]],
                                      "z": [lo[2], hi[2]]}
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pi") / "rendered"
    synthesize(SynthConfig(str(out), points=10, views=3, size=16, seed=3, buildings=1, workers=1),
               progress=False)
    return out


def _as_release(rendered: Path, dest: Path, box: bool = True) -> Path:
    shutil.copytree(rendered, dest)
    for path in dest.glob("*/point_info/*.json"):
        path.write_text(json.dumps(to_release(json.loads(path.read_text()), box=box)))
    return dest


def test_release_euler_angles_are_blender_static_xyz():
    # Blender's camera turned 90 degrees about x looks along world +y, its up is world +z.
    r = euler_sxyz_matrix([np.pi / 2, 0, 0])
    assert np.allclose(r @ [0, 0, -1], [0, 1, 0]) and np.allclose(r @ [0, 1, 0], [0, 0, 1])
    angles = [0.3, -1.1, 2.5]  # static axes x, y, z: scipy's extrinsic "xyz"
    assert np.allclose(euler_sxyz_matrix(angles), Rotation.from_euler("xyz", angles).as_matrix())


def test_room_box_centre_matches_taskonomy_room_layout_loaders_procedure(rendered):
    """The box centre in the camera frame as Taskonomy's room-layout label computes it.

    Their loader swaps the camera matrix's first two rows (and negates one), reads the box's y
    range negated, and averages the box corners brought into the camera frame; its extra quarter
    turn about up moves box and camera together, so the centre does not depend on it.
    """
    path = next(rendered.glob("*/point_info/*.json"))
    release = to_release(json.loads(path.read_text()))
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("xyz", release["camera_rotation_final"]).as_matrix()
    m[:3, 3] = release["camera_location"]
    m[[0, 1]] = m[[1, 0]] * [[1], [-1]]
    b = release["bounding_box_ranges"]
    ranges = [b["x"], (-np.asarray(b["y"]))[::-1], b["z"]]
    corners = np.array([[*c, 1.0] for c in itertools.product(*ranges)])
    theirs = (corners @ np.linalg.inv(m).T)[:, :3].mean(0)
    ours = from_release(release, "b", 0, 0)["room_layout"]
    assert np.allclose(ours[:3], theirs)
    assert np.allclose(sorted(ours[3:6]), sorted(np.ptp(ranges, axis=1)))


@pytest.mark.parametrize("task", POSE_TASKS + LAYOUT_TASKS)
def test_release_root_gives_the_rendered_roots_labels(rendered, tmp_path, task):
    release = _as_release(rendered, tmp_path / "release")
    a = TaskonomyDataset(rendered, [task], split="all")
    b = TaskonomyDataset(release, [task], split="all")
    assert a.images == b.images
    for i in range(len(a)):
        assert np.allclose(a[i][task].numpy(), b[i][task].numpy(), atol=1e-5), (task, i)


def test_release_record_keeps_its_keys_and_gains_the_loaders(rendered):
    path = next(rendered.glob("*/point_info/*.json"))
    native = json.loads(path.read_text())
    release = to_release(native)
    got = from_release(release, native["building"], native["point"], native["view_id"])
    assert got["camera_rotation_final"] == release["camera_rotation_final"]
    assert got["building"] == native["building"] and got["point"] == native["point"]
    assert np.allclose(got["camera_rotation_matrix"], native["camera_rotation_matrix"])
    assert np.allclose(got["room_layout"], native["room_layout"])  # extents' order, angles too
    # Vanishing points in this project's signs; the release's own kept beside them.
    assert np.allclose(got["vanishing_points_gaussian_sphere"],
                       native["vanishing_points_gaussian_sphere"])
    assert got["release_vanishing_points"] == release["vanishing_points_gaussian_sphere"]
    layout.check_point_info(got, complete=True)


def test_release_file_takes_building_point_and_view_from_its_path(rendered, tmp_path):
    release = _as_release(rendered, tmp_path / "release")
    path = sorted(release.glob("*/point_info/point_2_view_1_*.json"))[0]
    assert "building" not in json.loads(path.read_text())
    info = layout.read_path(path, "point_info")
    assert (info["building"], info["point"], info["view_id"]) == (path.parent.parent.name, 2, 1)


def test_record_with_a_rotation_matrix_keeps_it_over_euler_angles(rendered):
    # A rendered record that also carries Euler angles: the matrix is the record's own truth.
    native = json.loads(next(rendered.glob("*/point_info/*.json")).read_text())
    got = from_release({**native, "camera_rotation_final": [0.0, 0.0, 0.0]}, "b", 0, 0)
    assert got["camera_rotation_matrix"] == native["camera_rotation_matrix"]
    assert got["room_layout"] == native["room_layout"]


def test_rendered_record_missing_a_key_is_still_refused(rendered, tmp_path):
    # Only a release record may lack its room box; a rendered one without it is damaged.
    path = next(rendered.glob("*/point_info/*.json"))
    record = json.loads(path.read_text())
    del record["room_layout"]
    dest = tmp_path / path.parent.parent.name / "point_info" / path.name
    dest.parent.mkdir(parents=True)
    dest.write_text(json.dumps(record))
    with pytest.raises(DataError, match="lacks 'room_layout'"):
        layout.read_path(dest, "point_info")


def test_release_record_without_room_box_serves_poses_and_names_the_box_for_layout(
        rendered, tmp_path):
    release = _as_release(rendered, tmp_path / "release", box=False)
    for task in POSE_TASKS:  # nonfixated pairs by the points each view sees
        ds = TaskonomyDataset(release, [task], split="all")
        assert len(ds) > 0 and np.isfinite(ds[0][task].numpy()).all()
    ds = TaskonomyDataset(release, ["room_layout"], split="all")
    with pytest.raises(BadFile, match="bounding_box_ranges"):
        ds[0]


def test_view_with_its_room_box_pairs_with_mates_that_lack_theirs(rendered, tmp_path):
    # Release records may carry the box or not; a boxed view is paired by the points it sees
    # with box-less mates, as they are with it, instead of losing every mate.
    release = _as_release(rendered, tmp_path / "release", box=False)
    (v, w), _ = TaskonomyDataset(release, ["nonfixated_pose"], split="all").samples[0]
    src = rendered / v.building / "point_info" / layout.filename(v.point, v.view, "point_info")
    dest = release / v.building / "point_info" / src.name
    dest.write_text(json.dumps(to_release(json.loads(src.read_text()), box=True)))
    pairs = TaskonomyDataset(release, ["nonfixated_pose"], split="all").samples
    assert (v, w) in [views for views, _ in pairs]


@pytest.mark.parametrize("bad, message", [
    ({"camera_rotation_final": [0.1, 0.2]}, "camera_rotation_final.*3 finite numbers"),
    ({"bounding_box_ranges": {"x": [0, 1], "y": [0, 1]}}, "bounding_box_ranges must map"),
    ({"bounding_box_ranges": {"x": [0, 1], "y": [2, 2], "z": [0, 3]}}, "encloses no volume"),
    ({"camera_location": [0, 1]}, "camera_location"),
])
def test_corrupt_release_record_is_refused_by_name(rendered, tmp_path, bad, message):
    path = sorted(rendered.glob("*/point_info/*.json"))[0]
    record = {**to_release(json.loads(path.read_text())), **bad}
    dest = tmp_path / path.parent.parent.name / "point_info" / path.name
    dest.parent.mkdir(parents=True)
    dest.write_text(json.dumps(record))
    with pytest.raises(DataError, match=message) as err:
        layout.read_path(dest, "point_info")
    assert str(dest) in str(err.value)


def test_release_box_swaps_x_and_y_into_the_camera_world():
    lo, hi = release_room_box({"x": [1, 2], "y": [5, 3], "z": [0, 2.5]})
    assert lo.tolist() == [3, 1, 0] and hi.tolist() == [5, 2, 2.5]
