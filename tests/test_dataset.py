"""The torch Dataset: splits, subsets, multi-view pairing, masks, derived labels, bad files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import CLASS_OBJECT, SEMANTIC, make_root
from PIL import Image

from taskonomy_ray import layout
from taskonomy_ray.dataset import (
    BadFile,
    SplitConfig,
    TaskonomyDataset,
    batches,
    output_channels,
    regime_dataset,
    split_buildings,
)
from taskonomy_ray.derived import colour_bins, jigsaw_permutations, relative_pose
from taskonomy_ray.errors import ConfigError, DataError
from taskonomy_ray.samples import IN_VIEW, ROOM_TOLERANCE_M, View, image_seed, nonfixated_pairs
from taskonomy_ray.tasks import TASKS, get_task


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_root(tmp_path_factory.mktemp("root"), buildings=4, points=4, views=3, size=24)


def test_splits_are_disjoint_deterministic_and_cover_every_building() -> None:
    names = [f"b{i}" for i in range(10)]
    a = split_buildings(names, SplitConfig(seed=3))
    assert a == split_buildings(names, SplitConfig(seed=3))
    assert sorted(sum(a.values(), [])) == names
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (6, 2, 2)
    assert a != split_buildings(names, SplitConfig(seed=4))


def test_split_config_rejects_fractions_that_do_not_sum_to_one() -> None:
    with pytest.raises(ConfigError, match="sum to 1"):
        SplitConfig(train=0.5, val=0.2, test=0.2)


def test_too_few_buildings_for_the_splits_is_an_error_naming_the_fix() -> None:
    with pytest.raises(DataError, match="--buildings 3"):
        split_buildings(["only"], SplitConfig())
    assert split_buildings(["only"], SplitConfig(1.0, 0.0, 0.0))["train"] == ["only"]


def test_a_release_split_file_gives_each_split_its_listed_buildings(root: Path,
                                                                    tmp_path: Path) -> None:
    from taskonomy_ray.splits import read_split_file

    csv = tmp_path / "train_val_test_tiny.csv"  # the release's format, header row included
    csv.write_text("id,train,val,test\nbuilding2,1,0,0\nbuilding0,0,1,0\nbuilding1,0,0,1\n"
                   "elsewhere,1,0,0\nunused,0,0,0\n")
    lists = read_split_file(csv)
    assert lists == {"train": ["building2", "elsewhere"], "val": ["building0"],
                     "test": ["building1"]}
    # A byte-order mark, CRLF lines, a repeated row and a header in another column order.
    csv.write_bytes(b"\xef\xbb\xbfid,test,train,val\r\nbuilding1,1,0,0\r\nbuilding2,0,1,0\r\n"
                    b"building2,0,1,0\r\nelsewhere,0,1,0\r\nbuilding0,0,0,1\r\n")
    assert read_split_file(csv) == lists
    csv.write_bytes(b"\xef\xbb\xbfbuilding2,1,0,0\nbuilding0,0,1,0\n")  # no header
    assert read_split_file(csv)["train"] == ["building2"]
    cfg = SplitConfig(buildings=lists)  # fractions ignored; a listed building not here skipped
    assert split_buildings(["building0", "building1", "building2"], cfg) == {
        "train": ["building2"], "val": ["building0"], "test": ["building1"]}
    assert TaskonomyDataset(root, ["normal"], split="test", splits=cfg).buildings == ["building1"]
    with pytest.raises(DataError, match="none of the 1 test buildings of the given split"):
        split_buildings(["building0", "building2"], cfg)


@pytest.mark.parametrize(("text", "message"), [
    ("a,1,0\n", "line 1: expected 4 columns"),
    ("id,train,val,test\na,1,0,0\nb,yes,0,0\n", "line 3: the train, val and test columns"),
    ("a,1,0,1\n", "line 1: building 'a' is flagged for train and test"),
    ("a,0,1,0\n", "train lists no building"),
    ("id,train,val,tset\na,1,0,0\n", "line 1: a header must name the columns train, val"),
    ("a,1,0,0\nb,x,0,0\n", "line 2: the train, val and test columns"),
])
def test_a_bad_split_file_is_refused_naming_the_line(tmp_path: Path, text: str,
                                                     message: str) -> None:
    from taskonomy_ray.splits import read_split_file

    (tmp_path / "s.csv").write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_split_file(tmp_path / "s.csv")
    with pytest.raises(ConfigError, match="cannot read the split file"):
        read_split_file(tmp_path / "missing.csv")


def test_a_bad_file_error_survives_pickling_as_ray_sends_it() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(BadFile("/r/b/normal/x.png", "missing file /r/b/...")))
    assert isinstance(err, BadFile) and err.path == "/r/b/normal/x.png"
    assert str(err) == "missing file /r/b/..."


def test_test_images_caps_the_test_split_with_one_subset_for_every_task(root: Path) -> None:
    full = TaskonomyDataset(root, ["normal"], split="test")
    capped = SplitConfig(test_images=5)
    a = TaskonomyDataset(root, ["normal"], split="test", splits=capped)
    b = TaskonomyDataset(root, ["segment_semantic", "depth_zbuffer"], split="test",
                         splits=capped)
    assert len(full) > 5 and len(a) == 5 and set(a.images) <= set(full.images)
    assert a.images == b.images  # every network is scored on the same test images
    roomy = TaskonomyDataset(root, ["normal"], split="test", splits=SplitConfig(test_images=999))
    assert roomy.images == full.images  # a cap above the split's size keeps all of it
    train = TaskonomyDataset(root, ["normal"], split="train", splits=capped)
    assert len(train) == len(TaskonomyDataset(root, ["normal"], split="train"))
    for bad in (0, 2.5, "all"):
        with pytest.raises(ConfigError, match="positive number of test samples"):
            SplitConfig(test_images=bad)


@pytest.mark.parametrize("spec", TASKS, ids=lambda s: s.name)
def test_every_task_yields_a_well_formed_sample(root: Path, spec) -> None:
    ds = TaskonomyDataset(root, [spec.name], split="all", size=16)
    s = ds[1]
    views = spec.views
    assert s["rgb"].shape == ((views, 3, 16, 16) if views > 1 else (3, 16, 16))
    assert s["rgb"].dtype == torch.float32 and isinstance(s["image"], str)
    if spec.output == "none":
        assert set(s) == {"rgb", "image"}
        return
    label = s[spec.name]
    assert torch.isfinite(label.float()).all()
    if spec.masked:
        assert s[f"{spec.name}_mask"].shape == (1, 16, 16)
        assert s[f"{spec.name}_mask"].dtype == torch.bool
    assert (f"{spec.name}_input" in s) == (spec.input != "rgb")
    if spec.output in ("pixel_regression",):
        assert label.shape == (spec.channels, 16, 16)
    elif spec.output in ("vector_regression", "multi_view") and spec.loss == "l2":
        assert label.shape == (spec.channels,)
    elif spec.output == "class_distribution":
        assert label.shape == (output_channels(spec.name, root),)
        assert abs(float(label.sum()) - 1) < 1e-4


def test_depth_mask_marks_the_release_invalid_pixels(root: Path) -> None:
    s = TaskonomyDataset(root, ["depth_zbuffer", "normal"], split="all")[0]
    assert not s["depth_zbuffer_mask"][0, 0, 0] and s["depth_zbuffer_mask"][0, 5, 5]
    assert torch.equal(s["depth_zbuffer_mask"], s["normal_mask"])
    assert s["depth_zbuffer"][0, 0, 0] == 0  # invalid depth kept out of the label


def test_depth_and_curvature_train_on_taskonomys_targets(root: Path) -> None:
    # As Taskonomy's target preprocessing: depth as log(1 + raw) of the file's 16-bit units
    # (without its constant divisor, see derived.log_depth), curvature's two 8-bit channels
    # standardised per channel; read here from the PNG bytes, so the whole chain is checked.
    names = ["depth_zbuffer", "depth_euclidean", "principal_curvature"]
    ds = TaskonomyDataset(root, names, split="all")
    s, ((v,), _) = ds[0], ds.samples[0]
    for name in names[:2]:
        raw = np.asarray(Image.open(layout.path_for(root, v.building, v.point, v.view, name)),
                         np.float64)
        expected = np.where(raw < layout.DEPTH_INVALID_RAW, np.log1p(raw), 0)
        np.testing.assert_allclose(s[name][0].numpy(), expected, rtol=1e-6)
        assert 0 <= float(s[name].min()) and float(s[name].max()) < np.log(2.0**16)
    raw = np.asarray(Image.open(layout.path_for(root, v.building, v.point, v.view, names[2])),
                     np.float64)[..., :2]
    expected = (raw - [123.572, 120.1]) / [31.922, 21.658]
    np.testing.assert_allclose(s[names[2]].numpy(), expected.transpose(2, 0, 1), atol=1e-5)


def test_curvature_is_scored_by_a_masked_l2_loss() -> None:
    from taskonomy_ray.models.losses import per_image_loss

    spec = get_task("principal_curvature")
    label = torch.zeros(2, 2, 4, 4)
    pred = torch.zeros(2, 2, 4, 4)
    pred[0, :, 0, 0] = 3.0  # an error of 3 on one pixel of image 0, which is masked out
    pred[1, :, 1, 1] = 2.0  # and of 2 on a valid pixel of image 1
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[0, :, 0, 0] = False
    loss = per_image_loss(spec, pred, {spec.name: label, f"{spec.name}_mask": mask})
    assert loss.tolist() == pytest.approx([0.0, 4.0 / 16])


@pytest.mark.parametrize("size", [16, 64])  # the fixture's 32 px, resized down and up
def test_a_resized_depth_is_valid_only_where_it_reads_no_invalid_pixel(root: Path,
                                                                       size: int) -> None:
    # Invalid depth is 0 in the label: a pixel interpolated from it is wrong, so it must be
    # masked (upsampling used to keep it valid, blended towards 0 m).
    full = TaskonomyDataset(root, ["depth_zbuffer"], split="all")[0]
    s = TaskonomyDataset(root, ["depth_zbuffer"], split="all", size=size)[0]
    mask = s["depth_zbuffer_mask"]
    assert mask.sum() > 0 and (~mask).any()
    # Give the invalid source pixels another value: no pixel the mask keeps may change.
    other = torch.where(full["depth_zbuffer_mask"], full["depth_zbuffer"], 1000.0)
    mode = {"mode": "area"} if size < 32 else {"mode": "bilinear", "align_corners": False}
    moved = torch.nn.functional.interpolate(other[None], (size, size), **mode)[0]
    assert torch.allclose(moved[mask], s["depth_zbuffer"][mask])


def test_image_ids_are_stable_and_unique(root: Path) -> None:
    ids = TaskonomyDataset(root, ["normal"], split="all").images
    assert len(set(ids)) == len(ids) == 4 * 4 * 3
    assert "building0/point_3_view_1" in ids
    assert TaskonomyDataset(root, ["normal"], split="all").images == ids


def test_regime_subset_is_drawn_from_validation_deterministically(root: Path) -> None:
    val = TaskonomyDataset(root, ["depth_zbuffer"], split="val")
    sub = regime_dataset(root, ["depth_zbuffer"], 5, seed=1)
    assert len(sub) == 5 and set(sub.images) <= set(val.images)
    assert sub.images == regime_dataset(root, ["depth_zbuffer"], 5, seed=1).images
    assert sub.images != regime_dataset(root, ["depth_zbuffer"], 5, seed=2).images
    with pytest.raises(DataError, match="smaller regime"):
        regime_dataset(root, ["depth_zbuffer"], 10_000)


def test_fixated_and_egomotion_views_share_a_point(root: Path) -> None:
    for task, k in (("fixated_pose", 2), ("egomotion", 3)):
        for views, _ in TaskonomyDataset(root, [task], split="all").samples:
            assert len(views) == k and len({v.point for v in views}) == 1
            assert len({v.view for v in views}) == k


def test_nonfixated_views_are_other_points_of_the_same_room(root: Path) -> None:
    ds = TaskonomyDataset(root, ["nonfixated_pose"], split="all")
    for (a, b), _ in ds.samples:
        assert a.building == b.building and a.point != b.point
        assert a.point % 2 == b.point % 2  # the fixture puts point p in room p % 2


def _random_building(rng: np.random.Generator) -> dict:
    """point_info of one building: 2-3 rooms, some views without room box or seen-points list."""
    infos, n = {}, int(rng.integers(2, 30))
    for p in range(n):
        room = p % 3
        for k in range(int(rng.integers(1, 4))):
            yaw = rng.uniform(0, 2 * np.pi)
            rot = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0],
                            [0, 0, 1]])
            loc = rng.uniform(-1, 1, 3) + [10.0 * room, 0, 0]
            info = {"camera_rotation_matrix": rot.tolist(), "camera_location": loc.tolist(),
                    "point_uuid": f"u{p}"}
            if rng.random() < 0.7:  # the box in the camera frame, centre then size
                centre = np.array([10.0 * room, 0, 0]) + (0.4 if rng.random() < 0.1 else 0)
                size = np.array([4.0 + room, 3.0, 2.5]) + (0.4 if rng.random() < 0.1 else 0)
                info["room_layout"] = [*(rot.T @ (centre - loc)), *size, 0.0]
            if rng.random() < 0.7:  # seen points by number or by uuid, as releases vary
                info[IN_VIEW] = [f"u{q}" if rng.random() < 0.5 else str(q)
                                 for q in rng.choice(n, size=min(n, 6), replace=False)]
            infos[View("b", p, k)] = info
    return infos


def _is_mate(v: View, w: View, infos: dict) -> bool:
    """The nonfixated rule for one pair, written out: another point, seen, same room box."""
    a, b = infos[v], infos[w]
    if w.point == v.point:
        return False
    seen = a.get(IN_VIEW)
    if seen is not None and not {str(w.point), b["point_uuid"]} & {str(p) for p in seen}:
        return False
    both = "room_layout" in a and "room_layout" in b
    if both:  # the same box: centre (in the world) and size agree
        centre = [np.asarray(i["camera_location"]) + np.asarray(i["camera_rotation_matrix"])
                  @ i["room_layout"][:3] for i in (a, b)]
        size = [np.asarray(i["room_layout"][3:6]) for i in (a, b)]
        if max(np.abs(centre[0] - centre[1]).max(),
               np.abs(size[0] - size[1]).max()) > ROOM_TOLERANCE_M:
            return False
    return seen is not None or both


def test_nonfixated_pairs_follow_the_rule_pair_by_pair() -> None:
    # The indexed pairing (a release building has thousands of views) picks what the rule,
    # applied to every pair of views, allows, with the same seeded choice among them.
    rng = np.random.default_rng(0)
    for seed in range(25):
        infos = _random_building(rng)
        expected = []
        for v in infos:
            mates = [w for w in infos if _is_mate(v, w, infos)]
            if mates:
                expected.append(((v, mates[image_seed(v.id, seed) % len(mates)]), -1))
        assert nonfixated_pairs(infos, seed) == expected


def test_point_matching_is_balanced_and_labels_say_same_point(root: Path) -> None:
    ds = TaskonomyDataset(root, ["point_matching"], split="all")
    labels = [m for _, m in ds.samples]
    assert abs(sum(labels) - len(labels) / 2) <= 4
    for (a, b), m in ds.samples:
        assert m == int(a.point == b.point)
    assert int(ds[0]["point_matching"]) == ds.samples[0][1]


def test_relative_pose_of_a_camera_to_itself_is_zero_and_inverts() -> None:
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_rotvec([0.1, 0.2, -0.3]).as_matrix()
    a = {"camera_location": [0, 0, 0], "camera_rotation_matrix": np.eye(3).tolist()}
    b = {"camera_location": [1, 2, 3], "camera_rotation_matrix": rot.tolist()}
    assert np.allclose(relative_pose(a, a), 0)
    assert np.allclose(relative_pose(a, b), [1, 2, 3, 0.1, 0.2, -0.3], atol=1e-6)


def test_pose_labels_come_from_point_info(root: Path) -> None:
    ds = TaskonomyDataset(root, ["egomotion"], split="all")
    s, (views, _) = ds[0], ds.samples[0]
    infos = [layout.read(root, v.building, v.point, v.view, "point_info") for v in views]
    assert np.allclose(s["egomotion"][6:12].numpy(), relative_pose(infos[0], infos[2]), atol=1e-5)


def _camera_from_room(yaw_deg: float, pitch_deg: float = 12.0) -> np.ndarray:
    """An upright camera turned `yaw` about the room's up axis from facing +y, tilted down."""
    from scipy.spatial.transform import Rotation

    facing_y = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # camera axes in the room frame
    world_from_camera = (Rotation.from_euler("z", yaw_deg, degrees=True).as_matrix() @ facing_y
                         @ Rotation.from_euler("x", -pitch_deg, degrees=True).as_matrix())
    return world_from_camera.T


