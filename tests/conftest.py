"""Shared fixtures: repository paths, the published reference data, and one Ray per session."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

# The same Ray settings everywhere (tests, scripts, Makefile): no usage stats, token auth mode
# fixed so that a head started later does not disagree with an earlier client.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")
# Token mode needs a token. A fresh machine has none (~/.ray/auth_token is written by the first
# local `ray.init()`), and a head started without `ray.init()` (ray.cluster_utils' simulated
# cluster) aborts its GCS instead: the session's Ray instances share one token of their own, and
# the tests leave the user's ~/.ray alone.
if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(16)
# A Ray head started while the session's Ray is busy (the simulated cluster of the node-removal
# test, the job-submit head) waited past Ray's default 30 s for its GCS port on a loaded 2-core
# machine, failing the test before it began; every Ray these tests start inherits this.
os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")

REPO = Path(__file__).resolve().parents[1]
PUBLISHED_CSV = REPO.parent / "shared" / "reference" / "taskonomy-published" / "transfers.csv"


@pytest.fixture(scope="session")
def published_csv() -> Path:
    """The published Taskonomy transfers table from ../shared; skips where it is absent."""
    if not PUBLISHED_CSV.exists():
        pytest.skip(f"published reference data not found at {PUBLISHED_CSV} (../shared is absent)")
    return PUBLISHED_CSV


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (start-up costs seconds).

    It declares one GPU, so units that ask for a share of one are scheduled as on a GPU node;
    the stand-in units that ask never touch CUDA.
    """
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, num_gpus=1, object_store_memory=256 * 1024**2,
                 include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch work on one thread, restoring the setting afterwards."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
