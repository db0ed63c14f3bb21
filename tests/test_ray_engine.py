"""`--engine ray` (Ray Data + vLLM replicas) on a local Ray cluster that this module starts (`ray start --head`,
2 CPUs, token authentication with a token of its own): extract and generate equal `--engine vllm` row for row, a
run whose driver is killed mid-run resumes to the same rows, and a RAY_ADDRESS with no cluster is refused in one
line. Every Ray Data job starts its own vLLM replica (30-50 s on 2 cores), so the tests are few and small."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import TIMING, free_port, invoke_cli, one_line_error, rows, run_cli

pytestmark = pytest.mark.slow
GENERATE = ["--prefix-len", 50, "--max-new-tokens", 50]
JOB = ["--limit", 16]


class Cluster:
    """`ray start --head --block` in its own session; stopped by signalling that session only (`ray stop` would
    stop every Ray instance of this user on the machine)."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.env = {"RAY_ADDRESS": f"127.0.0.1:{self.port}", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        self.proc = None

    def start(self, timeout: float = 180) -> None:
        ray = Path(sys.executable).with_name("ray")
        cmd = [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={self.port}",
               f"--ray-client-server-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", "--include-dashboard=false", "--num-cpus=2",
               "--disable-usage-stats", f"--temp-dir={self.root}"]  # a short path: Ray's sockets live under it
        log = self.root / "ray-start.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(list(map(str, cmd)), stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.env}, start_new_session=True)
        deadline = time.time() + timeout
        while "Ray runtime started" not in log.read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"ray start failed: {log.read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=30)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        self.proc = None


@pytest.fixture(scope="module")
def cluster():
    """The cluster, and RAY_ADDRESS, RAY_AUTH_MODE and RAY_AUTH_TOKEN naming it for this process and its children."""
    root = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    cluster = Cluster(root)
    saved = {k: os.environ.get(k) for k in cluster.env}
    os.environ.update(cluster.env)
    cluster.start()
    yield cluster
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()
    cluster.stop()
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def vllm_runs(tiny, tmp_path_factory):
    """The module's extract and generate jobs with `--engine vllm` (in process), the reference."""
    root = tmp_path_factory.mktemp("vllm_runs")
    for command, args in (("extract", []), ("generate", GENERATE)):
        invoke_job(command, tiny, *args, "--engine", "vllm", "--out", root / command)
    return root


def invoke_job(command, tiny, *args):
    return invoke_cli(command, "--model", tiny.model, "--data", tiny.data, *JOB, *args)


def ray_job(command, tiny, *args):
    """The job with `--engine ray` in a fresh process: Ray reads RAY_AUTH_* once, when first imported (vLLM
    imports it in this one before the cluster exists)."""
    return run_cli(command, "--model", tiny.model, "--data", tiny.data, *JOB, *args, "--engine", "ray")


def summary(out) -> dict:
    return {k: v for k, v in json.loads((out / "summary.json").read_text()).items() if k not in TIMING | {"engine"}}


@pytest.mark.parametrize("command, args", [("extract", []), ("generate", GENERATE)])
def test_ray_equals_vllm_row_for_row(cluster, tiny, vllm_runs, tmp_path, command, args):
    ray_job(command, tiny, *args, "--out", tmp_path / "ray")
    assert rows(tmp_path / "ray") == rows(vllm_runs / command)
    assert summary(tmp_path / "ray") == summary(vllm_runs / command)
    if command == "extract":
        assert sum(r["exact_match"] for r in rows(tmp_path / "ray")) >= 12  # the trained windows: memorized


def test_driver_killed_mid_run_then_resumed(cluster, tiny, vllm_runs, tmp_path):
    """SIGKILL the driver (`evalmem extract --engine ray`, the Ray job) once its first of two shards is on disk;
    the rerun joins the same cluster, computes the other shard and gives the uninterrupted rows."""
    out, sharded = tmp_path / "run", ["--shard-size", 8, "--out", tmp_path / "run"]
    args = ["extract", "--model", tiny.model, "--data", tiny.data, *JOB, *sharded, "--engine", "ray"]
    proc = subprocess.Popen([sys.executable, "-m", "evalmem", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not list((out / "shards").glob("*.parquet")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    assert len(list((out / "shards").glob("*.parquet"))) == 1
    assert not (out / "summary.json").exists() and not (out / "results.parquet").exists()
    ray_job("extract", tiny, *sharded)
    assert rows(out) == rows(vllm_runs / "extract")


def test_ray_address_with_no_cluster_is_refused(tiny, tmp_path, cli):
    address = f"127.0.0.1:{free_port()}"
    proc = cli("extract", "--model", tiny.model, "--data", tiny.data, *JOB, "--engine", "ray", "--out", tmp_path / "r",
               check=False, env={**os.environ, "RAY_ADDRESS": address})
    assert proc.returncode == 2
    one_line_error(proc.stderr, f"no Ray cluster at RAY_ADDRESS={address}", "ray start --head")
