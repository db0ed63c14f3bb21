"""Result directories: atomic writes under a full disk, damaged shards recomputed (also after a run finished),
manifests that lock settings only once a shard exists, and the one reader of result tables."""

import json
import resource
import signal
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evalmem.errors import InputError
from evalmem.store import read_results
from helpers import KILLED_ARGS, flip_byte, rows


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


def test_failed_model_load_locks_nothing(tiny, tmp_path, invoke):
    """A run that never wrote a shard (its model did not load) leaves no manifest: the corrected rerun runs."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny.model, model)
    weights = model / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:1000])
    args = ["extract", "--model", model, "--data", tiny.data, "--limit", 4, "--engine", "hf", "--out", tmp_path / "r"]
    assert "cannot load model" in invoke(*args, code=2).output
    assert not (tmp_path / "r" / "manifest.json").exists()
    weights.write_bytes(intact)
    invoke(*args)
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["n_examples"] == 4


def test_shard_damaged_after_the_run_finished_is_recomputed(tiny, tmp_path, invoke):
    args = ["extract", "--model", tiny.model, "--data", tiny.data, "--engine", "hf", "--shard-size", 16,
            "--out", tmp_path]
    invoke(*args)
    reference = rows(tmp_path)
    shard = tmp_path / "shards" / "00001.parquet"
    shard.write_bytes(shard.read_bytes()[:300])
    invoke(*args)
    assert pq.read_metadata(shard).num_rows == 16 and rows(tmp_path) == reference


@pytest.mark.parametrize("writer", ["pandas", "int32 ids", "categorical ids"])
def test_result_tables_written_back_by_other_tools_read_the_same(tmp_path, writer):
    ids = [f"e{i}" for i in range(4)]
    path = tmp_path / "results.parquet"
    frame = pd.DataFrame({"example_id": ids, "exact_match": [True, False, True, False], "match_len": [50, 3, 50, 0]})
    if writer == "pandas":
        frame.to_parquet(path, index=False)  # pandas writes large_string ids
    elif writer == "int32 ids":
        pq.write_table(pa.table({"example_id": pa.array(range(4), pa.int32()), "exact_match": frame.exact_match,
                                 "match_len": frame.match_len}), path)
    else:
        frame.astype({"example_id": "category"}).to_parquet(path, index=False)
    table = read_results(path, ["example_id", "exact_match", "match_len"])
    assert table["example_id"].type in (pa.string(), pa.int64())
    assert table["exact_match"].to_pylist() == [True, False, True, False]


def test_result_table_with_duplicated_ids_is_refused(tmp_path):
    pq.write_table(pa.table({"example_id": ["a", "a"], "exact_match": [True, False]}), tmp_path / "r.parquet")
    with pytest.raises(InputError, match="duplicated example_id"):
        read_results(tmp_path / "r.parquet", ["example_id", "exact_match"])


def test_token_id_lists_are_read_and_other_lists_refused(tmp_path):
    import pandas as pd

    path = tmp_path / "r.parquet"
    pd.DataFrame({"example_id": ["a", "b"], "suffix_ids": [[1, 2], [3]], "generated_ids": [[1, 2], None]}).to_parquet(
        path, index=False)
    table = read_results(path, ["example_id", "suffix_ids", "generated_ids"])
    assert table["suffix_ids"].to_pylist() == [[1, 2], [3]] and table["generated_ids"].to_pylist()[1] is None
    pq.write_table(pa.table({"example_id": ["a"], "prefix_ids": [["x"]]}), path)
    with pytest.raises(InputError, match="'prefix_ids' .* not token ids"):
        read_results(path, ["example_id", "prefix_ids"])