def _stored_layout(camera_from_room: np.ndarray) -> list[float]:
    from scipy.spatial.transform import Rotation

    return [0.5, -0.2, -2.0, 4.0, 3.0, 2.5,
            *Rotation.from_matrix(camera_from_room).as_euler("xyz").tolist()]


def _corners(centre, extents, camera_from_box) -> set[tuple[float, ...]]:
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) / 2
    pts = np.asarray(centre) + (signs * np.asarray(extents)) @ np.asarray(camera_from_box).T
    return {tuple(np.round(p, 4)) for p in pts}


def test_room_labels_jump_only_at_the_diagonals_and_describe_the_same_box() -> None:
    from scipy.spatial.transform import Rotation

    from taskonomy_ray.derived import room_layout_label, vanishing_point_label

    facing_y = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    yaws = np.arange(0.5, 360.0, 1.0)
    for label in (room_layout_label, vanishing_point_label):
        values = np.stack([label(_stored_layout(_camera_from_room(y))) for y in yaws])
        steps = np.abs(np.diff(values, axis=0)).max(axis=1)
        jumps = yaws[1:][steps > 0.2]  # a degree apart: only switching frames moves a label far
        assert len(jumps) == 4 and np.allclose(np.sort(jumps % 90), 45.5), jumps
    stored_euler = np.stack([_stored_layout(_camera_from_room(y))[6:] for y in yaws])
    assert (np.abs(np.diff(stored_euler, axis=0)).max(axis=1) > 3).any()  # what it replaces
    for yaw in (10.0, 80.0, 170.0, 260.0):
        r = _camera_from_room(yaw)
        stored = _stored_layout(r)
        lab = room_layout_label(stored)
        frame = Rotation.from_rotvec(lab[6:]).as_matrix() @ facing_y.T
        assert _corners(lab[:3], lab[3:6], frame) == _corners(stored[:3], stored[3:6], r)
        axes = vanishing_point_label(stored).reshape(3, 3)
        assert np.allclose(axes[2], r[:, 2], atol=1e-6)  # up stays up
        assert np.allclose(np.abs(axes[:2] @ r[:, :2]).sum(axis=1), 1, atol=1e-5)  # room axes


