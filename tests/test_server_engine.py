"""`--engine server`: a real vLLM OpenAI-compatible server (serve_configs/tiny-cpu.yaml) on 127.0.0.1, started
once for this module (about 30 s on 2 cores) and once more after the test that kills it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import free_port

CONFIGS = Path(__file__).parent.parent / "serve_configs"


class Server:
    """`python -m vllm.entrypoints.openai.api_server --config serve_configs/tiny-cpu.yaml --model M --port P`."""

    def __init__(self, model: str, log: Path, *args):
        self.model, self.log, self.args, self.proc, self.url = model, log, args, None, None

    def start(self, timeout: float = 300) -> None:
        port = free_port()
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--config", CONFIGS / "tiny-cpu.yaml",
               "--model", self.model, "--port", port, *self.args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(list(map(str, cmd)), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.url = f"http://127.0.0.1:{port}/v1"
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    return
            except OSError:
                time.sleep(1)
        self.kill()
        raise RuntimeError(f"the vLLM server did not answer /health in {timeout} s")

    def kill(self) -> None:
        """SIGKILL the server and its engine processes."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def server(tiny, lora, tmp_path_factory):
    """The memorizing model, and the LoRA adapter on it as the module `memorizer`."""
    server = Server(tiny.model, tmp_path_factory.mktemp("server") / "server.log", "--enable-lora", "--max-lora-rank",
                    16, "--lora-modules", f"memorizer={lora.adapter}")
    server.start()
    yield server
    server.kill()


def rows(out):
    return pq.read_table(Path(out) / "results.parquet").to_pylist()


def served(server, *args):
    return ["--engine", "server", "--base-url", server.url, *args]


def test_serve_configs_parse_with_vllm():
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    for config in sorted(CONFIGS.glob("*.yaml")):
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--config", str(config)])
        assert args.model and args.max_model_len and args.dtype, config
    assert {"teacher-gpu.yaml", "student-gpu.yaml", "tiny-cpu.yaml"} <= {c.name for c in CONFIGS.glob("*.yaml")}


def test_server_extraction_equals_offline(server, tiny, tiny_runs, tmp_path, invoke):
    out = tmp_path / "served"
    summary = json.loads(invoke("extract", "--model", tiny.model, "--data", tiny.data, "--out", out,
                                *served(server, "--shard-size", 24)).stdout)
    assert rows(out) == rows(tiny_runs.model)
    assert summary["engine"] == "server" and summary["server"]["served_model"] == tiny.model
    settings = json.loads((out / "manifest.json").read_text())["settings"]
    assert settings["engine"] == "server" and server.url not in json.dumps(settings)


def test_server_generation_equals_offline(server, tiny, tmp_path, invoke):
    args = ["generate", "--model", tiny.model, "--data", tiny.data, "--limit", 8, "--prefix-len", 50,
            "--max-new-tokens", 50]
    invoke(*args, "--out", tmp_path / "hf", "--engine", "hf")
    invoke(*args, "--out", tmp_path / "served", *served(server, "--concurrency", 3))
    assert rows(tmp_path / "served") == rows(tmp_path / "hf")


def test_other_model_or_no_server_is_refused(server, tiny, tmp_path, invoke):
    result = invoke("extract", "--model", tiny.base, "--data", tiny.data, "--out", tmp_path / "a",
                    *served(server), code=2)
    assert f"serves {tiny.model}" in result.output and f"not --model {tiny.base}" in result.output
    closed = f"http://127.0.0.1:{free_port()}/v1"
    result = invoke("extract", "--model", tiny.model, "--data", tiny.data, "--out", tmp_path / "b", "--engine",
                    "server", "--base-url", closed, code=2)
    assert result.output.startswith(f"Error: cannot reach the vLLM server at {closed}") \
        and result.output.count("\n") == 1


def test_server_applies_the_adapter_it_serves(server, tiny, lora, tmp_path, invoke):
    """An adapter folder as --model (or --adapter beside its base) is the LoRA module served on that base: the
    rows of peft in transformers. An adapter it does not serve, or one on lm_head, is refused in one line."""
    out = tmp_path / "served"
    summary = json.loads(invoke("extract", "--model", lora.adapter, "--data", tiny.data, "--out", out,
                                *served(server)).stdout)
    invoke("extract", "--model", lora.adapter, "--data", tiny.data, "--engine", "hf", "--out", tmp_path / "hf")
    assert rows(out) == rows(tmp_path / "hf") and summary["server"]["served_model"] == "memorizer"
    copy = shutil.copytree(lora.adapter, tmp_path / "copy")
    result = invoke("extract", "--model", tiny.model, "--adapter", copy, "--data", tiny.data, "--out", tmp_path / "a",
                    *served(server), code=2)
    assert f"does not serve the adapter {copy} on" in result.output and result.output.count("\n") == 1
    result = invoke("extract", "--model", lora.head, "--data", tiny.data, "--out", tmp_path / "b", *served(server),
                    code=2)
    assert "the vLLM server does not apply lm_head of adapter" in result.output and result.output.count("\n") == 1


def test_server_killed_mid_run_then_resumed(server, tiny, tiny_runs, tmp_path, invoke):
    """The server dies after a few shards: the command stops with one line and a non-zero exit; rerun against
    a restarted server (on another port) it finishes with every row once, equal to the offline results."""
    out = tmp_path / "run"
    args = ["extract", "--model", tiny.model, "--data", tiny.data, "--out", out, "--shard-size", 4]
    proc = subprocess.Popen([sys.executable, "-m", "evalmem", *map(str, args),
                             *map(str, served(server, "--concurrency", 1))], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(list((out / "shards").glob("*.parquet"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    server.kill()
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: lost the vLLM server at"), stderr
    assert not (out / "summary.json").exists() and not (out / "results.parquet").exists()
    assert 2 <= len(list((out / "shards").glob("*.parquet"))) < 16

    server.start()
    invoke(*args, *served(server))
    assert rows(out) == rows(tiny_runs.model)
