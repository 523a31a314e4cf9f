"""Reading the published Taskonomy results: the shared CSV and a clone's pickles, safely."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from taskonomy_ray import published, tables
from taskonomy_ray.errors import DataError, StorageError, UnknownNameError


def _key(row):
    return row["regime"], row["target"], tuple(row["sources"])


def _results_dir(csv: Path, root: Path, numpy_affinities: bool = True) -> Path:
    """A StanfordVL/taskonomy-like results/ folder rebuilt from the CSV's original keys."""
    raw = pacsv.read_csv(csv).to_pylist()
    results = root / "results"
    for sub in ("affinities", "winrates"):
        (results / sub).mkdir(parents=True)
    files = [("affinity", "affinities/all_affinities"), ("wins_vs_task", "winrates/wins_vs_task"),
             ("wins_vs_pixels", "winrates/wins_vs_pixels")]
    for regime, suffix in ((1000, "1k"), (16000, "16k")):
        for column, stem in files:
            values = {r["key"]: r[column] for r in raw
                      if r["regime"] == regime and r[column] is not None}
            if numpy_affinities and column == "affinity":  # as numpy scalars, like the release
                values = {k: np.float64(v) for k, v in values.items()}
            (results / f"{stem}_{suffix}.pkl").write_bytes(pickle.dumps(values, protocol=2))
    (results / "affinities" / "all_affinities.pkl").write_bytes(pickle.dumps({}, protocol=2))
    return results


def test_published_csv_maps_onto_the_affinities_schema(published_csv):
    table = published.read_published_csv(published_csv)
    assert table.schema.equals(tables.AFFINITIES_SCHEMA)
    assert table.num_rows == 3180
    assert sorted(set(table.column("regime").to_pylist())) == [1000, 16000]
    targets = set(table.column("target").to_pylist())
    assert len(targets) == 22 and not targets & {"colorization", "jigsaw", "inpainting", "random"}
    rows = {_key(r): r for r in table.to_pylist()}
    gold = rows[(16000, "normal", ("self",))]
    assert gold["quality"] == 0.5  # wins_vs_task -> quality; gold ties with itself
    assert gold["gain"] == pytest.approx(0.990493, abs=1e-6)  # wins_vs_pixels -> gain


def test_published_affinities_sum_to_one_per_regime_and_target(published_csv):
    # The same normalisation as ours: over all ranked transfers into a target within a regime,
    # gold (`self`), random and the target's own encoder included.
    sums: dict = {}
    for r in published.read_published_csv(published_csv).to_pylist():
        if r["affinity"] is not None:
            key = (r["regime"], r["target"])
            sums[key] = sums.get(key, 0.0) + r["affinity"]
    assert len(sums) == 44
    for key, total in sums.items():
        assert total == pytest.approx(1.0, abs=1e-9), key


def test_unranked_published_rows_keep_a_null_affinity(published_csv):
    table = published.read_published_csv(published_csv)
    unranked = [r for r in table.to_pylist() if r["affinity"] is None]
    assert len(unranked) == 4
    assert all(r["target"] == "nonfixated_pose" and r["gain"] is not None for r in unranked)


def test_results_pickles_read_the_same_table_as_the_csv(published_csv, tmp_path):
    results = _results_dir(published_csv, tmp_path)
    from_csv = sorted(published.read_published_csv(published_csv).to_pylist(), key=_key)
    for folder in (results, tmp_path):  # the results/ folder itself, or the clone's root
        from_pickles = sorted(published.load_published(folder).to_pylist(), key=_key)
        assert from_pickles == from_csv


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "wins_vs_task_1k.pkl"
    evil.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    with pytest.raises(DataError, match="refusing to unpickle os.system"):
        published.load_plain_pickle(evil)
    assert not marker.exists()


def test_pickles_that_are_not_plain_number_dicts_are_refused(tmp_path):
    cases = {"list.pkl": [1.0, 2.0], "strings.pkl": {"normal__reshade": "high"},
             "object.pkl": {"a__b": Path("x")}}
    for name, obj in cases.items():
        f = tmp_path / name
        f.write_bytes(pickle.dumps(obj, protocol=2))
        with pytest.raises(DataError):
            published.load_plain_pickle(f)