def test_self_supervised_labels_are_derived_from_rgb(root: Path) -> None:
    tasks = ["autoencoding", "denoising", "colorization", "inpainting", "jigsaw"]
    ds = TaskonomyDataset(root, tasks, split="all", jigsaw_classes=30)
    s = ds[2]
    assert torch.equal(s["autoencoding"], s["rgb"]) and torch.equal(s["denoising"], s["rgb"])
    assert torch.equal(ds[2]["denoising_input"], s["denoising_input"])  # same noise each time
    assert not torch.equal(s["denoising_input"], ds[3]["denoising_input"][:, :, :])
    assert s["colorization"].max() < len(colour_bins())
    grey = s["colorization_input"]
    assert torch.equal(grey[0], grey[1]) and 0 <= grey.min() and grey.max() <= 1
    assert (s["inpainting_input"][:, 8:16, 8:16] == 0).all()
    assert torch.equal(s["inpainting_input"][:, :4], s["rgb"][:, :4])
    k = int(s["jigsaw"])
    assert 0 <= k < 30 and sorted(jigsaw_permutations(30)[k].tolist()) == list(range(9))


def test_jigsaw_permutations_are_fixed_distinct_and_spread() -> None:
    p = jigsaw_permutations(50)
    assert np.array_equal(p, jigsaw_permutations(50)) and len({tuple(r) for r in p}) == 50
    d = (p[:, None, :] != p[None]).sum(-1) + 9 * np.eye(50, dtype=int)
    assert d.min() >= 5


