"""One driver per storage: a second sweep is refused while the first lives, never after."""

from __future__ import annotations

import subprocess
import sys

import pytest

from taskonomy_ray.errors import ConfigError
from taskonomy_ray.sweep import driver, lease
from taskonomy_ray.tables import Storage


def test_a_live_claim_refuses_a_second_driver_and_release_frees_the_storage(tmp_path):
    st = Storage(str(tmp_path))
    first = lease.claim(st)
    assert lease.holder(st)["pid"] == first.storage.read_json(lease.DRIVER_FILE)["pid"]
    with pytest.raises(ConfigError, match="another sweep drives storage .* --takeover"):
        lease.claim(st)
    first.release()
    assert not st.exists(lease.DRIVER_FILE) and lease.holder(st) is None
    lease.claim(st).release()


def test_a_claim_not_renewed_for_the_lease_lapses(tmp_path):
    st = Storage(str(tmp_path))
    old = lease.claim(st)
    claim = st.read_json(lease.DRIVER_FILE)
    st.write_json(lease.DRIVER_FILE, {**claim, "renewed": claim["renewed"] - lease.LEASE_S - 1})
    assert lease.holder(st) is None
    new = lease.claim(st)
    old.release()  # no longer its claim: leaves the new one alone
    assert st.read_json(lease.DRIVER_FILE)["token"] == new.token


def test_a_claim_dated_in_the_future_says_the_clocks_differ_not_a_negative_age(tmp_path):
    # The message read "last renewed -98203641057 s ago ... wait 98203641177 s".
    st = Storage(str(tmp_path))
    held = lease.claim(st)
    claim = st.read_json(lease.DRIVER_FILE)
    st.write_json(lease.DRIVER_FILE, {**claim, "renewed": claim["renewed"] + 3600})
    with pytest.raises(ConfigError, match=r"renewal dated 3600 s ahead of this host's clock: "
                                          r"the hosts' clocks differ.*pass --takeover$"):
        lease.claim(st)
    held.release()


def test_a_claim_of_a_process_of_this_host_that_is_gone_is_taken_at_once(tmp_path):
    st = Storage(str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lease.claim(st)
    claim = st.read_json(lease.DRIVER_FILE)
    st.write_json(lease.DRIVER_FILE, {**claim, "pid": int(gone.stdout)})  # a killed driver
    lease.claim(st)


def test_takeover_claims_a_held_storage_and_the_old_driver_stops_at_its_next_renewal(
        tmp_path, monkeypatch):
    st = Storage(str(tmp_path))
    first = lease.claim(st)
    lease.claim(st, takeover=True)
    monkeypatch.setattr(lease, "RENEW_S", 0.0)
    with pytest.raises(ConfigError, match="claimed by another sweep"):
        first.renew()


def test_a_sweep_that_fails_to_start_gives_its_claim_back(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise ConfigError("the config differs")

    monkeypatch.setattr(driver, "guard_run", refuse)
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"name: t\ndata: {{root: {tmp_path / 'data'}}}\ntasks: [normal]\n"
                  "max_order: 1\n")
    with pytest.raises(ConfigError, match="the config differs"):
        driver.run_sweep(wf, storage_uri=str(tmp_path / "store"), report=False)
    assert not Storage(str(tmp_path / "store")).exists(lease.DRIVER_FILE)


def test_a_claim_without_a_readable_time_is_stale(tmp_path):
    st = Storage(str(tmp_path))
    lease.claim(st)
    st.write_json(lease.DRIVER_FILE, {**st.read_json(lease.DRIVER_FILE), "renewed": None})
    assert lease.holder(st) is None
    lease.claim(st)


def test_the_first_claim_is_created_exclusively(tmp_path):
    # Two drivers that both found no claim: only one file creation succeeds, the other looks
    # again, finds the live claim and is refused.
    st = Storage(str(tmp_path))
    a, b = lease.Lease(st), lease.Lease(st)
    assert a._create() and not b._create()
    assert st.read_json(lease.DRIVER_FILE)["token"] == a.token


def test_a_storage_error_while_renewing_is_reported_not_fatal(tmp_path, monkeypatch, capsys):
    from taskonomy_ray.errors import StorageError

    st = Storage(str(tmp_path))
    held = lease.claim(st)

    def refuse(*a, **k):
        raise StorageError("503 slow down")

    monkeypatch.setattr(st, "write_bytes", refuse)
    held.renew(now=True)
    assert "could not renew" in capsys.readouterr().err
