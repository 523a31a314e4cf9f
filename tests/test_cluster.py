"""The cluster path: cluster.yaml validated offline, and `ray job submit` against a local head."""

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_cluster_yaml_passes_rays_own_schema_offline():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(raw))  # raises on any schema violation; no cloud access


def test_cluster_has_autoscaling_gpu_workers_and_a_cpu_head():
    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    types = raw["available_node_types"]
    assert raw["provider"]["type"] == "aws"
    assert types[raw["head_node_type"]]["node_config"]["InstanceType"].startswith("m")
    workers = [t for n, t in types.items() if n != raw["head_node_type"]]
    assert workers and workers[0]["min_workers"] == 0 and workers[0]["max_workers"] >= 1
    assert workers[0]["node_config"]["InstanceType"].startswith(("g", "p"))


def test_cluster_turns_token_auth_on_and_keeps_the_dashboard_private():
    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    head = " ".join(raw["head_start_ray_commands"])
    workers = " ".join(raw["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in workers
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head


def test_cluster_yaml_holds_no_credentials():
    text = (REPO / "cluster.yaml").read_text().lower()
    for word in ("aws_secret_access_key", "aws_access_key_id", "private_key", "password"):
        assert word not in text


@pytest.fixture
def local_head(tmp_path):
    """A real `ray start --head` on 127.0.0.1 with token auth (its own token, not ~/.ray)."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{BIN}:{os.environ['PATH']}"}
    ray_bin = str(BIN / "ray")
    port = 26379 + os.getpid() % 1000
    dash = 28265 + os.getpid() % 1000
    start = subprocess.run(
        [ray_bin, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
         "--include-dashboard=true", f"--temp-dir={tmp_path / 'ray'}", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr
    try:
        yield env, f"http://127.0.0.1:{dash}"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.ray
@pytest.mark.slow
def test_job_submitted_to_a_local_token_auth_head_completes(local_head, tmp_path):
    env, address = local_head
    storage, data = tmp_path / "store", tmp_path / "data"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
           "--", sys.executable, "-m", "taskonomy_ray", "sweep", "workflows/smoke.yaml",
           "--storage", str(storage), "--data", str(data), "--no-progress"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "sweep finished" in r.stdout, r.stdout[-2000:]
    assert (storage / "affinities.parquet").exists() and (storage / "taxonomy.json").exists()
    # The client without the token is refused: auth is really on.
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    r = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=no_token,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    shutil.rmtree(data, ignore_errors=True)