def test_output_channels_follow_dataset_info_then_the_registry(root: Path, tmp_path) -> None:
    assert output_channels("class_object", root) == len(CLASS_OBJECT)
    assert output_channels("segment_semantic", root) == len(SEMANTIC)
    assert output_channels("class_scene", tmp_path) == get_task("class_scene").channels
    assert output_channels("jigsaw", root, jigsaw_classes=24) == 24
    assert output_channels("normal", root) == 3


def test_a_multi_view_task_must_be_alone() -> None:
    with pytest.raises(ConfigError, match="only task"):
        TaskonomyDataset("/nonexistent", ["egomotion", "normal"])


def _damaged_root(tmp_path: Path) -> Path:
    root = make_root(tmp_path / "bad", buildings=3, points=2, views=2, size=16, rooms=1)
    layout.path_for(root, "building0", 0, 0, "normal").unlink()
    layout.path_for(root, "building0", 1, 1, "depth_zbuffer").write_bytes(b"not a png")
    layout.path_for(root, "building0", 1, 0, "point_info").write_text("{broken")
    return root


def test_a_missing_file_is_an_error_naming_it_and_the_fix(tmp_path: Path) -> None:
    ds = TaskonomyDataset(_damaged_root(tmp_path), ["normal"], split="all")
    with pytest.raises(BadFile, match=r"point_0_view_0_domain_normal\.png.*on_bad_file='skip'"):
        ds[ds.images.index("building0/point_0_view_0")]


