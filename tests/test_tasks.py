import json

import pytest

from taskonomy_ray import cli, tasks
from taskonomy_ray.errors import ConfigError, UnknownNameError

DESIGN_NAMES = (
    "autoencoding denoising colorization inpainting edge_texture edge_occlusion keypoints2d "
    "keypoints3d reshading normal depth_zbuffer depth_euclidean principal_curvature room_layout "
    "vanishing_point segment_unsup2d segment_unsup25d segment_semantic class_object class_scene "
    "jigsaw egomotion fixated_pose nonfixated_pose point_matching random"
).split()


def test_registry_holds_exactly_the_26_dataset_names():
    assert sorted(tasks.task_names()) == sorted(DESIGN_NAMES)


def test_source_only_tasks_are_the_four_of_the_design():
    assert tasks.SOURCE_ONLY == {"colorization", "jigsaw", "inpainting", "random"}
    assert len(tasks.target_names()) == 22


@pytest.mark.parametrize("name,views", [("egomotion", 3), ("fixated_pose", 2),
                                        ("nonfixated_pose", 2), ("point_matching", 2),
                                        ("normal", 1), ("jigsaw", 1)])
def test_views_per_sample(name, views):
    assert tasks.get_task(name).views == views


def test_self_supervised_tasks_derive_labels_from_rgb_and_read_no_domain():
    for name in ("autoencoding", "denoising", "colorization", "inpainting", "jigsaw", "random"):
        spec = tasks.get_task(name)
        assert spec.derived is not None and spec.domains == ()


def test_unknown_task_suggests_the_closest_name():
    with pytest.raises(UnknownNameError, match="did you mean 'normal'"):
        tasks.get_task("normals")


def test_source_only_task_refused_as_target():
    with pytest.raises(ConfigError, match="source-only"):
        tasks.resolve(["jigsaw"], targets_only=True)


def test_bad_spec_fails_loudly_at_construction():
    with pytest.raises(ConfigError, match="output must be one of"):
        tasks.TaskSpec("x", "bad", "pixels", 3, "l1", derived="identity")
    with pytest.raises(ConfigError, match="multi_view iff views"):
        tasks.TaskSpec("x", "bad", "pixel_regression", 3, "l1", domains=("rgb",), views=2)


def test_legacy_names_map_to_dataset_names():
    assert tasks.from_legacy_name("rgb2sfnorm") == "normal"
    assert tasks.from_legacy_name("impainting_whole") == "inpainting"
    assert tasks.from_legacy_name("vanishing_point_well_defined") == "vanishing_point"


def test_cli_tasks_json_lists_the_26_with_required_fields(capsys):
    assert cli.main(["tasks", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == tasks.task_names()
    for r in rows:
        assert {"name", "output", "views", "source_only", "domains"} <= set(r)


def test_cli_tasks_table_is_readable(capsys):
    assert cli.main(["tasks"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["name", "output"] and len(out) == 27
