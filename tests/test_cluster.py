"""The cluster path: cluster.yaml validated offline, and `ray job submit` against a local head."""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
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


def test_every_node_boots_a_current_image_and_installs_the_tested_versions():
    # Without an ImageId Ray boots a 2021 Ubuntu 18.04 image (CUDA 11.2 driver); an unpinned
    # install lets autoscaled workers take a newer Ray than the head, which they cannot join.
    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    for name, node in raw["available_node_types"].items():
        assert "ubuntu-24.04" in node["node_config"]["ImageId"], name
    setup = " ".join(raw["setup_commands"])
    assert "-c /home/ubuntu/taskonomy-ray/constraints.txt" in setup and "[cluster]" in setup
    assert raw["file_mounts"]["/home/ubuntu/taskonomy-ray"] == "."  # constraints.txt travels


def test_the_client_extra_brings_what_ray_up_needs_and_ray_has_token_auth():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("boto3") for d in project["optional-dependencies"]["cluster"])
    ray_dep = next(d for d in project["dependencies"] if d.startswith("ray["))
    assert ray_dep.endswith(">=2.52")  # token auth and Ray Train V2 by default


def test_cluster_yaml_holds_no_credentials():
    text = (REPO / "cluster.yaml").read_text().lower()
    for word in ("aws_secret_access_key", "aws_access_key_id", "private_key", "password"):
        assert word not in text


def _free_ports(n):
    """n distinct TCP ports free on 127.0.0.1 now (all bound at once, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture
def local_head():
    """A real `ray start --head` on 127.0.0.1 with token auth (its own token, not ~/.ray).

    Started with --block in its own process group and stopped by killing that group, so the
    test never touches other Ray instances on the machine (as `ray stop` would).
    """
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{BIN}:{os.environ['PATH']}"}
    # A short temp dir: Ray's socket paths must stay under the 107-byte AF_UNIX limit.
    temp = Path(tempfile.mkdtemp(prefix="trh", dir="/tmp"))
    # Every port the head binds is a free one: the test session's own Ray instance holds Ray's
    # fixed defaults (the dashboard agent's 52365 among them), and a head that cannot bind its
    # agent's port starts without it and never takes a job.
    port, dash, agent, agent_grpc, metrics, runtime_env, client = _free_ports(7)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
         f"--ray-client-server-port={client}",
         "--num-cpus=2", "--include-dashboard=true", f"--temp-dir={temp}",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 300
        probe = [str(BIN / "ray"), "job", "submit", "--address", address, "--", "true"]
        while True:  # ready once a trivial job runs: the job agent starts after the job API
            try:
                if subprocess.run(probe, env=env, capture_output=True,
                                  timeout=120).returncode == 0:
                    break
            except subprocess.TimeoutExpired:  # a loaded machine: try again until the deadline
                pass
            assert head.poll() is None, head.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "the local Ray head took no job within 300 s"
            time.sleep(2)
        yield env, address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


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
    # Without --storage the run would land in the job's throwaway copy of the working dir.
    cmd = [a for a in cmd if a not in ("--storage", str(storage))]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "inside this Ray job's copy of its working directory" in r.stdout + r.stderr
    # The client without the token is refused: auth is really on.
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    r = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=no_token,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    shutil.rmtree(data, ignore_errors=True)