def test_a_corrupt_file_is_an_error_naming_it(tmp_path: Path) -> None:
    ds = TaskonomyDataset(_damaged_root(tmp_path), ["depth_zbuffer"], split="all")
    with pytest.raises(DataError, match=r"corrupt file .*point_1_view_1_domain_depth_zbuffer"):
        ds[ds.images.index("building0/point_1_view_1")]


def test_skip_mode_drops_bad_samples_and_reports_every_bad_file(tmp_path: Path) -> None:
    root = _damaged_root(tmp_path)
    ds = TaskonomyDataset(root, ["normal"], split="all", on_bad_file="skip")
    seen = [img for b in batches(ds, 4) for img in b["image"]]
    assert len(seen) == len(ds) - 2  # normal missing, depth (its mask) corrupt
    assert "building0/point_0_view_0" not in seen
    assert len(ds.bad_files) == 2 and "normal.png" in ds.bad_file_report()
    pm = TaskonomyDataset(root, ["nonfixated_pose"], split="all", on_bad_file="skip")
    assert any("point_info" in p for p in pm.bad_files)
    with pytest.raises(DataError, match="point_1_view_0_domain_point_info"):
        TaskonomyDataset(root, ["nonfixated_pose"], split="all")


def test_a_label_of_the_wrong_size_is_a_bad_file(tmp_path: Path) -> None:
    root = make_root(tmp_path / "r", buildings=1, points=1, views=1, size=16)
    layout.write(root, "building0", 0, 0, "reshading", np.zeros((8, 8)))
    with pytest.raises(BadFile, match="re-render"):
        TaskonomyDataset(root, ["reshading"], split="all")[0]


