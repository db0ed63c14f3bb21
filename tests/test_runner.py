"""The sharded run loop: a run killed at any point resumes to the results of an uninterrupted one; parts of a run
(`--shard I/N`) that have nothing to compute are refused before a model loads."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import COMMAND_ARGS, KILLED_ARGS, one_line_error, rows, same_summary


@pytest.mark.slow
@pytest.mark.parametrize("command, kill_after", [("extract", 0), ("extract", 2), ("generate", 1), ("generate", 3)])
def test_sigkill_then_rerun_equals_uninterrupted_run(tiny, tmp_path, invoke, uninterrupted, command, kill_after):
    """SIGKILL once `kill_after` shards are on disk (0: once the run directory exists, before any shard)."""
    args = [command, "--model", tiny.model, "--data", tiny.data, *KILLED_ARGS, *COMMAND_ARGS[command]]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "evalmem", *map(str, args), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def reached():
        return len(list((out / "shards").glob("*.parquet"))) >= kill_after if kill_after else \
            (out / "shards").exists()

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


def test_part_with_no_shard_to_compute_is_refused(tiny, tmp_path, invoke):
    """8 examples in shards of 4 are 2 shards: a part 3/3 has none; refused before any model loads."""
    result = invoke("extract", "--model", tiny.model, "--data", tiny.data, "--limit", 8, "--shard-size", 4,
                    "--shard", "3/3", "--out", tmp_path / "r", code=2)
    one_line_error(result.output, "part 3/3 has no shard to compute", "2 shards")
    assert not (tmp_path / "r" / "manifest.json").exists()


def test_first_part_names_the_parts_still_missing(tiny, tmp_path, invoke):
    status = json.loads(invoke("extract", "--model", tiny.model, "--data", tiny.data, "--limit", 12, "--engine", "hf",
                               "--shard-size", 4, "--shard", "1/3", "--out", tmp_path / "r").stdout)
    assert status["complete"] is False and status["missing_parts"] == ["2/3", "3/3"]
