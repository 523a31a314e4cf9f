"""A file cut short outside the sweep's atomic writes: found cheaply, named, set aside, rerun."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from taskonomy_ray import features
from taskonomy_ray.errors import DataError, StorageError
from taskonomy_ray.sweep import driver, ledger, plan, runner, units
from taskonomy_ray.sweep import status as sweep_status
from taskonomy_ray.tables import Storage, losses_table


def _whole_files(st: Storage) -> dict[str, bytes]:
    """One whole file of each kind a unit writes."""
    st.write_losses("u", losses_table("u", "gold", "normal", ["self"], 8, ["a", "b"], [0.1, 0.2]))
    st.write_bytes("features/f.npz", features.to_bytes(
        features.Features(["a"], np.ones((1, 8, 2, 2), np.float32))))
    st.write_bytes("checkpoints/g/final.pt", units.torch_bytes({"w": torch.ones(2)}))
    st.write_json("beam/b.json", {"chosen": {"2": [["normal", "depth_zbuffer"]]}})
    return {rel: st.read_bytes(rel) for rel in
            ("losses/u.parquet", "features/f.npz", "checkpoints/g/final.pt", "beam/b.json")}


def test_whole_files_pass_and_cut_ones_are_named(tmp_path):
    st = Storage(str(tmp_path))
    kinds = {"parquet": "not a whole Parquet file", "npz": "not a whole zip archive",
             "pt": "not a whole zip archive", "json": "not valid JSON"}
    for rel, data in _whole_files(st).items():
        assert st.damage(rel) is None, rel
        st.write_bytes(rel, data[: len(data) // 2])  # an interrupted copy
        assert st.damage(rel).startswith(kinds[rel.rsplit(".", 1)[1]]), rel  # (not ArrowInvalid)
    st.write_bytes("features/f.npz", b"")
    assert st.damage("features/f.npz")
    assert st.damage("losses/none.parquet") == "missing"


def test_a_unit_with_a_damaged_output_is_not_done_and_its_file_is_kept_aside(tmp_path):
    st = Storage(str(tmp_path))
    data = _whole_files(st)["losses/u.parquet"]
    unit = plan.Unit("scratch-normal", "scratch", {}, (), ("losses/u.parquet",))
    lines: list[str] = []
    is_done = driver.done_check(st, None, str(tmp_path / "data"), warn=lines.append)
    assert is_done(unit)
    st.write_bytes("losses/u.parquet", data[:-8])  # the footer is gone
    assert not is_done(unit)
    assert not st.exists("losses/u.parquet")
    assert st.list("losses") == []  # the folder stays one dataset of whole tables
    aside = [n for n in st.list("damaged/losses") if n.startswith("u.parquet.")]
    assert len(aside) == 1 and st.read_bytes(f"damaged/losses/{aside[0]}") == data[:-8]
    assert "losses/u.parquet is damaged" in lines[0] and "runs again" in lines[0]
    assert st.list("losses", ".parquet") == []  # the kept copy is not read as a unit's losses


def test_a_beam_without_its_choice_is_not_done(tmp_path):
    st = Storage(str(tmp_path))
    _whole_files(st)
    st.write_json("beam/b.json", {"target": "normal"})
    unit = plan.Unit("beam-normal", "beam", {}, (), ("beam/b.json",))
    lines: list[str] = []
    assert not driver.done_check(st, None, "", warn=lines.append)(unit)
    assert "no 'chosen' higher orders" in lines[0]


def test_an_analysis_with_impossible_scores_or_a_taxonomy_of_the_wrong_shape_is_not_done(
        tmp_path, published_csv):
    # Whole files both: `[]` as taxonomy.json failed every report for good (the fix it named,
    # retrying the report, failed the same way), and a NaN affinity changed solves silently.
    import pyarrow as pa

    from taskonomy_ray.published import load_published

    st = Storage(str(tmp_path))
    table = load_published(published_csv)
    st.write_affinities(table)
    st.write_json("taxonomy.json", {"supervised": ["normal"]})
    unit = plan.Unit("analysis", "analysis", {}, (), ("affinities.parquet", "taxonomy.json"),
                     barrier=True)
    assert driver.damaged_files(st, unit) == []
    st.write_json("taxonomy.json", [])
    st.write_affinities(table.set_column(5, "quality", pa.array(
        [1.5] + table.column("quality").to_pylist()[1:], pa.float64())))
    found = dict(driver.damaged_files(st, unit))
    assert found["taxonomy.json"] == "not a taxonomy (a JSON object)"
    assert "has quality 1.5, outside [0, 1]" in found["affinities.parquet"]
    lines: list[str] = []
    assert not driver.done_check(st, None, "", warn=lines.append)(unit)
    assert len(lines) == 2 and not st.exists("taxonomy.json")
    st.write_table("affinities.parquet", pa.table({"unit": ["x"]}))  # another version's columns
    assert "missing columns" in dict(driver.damaged_files(st, unit))["affinities.parquet"]
    # On an object store only the analysis is looked inside (other units: existence only).
    st.local = False
    st.write_bytes("losses/u.parquet", b"cut short")
    gold = plan.Unit("gold-x", "gold", {}, (), ("losses/u.parquet",))
    assert driver.set_aside_damaged(st, gold) == []
    assert len(driver.set_aside_damaged(st, unit)) == 1 and not st.exists("affinities.parquet")


@pytest.mark.parametrize("doc, says", [(None, "a JSON null, not an object"),
                                        ([1, 2], "a JSON array, not an object"),
                                        ({}, "an object without ['config']")])
def test_a_run_json_of_the_wrong_shape_is_named_damaged_not_a_traceback(tmp_path, doc, says):
    # null or a list crashed the resume (AttributeError); {} read as "method version 1".
    from taskonomy_ray.sweep import config, guard

    st = Storage(str(tmp_path))
    st.write_json("run.json", doc)
    cfg = config.from_dict({"name": "t", "tasks": ["normal"], "data": {"root": str(tmp_path)}})
    fix = "delete it and resume the sweep, which writes it again"
    with pytest.raises(StorageError, match=re.escape(f"run.json is damaged ({says}); {fix}")):
        guard.guard_run(st, cfg)
    st.write_json("plan.json", [])
    with pytest.raises(StorageError, match=r"plan.json is damaged \(a JSON array"):
        sweep_status.status(str(tmp_path))


def test_damaged_checkpoints_and_feature_entries_name_the_file_and_the_fix(tmp_path):
    st = Storage(str(tmp_path))
    files = _whole_files(st)
    with pytest.raises(StorageError, match="damaged checkpoint x.pt.*delete it and resume"):
        units.torch_state(files["checkpoints/g/final.pt"][:100], "x.pt")
    with pytest.raises(StorageError, match="corrupt feature cache entry y.npz.*delete it"):
        features.from_bytes(files["features/f.npz"][:-10], "y.npz")


def test_a_damaged_resume_checkpoint_is_set_aside_and_training_starts_over(tmp_path, capsys):
    st = Storage(str(tmp_path))
    good = units.torch_bytes({"step": 7})
    hooks = units.StorageHooks(st, "checkpoints/g/checkpoint.pt")
    st.write_bytes(hooks.rel, good)
    assert hooks.load() == {"step": 7}
    st.write_bytes(hooks.rel, good[:50])
    assert hooks.load() is None
    assert not st.exists(hooks.rel)
    assert any(n.startswith("checkpoint.pt.") for n in st.list("damaged/checkpoints/g"))
    assert "training from step 0" in capsys.readouterr().err


def test_a_failure_is_summed_up_by_its_headline():
    ours = DataError("no loadable sample in split 'train' of /data:\n3 bad file(s)\n  a.png: cut")
    assert runner.describe(ours) == ("DataError: no loadable sample in split 'train' of /data: "
                                     "(+2 more lines: taskonomy-ray status)")
    crash = RuntimeError("Traceback (most recent call last):\n  File x\nCUDA out of memory")
    assert runner.describe(crash) == "RuntimeError: CUDA out of memory"


def test_a_damaged_ledger_event_costs_its_line_of_history_only(tmp_path):
    st = Storage(str(tmp_path))
    ledger.record(st, "gold-normal", "started")
    ledger.record(st, "gold-normal", "failed", error="boom")
    st.write_bytes("ledger/gold-normal/0000000000.000000-cut.json", b'{"event": "do')
    h = ledger.history(st, "gold-normal")
    assert h.state == "failed" and h.last_error == "boom" and h.attempts == 1
    assert len(h.damaged) == 1 and h.damaged[0].endswith("-cut.json")


def test_status_verify_lists_a_copied_runs_cut_files_and_moves_nothing(tmp_path, capsys):
    from taskonomy_ray import cli

    st = Storage(str(tmp_path))
    data = _whole_files(st)["losses/u.parquet"]
    st.write_json(plan.PLAN_FILE, {"units": [plan.Unit("scratch-normal", "scratch", {}, (),
                                                       ("losses/u.parquet",)).to_json()]})
    assert sweep_status.status(str(tmp_path), verify=True)["damaged"] == {}
    assert sweep_status.status(str(tmp_path))["damaged"] is None  # not checked unless asked
    st.write_bytes("losses/u.parquet", data[:100])
    found = sweep_status.status(str(tmp_path), verify=True)["damaged"]
    assert list(found) == ["scratch-normal"] and "losses/u.parquet" in found["scratch-normal"][0]
    assert st.read_bytes("losses/u.parquet") == data[:100]  # status only reads
    assert cli.main(["status", str(tmp_path), "--verify"]) == 1
    assert "DAMAGED scratch-normal" in capsys.readouterr().out


def test_status_verify_applies_the_resumes_whole_checks_to_partial_records_and_beams(tmp_path):
    # The same files a resume would set aside: a transfer group's cut partial record (read by
    # status itself, so it must not stop the listing) and a beam's JSON without its choice.
    st = Storage(str(tmp_path))
    data = _whole_files(st)["losses/u.parquet"]
    transfer = plan.Unit("transfer-normal", "transfer", {"order": 1, "source_sets": [["a"]]},
                         ("features-a",), ("losses/u.parquet",),
                         optional=("features-a",))
    beam = plan.Unit("beam-normal", "beam", {}, (), ("beam/b.json",))
    st.write_json(plan.PLAN_FILE, {"units": [u.to_json() for u in (transfer, beam)]})
    st.write_bytes(plan.partial_path("transfer-normal"), b'{"sources": ["normal"], "left')
    st.write_json("beam/b.json", {"ranked": ["normal"]})
    found = sweep_status.status(str(tmp_path), verify=True)["damaged"]
    assert set(found) == {"transfer-normal", "beam-normal"}
    assert "partial/transfer-normal.json" in found["transfer-normal"][0]
    assert "no 'chosen' higher orders" in found["beam-normal"][0]
    assert st.read_bytes("losses/u.parquet") == data  # nothing moved
    assert [rel for rel, _ in driver.damaged_files(st, beam)] == ["beam/b.json"]