def _npy(path: Path, value: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, value)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("task, damage, message", [
    ("class_object", lambda p: _npy(p, np.ones(7, np.float32)),
     r"holds 7 class scores but the dataset has \d+ class_object classes"),
    ("class_object", lambda p: _npy(p, np.ones((4, 4), np.float32)),
     r"expected a saved vector of shape \(C,\), got \(4, 4\)"),
    ("class_scene", lambda p: _npy(p, np.full(6, np.nan, np.float32)),
     "a saved vector has non-finite values"),
    ("segment_semantic",
     lambda p: Image.fromarray(np.full((16, 16), 200, np.uint8)).save(p),
     r"holds class id 200 but the dataset has \d+ segment_semantic classes"),
    ("depth_zbuffer",  # an 8-bit depth map would read as 1/256 of its metres
     lambda p: Image.fromarray(np.full((16, 16), 100, np.uint8)).save(p),
     "expected a 16-bit PNG, got an 8-bit one"),
])
def test_a_label_that_does_not_fit_its_task_is_a_bad_file_naming_it(
        tmp_path: Path, task: str, damage, message: str) -> None:  # noqa: ANN001
    # Decodable files with wrong contents: before, these trained on wrong labels or failed far
    # from the file (a collate error, an IndexError in the loss).
    root = make_root(tmp_path / "r", buildings=1, points=1, views=2, size=16)
    path = layout.path_for(root, "building0", 0, 1, get_task(task).domains[0])
    damage(path)
    ds = TaskonomyDataset(root, [task], split="all")
    ds[0]  # the untouched view still loads
    with pytest.raises(BadFile, match=message) as e:
        ds[1]
    assert e.value.path == str(path) and path.name in str(e.value)
    skip = TaskonomyDataset(root, [task], split="all", on_bad_file="skip")
    assert [i for b in batches(skip, 2) for i in b["image"]] == ["building0/point_0_view_0"]


