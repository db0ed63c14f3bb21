"""Crash safety: interrupted runs resume to the same results; damaged shards are recomputed."""

import json
import os
import resource
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from conftest import flip_byte


def rows(out):
    return pq.read_table(out / "results.parquet").to_pylist()


TIMING = {"seconds", "startup_seconds", "examples_per_second", "tokens_per_second", "new_tokens_per_second"}
KILLED_ARGS = ["--engine", "hf", "--batch-size", 1, "--shard-size", 2, "--limit", 12]  # 6 slow shards
COMMAND_ARGS = {"extract": [], "generate": ["--prefix-len", 50, "--max-new-tokens", 50]}


def same_summary(out, reference):
    """summary.json of two runs, equal but for timings."""
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    return {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    """Each command's run of the kill tests' job, start to end (in process)."""
    from conftest import invoke_cli

    root = tmp_path_factory.mktemp("uninterrupted")
    for command, args in COMMAND_ARGS.items():
        invoke_cli(command, "--model", tiny.model, "--data", tiny.data, *KILLED_ARGS, *args, "--out", root / command)
    return root


@pytest.mark.parametrize("command, kill_after", [("extract", 0), ("extract", 2), ("generate", 1), ("generate", 3)])
def test_sigkill_then_rerun_equals_uninterrupted_run(tiny, tmp_path, invoke, uninterrupted, command, kill_after):
    """SIGKILL once `kill_after` shards are on disk (0: once the run directory exists, before any shard)."""
    args = [command, "--model", tiny.model, "--data", tiny.data, *KILLED_ARGS, *COMMAND_ARGS[command]]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "evalmem", *map(str, args), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def reached():
        return len(list((out / "shards").glob("*.parquet"))) >= kill_after if kill_after else \
            (out / "manifest.json").exists()

    deadline = time.time() + 180
    while not reached() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists() and not (out / "results.parquet").exists(), \
        "a killed run must not leave results that look complete"
    assert kill_after <= len(list((out / "shards").glob("*.parquet"))) < 6
    invoke(*args, "--out", out)
    assert rows(out) == rows(uninterrupted / command)
    assert same_summary(out, uninterrupted / command)


@pytest.mark.parametrize("fails", ["shard", "results"])
def test_disk_full_is_a_clear_error_and_leaves_nothing_complete(tiny, tmp_path, invoke, uninterrupted, fails):
    """A real EFBIG from the OS (RLIMIT_FSIZE, SIGXFSZ ignored) while writing a shard or results.parquet."""
    shards = sorted((uninterrupted / "extract" / "shards").glob("*.parquet"))
    limit = 1024 if fails == "shard" else max(f.stat().st_size for f in shards) + 1024
    args = ["extract", "--model", tiny.model, "--data", tiny.data, *KILLED_ARGS, "--out", tmp_path / "run"]

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    proc = subprocess.run([sys.executable, "-m", "evalmem", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=small_disk)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    failed = "shards/00000.parquet" if fails == "shard" else "results.parquet"
    assert lines[-1].startswith("Error: cannot write") and failed in lines[-1] and "File too large" in lines[-1] \
        and "Traceback" not in proc.stderr, proc.stderr  # (lines before it: transformers' loading bar)
    run = tmp_path / "run"
    assert not (run / "summary.json").exists() and not (run / "results.parquet").exists()
    assert not list(run.rglob(".*.tmp")), "no half-written file is left behind"
    assert len(list((run / "shards").glob("*.parquet"))) == (0 if fails == "shard" else 6)
    invoke(*args)
    assert rows(run) == rows(uninterrupted / "extract")


def test_missing_and_damaged_shards_are_recomputed(tiny, tmp_path, invoke):
    args = ["extract", "--model", tiny.model, "--data", tiny.data, "--shard-size", 16, "--out", tmp_path]
    invoke(*args)
    reference = rows(tmp_path)
    for name in ("results.parquet", "summary.json"):
        (tmp_path / name).unlink()
    shard = [tmp_path / "shards" / f"{i:05d}.parquet" for i in range(4)]
    shard[1].unlink()
    shard[2].write_bytes(shard[2].read_bytes()[:200])  # truncated
    flip_byte(shard[3], "generated_ids")  # a valid footer over a damaged data page
    before = [s.stat().st_mtime_ns for s in (shard[0], shard[3])]
    invoke(*args)
    assert rows(tmp_path) == reference
    after = [s.stat().st_mtime_ns for s in (shard[0], shard[3])]
    assert after[0] == before[0] and after[1] != before[1], "valid shards are kept, the damaged one recomputed"


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
