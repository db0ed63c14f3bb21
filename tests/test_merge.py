"""Scale-out: `--shard I/N` parts run as separate invocations, into one directory or merged from several
(`evalmem merge`), equal one unsharded run; missing, damaged or foreign parts are named and refused."""

import json

import pyarrow.parquet as pq
import pytest

TIMING = ("seconds", "startup_seconds", "examples_per_second", "tokens_per_second", "new_tokens_per_second")


def result(out, name="results.parquet"):
    """Rows, summary without timings, and manifest settings of a finished run."""
    summary = json.loads((out / "summary.json").read_text())
    return (pq.read_table(out / name).to_pylist(), {k: v for k, v in summary.items() if k not in TIMING},
            json.loads((out / "manifest.json").read_text())["settings"])


@pytest.fixture(scope="module")
def extract_args(tiny):
    return ["extract", "--model", tiny.model, "--data", tiny.data, "--shard-size", 8]  # 8 shards, 3 parts


def test_extract_parts_into_one_directory_equal_unsharded_run(tiny, tmp_path, invoke, extract_args):
    invoke(*extract_args, "--out", tmp_path / "whole")
    out = tmp_path / "parts"
    for i in (1, 3):
        status = json.loads(invoke(*extract_args, "--shard", f"{i}/3", "--out", out).stdout)
        assert not (out / "summary.json").exists() and not (out / "results.parquet").exists()
    assert status["complete"] is False and status["missing_parts"] == ["2/3"]
    assert status["missing_shards"] == [1, 4, 7]
    invoke(*extract_args, "--shard", "2/3", "--out", out)  # the last part writes the results
    assert result(out) == result(tmp_path / "whole")
    assert result(out)[1]["exact_match_count"] > 0
    invoke(*extract_args, "--shard", "2/3", "--out", out, "--suffix-len", 40, code=2)  # other settings: refused


def test_extract_parts_in_separate_directories_merge(tiny, tmp_path, invoke, extract_args):
    invoke(*extract_args, "--out", tmp_path / "whole")
    parts = [tmp_path / f"part{i}" for i in (1, 2, 3)]
    for i, part in enumerate(parts, 1):
        invoke(*extract_args, "--shard", f"{i}/3", "--out", part)
    out = tmp_path / "merged"

    result_missing = invoke("merge", out, parts[0], parts[2], code=2)
    message = result_missing.output.strip()
    assert "\n" not in message and "00001 (missing)" in message and "part 2/3" in message, message
    damaged = parts[1] / "shards" / "00004.parquet"  # the first merge copied parts 1 and 3: now part 2
    intact = damaged.read_bytes()
    damaged.write_bytes(intact[:100])
    message = invoke("merge", out, *parts, code=2).output
    assert f"00004 (damaged in {parts[1]})" in message and "part 2/3" in message, message
    assert "00001" not in message
    assert not (out / "summary.json").exists() and not (out / "results.parquet").exists()

    damaged.write_bytes(intact)
    summary = json.loads(invoke("merge", out, *parts).stdout)
    assert result(out) == result(tmp_path / "whole")
    assert summary["n_examples"] == 64

    other = tmp_path / "other"
    invoke(*extract_args, "--shard", "1/3", "--suffix-len", 40, "--out", other)
    message = invoke("merge", tmp_path / "mixed", parts[0], other, code=2).output
    assert "other settings" in message and "suffix_len" in message


def test_generate_and_features_parts_equal_unsharded_runs(tiny, tmp_path, invoke):
    generate = ["generate", "--model", tiny.model, "--data", tiny.data, "--limit", 20, "--shard-size", 4,
                "--max-new-tokens", 20]
    features = ["features", "--teacher", tiny.model, "--baseline", tiny.base, "--data", tiny.data, "--limit", 20,
                "--shard-size", 4]
    for args, name in ((generate, "results.parquet"), (features, "features.parquet")):
        invoke(*args, "--out", tmp_path / args[0] / "whole")
        parts = [tmp_path / args[0] / str(i) for i in (1, 2, 3)]
        for i, part in enumerate(parts, 1):
            invoke(*args, "--shard", f"{i}/3", "--out", part)
        invoke("merge", parts[0], parts[1], parts[2])  # into the first part's directory
        assert result(parts[0], name) == result(tmp_path / args[0] / "whole", name)


@pytest.mark.parametrize("value", ["0/3", "4/3", "a/b", "3", "1/0"])
def test_bad_shard_is_one_line_error(tiny, tmp_path, invoke, extract_args, value):
    message = invoke(*extract_args, "--shard", value, "--out", tmp_path / "x", code=2).output.strip()
    assert message.startswith("Error:") and "\n" not in message and "--shard must be I/N" in message, message
    assert not (tmp_path / "x").exists()


def test_merge_of_something_that_is_no_run(tmp_path, invoke):
    message = invoke("merge", tmp_path / "out", tmp_path / "nowhere", code=2).output
    assert "no such run directory" in message
    (tmp_path / "empty").mkdir()
    assert "not a run directory" in invoke("merge", tmp_path / "empty", code=2).output