def test_loader_batches_stack_samples(root: Path) -> None:
    ds = TaskonomyDataset(root, ["segment_semantic", "class_scene"], split="train", size=16)
    b = next(batches(ds, 5, shuffle=True, seed=0))
    assert b["rgb"].shape == (5, 3, 16, 16) and b["segment_semantic"].shape == (5, 16, 16)
    assert len(b["image"]) == 5 and not ds.bad_files


def _task_reading(domain: str) -> str:
    if domain == "rgb":
        return "autoencoding"
    if domain == "point_info":
        return "room_layout"
    return next(t.name for t in TASKS if t.domains == (domain,))


@pytest.mark.parametrize("domain", sorted(layout.DOMAINS))
@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_every_domain_bad_file_is_named_or_skipped(tmp_path: Path, domain: str,
                                                   damage: str) -> None:
    root = make_root(tmp_path / "r", buildings=1, points=1, views=2, size=16)
    path = layout.path_for(root, "building0", 0, 1, domain)
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(b"\x89PNG\r\n garbage")
    task = _task_reading(domain)
    if domain == "rgb" and damage == "missing":  # the index is the rgb folder: no sample at all
        assert TaskonomyDataset(root, [task], split="all").images == ["building0/point_0_view_0"]
        return
    ds = TaskonomyDataset(root, [task], split="all")
    with pytest.raises(BadFile, match=path.name) as e:
        ds[1]
    assert e.value.path == str(path)
    skip = TaskonomyDataset(root, [task], split="all", on_bad_file="skip")
    assert [i for b in batches(skip, 2) for i in b["image"]] == ["building0/point_0_view_0"]
    assert list(skip.bad_files) == [str(path)]
