"""`taskonomy-ray check`: every dataset a sweep opens, sampled before the sweep; gaps listed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from fixtures import make_root

from taskonomy_ray.cli import main
from taskonomy_ray.sweep import config
from taskonomy_ray.sweep.datacheck import check_data, needed_domains

TASKS = ["normal", "depth_zbuffer", "egomotion"]


def _cfg(root: Path, **over) -> config.SweepConfig:
    raw = {"name": "chk", "data": {"root": str(root)}, "tasks": TASKS, "regimes": [4],
           "max_order": 2,
           "network": {"preset": "mini", "model": {"image_size": 32}}, **over}
    return config.from_dict(raw)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return make_root(tmp_path_factory.mktemp("chk") / "root", buildings=4, points=4)


@pytest.fixture
def root(clean, tmp_path) -> Path:
    return Path(shutil.copytree(clean, tmp_path / "root"))


def test_clean_root_opens_every_dataset_the_sweep_would(root):
    report = check_data(_cfg(root), root)
    assert not report.problems
    opened = {c.what for c in report.checks if not c.what.startswith("files")}
    assert opened == {f"{t} {s}" for t in TASKS for s in ("train", "test", "r4")}
    assert all(c.samples for c in report.checks)
    assert sum(len(b) for b in report.buildings.values()) == 4


def test_missing_file_is_listed_by_folder_and_by_the_dataset_that_reads_it(root):
    report = check_data(_cfg(root), root)
    building = report.buildings["train"][0]
    gone = root / building / "normal" / "point_2_view_1_domain_normal.png"
    gone.unlink()
    report = check_data(_cfg(root), root, reads=1000)
    problems = {c.what: c.problem for c in report.problems}
    assert "point_2_view_1_domain_normal.png" in problems[f"files {building}/normal"]
    assert str(gone) in problems["normal train"]
    assert set(problems) == {f"files {building}/normal", "normal train"}


def test_missing_domain_folder_names_the_domain_to_download(root):
    building = sorted(p.name for p in root.iterdir() if p.is_dir())[0]
    shutil.rmtree(root / building / "depth_zbuffer")  # normal's mask needs it too
    problems = {c.what: c.problem for c in check_data(_cfg(root), root).problems}
    assert "download the depth_zbuffer domain" in problems[f"files {building}/depth_zbuffer"]
    assert "depth_zbuffer" in needed_domains("normal")


def test_regime_larger_than_the_validation_split_is_a_problem(root):
    problems = {c.what: c.problem for c in check_data(_cfg(root, regimes=[500]), root).problems}
    assert "a subset of 500 samples" in problems["normal r500"]


def test_cli_check_exits_1_on_problems_and_0_on_a_clean_root(root, tmp_path, capsys):
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump({"name": "chk", "data": {"root": str(root)}, "tasks": TASKS,
                                  "regimes": [4], "max_order": 2, "network": {"preset": "mini",
                                                              "model": {"image_size": 32}}}))
    assert main(["check", str(wf), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ok       normal r4" in out and "PROBLEM" not in out
    passed, of = re.search(r"(\d+) of (\d+) checks passed", out).groups()
    assert passed == of
    shutil.rmtree(next(root.glob("*/normal")))
    assert main(["check", str(wf), "--no-progress"]) == 1
    assert "PROBLEM" in capsys.readouterr().out
    assert main(["check", str(wf), "--data", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["check", str(wf), "--data", str(wf)]) == 2  # a file where a folder belongs
    assert "is a file, not a folder" in capsys.readouterr().err


def test_cli_check_of_a_root_still_to_render_says_the_sweep_renders_it(tmp_path, capsys):
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump({"name": "chk", "tasks": ["normal"], "regimes": [4],
                                  "max_order": 1, "data": {
        "root": str(tmp_path / "mini"), "render": {"points": 4, "buildings": 4}}}))
    assert main(["check", str(wf)]) == 0
    assert "renders it" in capsys.readouterr().out