def test_numpy_scalars_of_non_numeric_dtype_are_refused(tmp_path):
    f = tmp_path / "dates.pkl"
    f.write_bytes(pickle.dumps({"a__b": np.datetime64("2018-06-18")}, protocol=2))
    with pytest.raises(DataError, match="refusing"):
        published.load_plain_pickle(f)


def test_python2_pickles_with_byte_string_keys_are_read(tmp_path):
    # protocol 0 text pickle, as Python 2 writes it: str keys are byte strings.
    f = tmp_path / "all_affinities_1k.pkl"
    f.write_bytes(b"(dp0\nS'rgb2sfnorm__reshade'\np1\nF0.25\ns.")
    assert published.load_plain_pickle(f) == {"rgb2sfnorm__reshade": 0.25}
    table = published.read_results_dir(tmp_path)
    assert table.to_pylist() == [{"regime": 1000, "target": "reshading", "sources": ["normal"],
                                  "order": 1, "affinity": 0.25, "quality": None, "gain": None}]


def test_legacy_names_map_to_dataset_names():
    assert published.task_name("rgb2sfnorm") == "normal"
    assert published.task_name("impainting_whole") == "inpainting"
    assert published.task_name("class_selected") == "class_object_selected"
    assert published.task_name("self") == "self"
    with pytest.raises(UnknownNameError, match="did you mean 'depth_zbuffer'"):
        published.task_name("depth_zbufer")  # current names are suggested too


def test_an_unknown_task_in_the_published_csv_names_the_file_and_line(published_csv, tmp_path):
    lines = published_csv.read_text().splitlines()
    cells = lines[3].split(",")
    cells[1] = "normals"  # the target column
    lines[3] = ",".join(cells)
    bad = tmp_path / "transfers.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"transfers.csv, line 4: unknown task name 'normals'; "
                                        r"did you mean 'normal'"):
        published.read_published_csv(bad)


@pytest.mark.parametrize("column, value, message", [
    ("affinity", "nan", r"has affinity nan, outside the finite non-negative numbers"),
    ("affinity", "inf", r"has affinity inf"),
    ("affinity", "-0.5", r"has affinity -0.5"),
    ("wins_vs_task", "1.7", r"has quality 1.7, outside \[0, 1\]"),
    ("wins_vs_pixels", "nan", r"has gain nan"),
])
def test_a_score_that_cannot_be_right_is_refused_not_skipped(published_csv, tmp_path, column,
                                                             value, message):
    # A NaN row used to be dropped without a word, and `solve` then supervised another task.
    lines = published_csv.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[3].split(",")
    cells[header.index(column)] = value
    lines[3] = ",".join(cells)
    bad = tmp_path / "transfers.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"transfers.csv: line 4 \(.*\) " + message):
        published.load_published(bad)


def test_a_transfer_listed_twice_is_refused_and_a_stored_bad_score_names_the_fix(
        published_csv, tmp_path):
    lines = published_csv.read_text().splitlines()
    twice = tmp_path / "transfers.csv"
    twice.write_text("\n".join([*lines, lines[5]]) + "\n")
    with pytest.raises(DataError, match=f"line {len(lines) + 1} \\(.*\\) is listed twice"):
        published.load_published(twice)
    table = published.load_published(published_csv)
    st = tables.Storage(str(tmp_path / "run"))
    st.write_affinities(table.set_column(4, "affinity", pa.array(
        [float("nan")] + table.column("affinity").to_pylist()[1:], pa.float64())))
    with pytest.raises(StorageError, match=r"affinities.parquet: row 1 .* has affinity nan.*"
                                           r"delete it and taxonomy.json and resume the sweep"):
        st.read_affinities()


def test_missing_paths_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        published.load_published(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="no results pickles"):
        published.load_published(tmp_path)
    with pytest.raises(DataError, match="one of them"):
        published.load_affinities(None, None)
