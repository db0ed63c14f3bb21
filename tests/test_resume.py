"""Crash safety: interrupted runs resume to the same results; damaged shards are recomputed."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest


def rows(out):
    return pq.read_table(out / "results.parquet").to_pylist()


def test_kill_9_then_rerun_equals_uninterrupted_run(tiny, tmp_path, cli):
    args = ["extract", "--model", tiny.model, "--data", tiny.data, "--engine", "hf", "--batch-size", 1,
            "--shard-size", 4, "--limit", 24]
    cli(*args, "--out", tmp_path / "whole")
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "evalmem", *map(str, args), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list((out / "shards").glob("*.parquet"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists() and not (out / "results.parquet").exists(), \
        "a killed run must not leave results that look complete"
    assert 2 <= len(list((out / "shards").glob("*.parquet"))) < 6
    cli(*args, "--out", out)
    assert rows(out) == rows(tmp_path / "whole")
    summary = json.loads((out / "summary.json").read_text())
    assert summary == {**json.loads((tmp_path / "whole" / "summary.json").read_text()),
                       **{k: summary[k] for k in ("seconds", "startup_seconds", "examples_per_second",
                                                  "tokens_per_second")}}


def test_missing_and_damaged_shards_are_recomputed(tiny, tmp_path, invoke):
    args = ["extract", "--model", tiny.model, "--data", tiny.data, "--shard-size", 16, "--out", tmp_path]
    invoke(*args)
    reference = rows(tmp_path)
    for name in ("results.parquet", "summary.json"):
        (tmp_path / name).unlink()
    (tmp_path / "shards" / "00001.parquet").unlink()
    damaged = tmp_path / "shards" / "00002.parquet"
    damaged.write_bytes(damaged.read_bytes()[:200])  # truncated
    before = (tmp_path / "shards" / "00000.parquet").stat().st_mtime_ns
    invoke(*args)
    assert rows(tmp_path) == reference
    assert (tmp_path / "shards" / "00000.parquet").stat().st_mtime_ns == before, "valid shards are kept"


def test_rerun_of_complete_run_does_no_work(tiny, tmp_path, invoke):
    args = ["extract", "--model", tiny.model, "--data", tiny.data, "--limit", 8, "--out", tmp_path]
    first = json.loads(invoke(*args).stdout)
    mtime = (tmp_path / "results.parquet").stat().st_mtime_ns
    assert json.loads(invoke(*args).stdout) == first
    assert (tmp_path / "results.parquet").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("change", [["--suffix-len", 40], ["--limit", 4], ["--engine", "hf"]])
def test_resuming_with_other_settings_is_refused(tiny, tmp_path, invoke, change):
    base = ["extract", "--model", tiny.model, "--data", tiny.data, "--limit", 8, "--out", tmp_path]
    invoke(*base)
    result = invoke(*base, *change, code=2)
    assert "other settings" in result.output and result.output.count("\n") == 1
