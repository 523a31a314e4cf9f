import os
import stat

import numpy as np
import pyarrow as pa
import pytest

from taskonomy_ray import tables
from taskonomy_ray.errors import StorageError


def unit_table(unit="u1", losses=(0.5, 0.25)):
    return tables.losses_table(unit, "transfer", "normal", ["depth_zbuffer", "reshading"], 128,
                               [f"b/p{i}" for i in range(len(losses))], losses)


def test_losses_table_follows_the_design_schema():
    t = unit_table()
    assert t.schema == tables.LOSSES_SCHEMA
    assert t.column("order").to_pylist() == [2, 2]


def test_non_finite_losses_are_refused_naming_the_unit_and_images():
    with pytest.raises(StorageError, match=r"unit u9: 1 non-finite losses .*b/p1"):
        unit_table("u9", (0.1, float("nan")))


def test_losses_written_per_unit_read_back_concatenated(tmp_path):
    st = tables.Storage(str(tmp_path))
    st.write_losses("u1", unit_table("u1"))
    st.write_losses("u2", unit_table("u2", (1.0,)))
    got = st.read_losses()
    assert got.num_rows == 3 and set(got.column("unit").to_pylist()) == {"u1", "u2"}
    assert not [n for n in os.listdir(tmp_path / "losses") if n.startswith(".")]


def test_reading_no_losses_says_to_run_the_sweep(tmp_path):
    with pytest.raises(StorageError, match="run `taskonomy-ray sweep`"):
        tables.Storage(str(tmp_path)).read_losses()


def test_table_with_missing_column_is_refused(tmp_path):
    st = tables.Storage(str(tmp_path))
    st.write_table("affinities.parquet", pa.table({"regime": [1], "target": ["normal"]}))
    with pytest.raises(StorageError, match=r"missing columns \['sources'"):
        st.read_affinities()


def test_corrupt_parquet_names_the_file_and_fix(tmp_path):
    (tmp_path / "affinities.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(StorageError, match="corrupt Parquet file .*affinities.parquet.*resume the"):
        tables.Storage(str(tmp_path)).read_affinities()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_storage_says_how_to_fix(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(StorageError, match="not writable"):
        tables.Storage(str(ro / "run")).ensure_writable()


def test_storage_under_a_file_is_not_writable(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StorageError, match="not writable .*choose another --storage"):
        tables.Storage(str(tmp_path / "f" / "run")).ensure_writable()


def test_file_uri_and_plain_path_reach_the_same_place(tmp_path):
    tables.Storage(f"file://{tmp_path}").write_json("run.json", {"a": 1})
    assert tables.Storage(str(tmp_path)).read_json("run.json") == {"a": 1}


@pytest.mark.parametrize("typo", ["s4://bucket/run", "s3:/bucket/run", "file://relative/run",
                                  "s4://KEY:secret@bucket/run"])
def test_a_uri_pyarrow_cannot_open_is_refused_not_taken_for_a_local_folder(typo, tmp_path,
                                                                          monkeypatch):
    # Before, a typo became a folder such as ./s4:/bucket/run: a cluster's results would land on
    # the head node's disk, reported as written.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError, match="cannot open storage .*s3://bucket/path") as e:
        tables.Storage(typo)
    assert "secret" not in str(e.value) and not any(tmp_path.iterdir())


def test_affinities_round_trip(tmp_path):
    st = tables.Storage(str(tmp_path))
    t = pa.table({"regime": [16], "target": ["normal"], "sources": [["reshading"]], "order": [1],
                  "affinity": [0.3], "quality": [0.4], "gain": [0.6]})
    st.write_affinities(t)
    back = st.read_affinities()
    assert back.schema == tables.AFFINITIES_SCHEMA
    assert np.isclose(back.column("affinity")[0].as_py(), 0.3)


def test_credentials_in_a_storage_uri_never_reach_messages():
    uri = "s3://AKIAEXAMPLE:s3cr3t@bucket/run?access_key=AK&secret_key=SK&region=us-west-2"
    shown = tables.redact(uri)
    assert shown == "s3://bucket/run"
    assert tables.redact("/plain/local/path") == "/plain/local/path"


def test_a_loss_table_with_a_bad_kind_or_length_is_refused_naming_the_unit():
    with pytest.raises(StorageError, match=r"unit u1: kind must be one of .*got 'gld'"):
        tables.losses_table("u1", "gld", "normal", ["self"], 1000, ["a", "b"], [1.0, 2.0])
    with pytest.raises(StorageError, match="unit u1: 3 losses for 2 images"):
        tables.losses_table("u1", "gold", "normal", ["self"], 1000, ["a", "b"], [1.0, 2.0, 3.0])


def test_a_table_with_columns_of_the_wrong_type_is_refused_naming_what_was_expected():
    table = tables.losses_table("u1", "gold", "normal", ["self"], 1000, ["a"], [1.0])
    odd = table.set_column(table.schema.get_field_index("regime"), "regime",
                           pa.array(["a thousand"]))
    with pytest.raises(StorageError, match="losses: columns have the wrong types"):
        tables.check_schema(odd, tables.LOSSES_SCHEMA, "losses")


def test_corrupt_json_in_storage_names_the_file_and_the_fix(tmp_path):
    st = tables.Storage(str(tmp_path))
    st.write_bytes("plan.json", b'{"units": [')
    with pytest.raises(StorageError, match=r"corrupt JSON .*plan\.json.*delete it and resume"):
        st.read_json("plan.json")


def test_a_torch_file_digest_is_of_its_contents_not_of_how_torch_wrote_them(tmp_path):
    # A gold network resumed from its checkpoint writes the same weights in other bytes (the
    # pickle memo shares a loaded 'cpu' key otherwise): its dependents must not run again.
    import io

    import torch

    def saved(obj):
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    state = {"w": torch.arange(4.0), "rng": {"cpu": torch.get_rng_state()}, "step": 3}
    first = saved(state)
    again = saved(torch.load(io.BytesIO(first)))
    assert first != again  # (the bytes differ: a byte digest would call it another result)
    st = tables.Storage(str(tmp_path))
    for name, data in [("a.pt", first), ("b.pt", again),
                       ("c.pt", saved({**state, "w": torch.arange(4.0) + 1e-6}))]:
        st.write_bytes(name, data)
    assert st.digest("a.pt") == st.digest("b.pt") != st.digest("c.pt")
    st.write_bytes("d.pt", b"not a zip")  # not a torch file: its bytes' digest, no error
    assert st.digest("d.pt") != st.digest("a.pt")
    with pytest.raises(StorageError, match="not found"):
        st.digest("e.pt")
    # The same bytes as another dtype are other contents (the pickle names the storage type).
    st.write_bytes("f32.pt", saved({"w": torch.zeros(4)}))
    st.write_bytes("i32.pt", saved({"w": torch.zeros(4, dtype=torch.int32)}))
    assert st.digest("f32.pt") != st.digest("i32.pt")


def test_a_files_digest_is_of_what_is_there_after_a_delete_or_another_write(tmp_path):
    # Digests of what this process wrote are remembered (no read back from an object store);
    # what removes or replaces the file forgets them.
    st = tables.Storage(str(tmp_path))
    st.write_bytes("a.json", b"1")
    first = st.digest("a.json")
    st.write_bytes("a.json", b"2")
    assert st.digest("a.json") != first
    (tmp_path / "a.json").write_bytes(b"1")  # another process's write
    tables.forget_written(st, ["a.json"])
    assert st.digest("a.json") == first
    st.delete("a.json")
    with pytest.raises(StorageError, match="not found"):
        st.digest("a.json")
