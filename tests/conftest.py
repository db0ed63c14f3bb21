"""Session fixtures: a tiny Llama with a locally trained tokenizer, fine-tuned (real TRL SFTTrainer)
until most of 32 KJV windows are memorized, plus 32 windows it never saw; the CLI in and out of
process. Nothing is downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PREFIX, SUFFIX = 50, 50


from evalmem.tiny import write_jsonl  # noqa: E402,F401  (used by the tests)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Tokenizer, base model, memorizing model and data (about a minute on 2 cores; see
    `evalmem.tiny.memorizing_setup`). EVALMEM_TEST_CACHE=DIR builds them once into DIR for later sessions."""
    from evalmem.tiny import memorizing_setup

    cache = os.environ.get("EVALMEM_TEST_CACHE")
    return memorizing_setup(Path(cache) if cache else tmp_path_factory.mktemp("tiny"), PREFIX + SUFFIX)


def run_cli(*args, check=True, **kwargs):
    """Run `python -m evalmem ARGS` in a subprocess (for exit codes, stderr and kill tests)."""
    proc = subprocess.run([sys.executable, "-m", "evalmem", *map(str, args)], capture_output=True, text=True,
                          **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"evalmem {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture
def cli():
    return run_cli


def invoke_cli(*args, code=0, group=None):
    """Run `evalmem ARGS` (or another click `group`) in this process, reusing the session's vLLM engine;
    check the exit code."""
    from click.testing import CliRunner

    from evalmem.cli import main

    group = group or main
    result = CliRunner().invoke(group, [str(a) for a in args])
    if result.exit_code != code:
        raise AssertionError(f"{group.name} {' '.join(map(str, args))}: exit {result.exit_code} != {code}\n"
                             f"{result.output[-3000:]}\n{result.exception!r}")
    return result


@pytest.fixture
def invoke():
    return invoke_cli


def write_run(path, ids, memorized, *, data_fingerprint="sha256:test-data", prefix_len=PREFIX, suffix_len=SUFFIX,
              model="model"):
    """A hand-built extraction run directory in `evalmem extract`'s format: the examples in `memorized`
    are exact matches (token accuracy 1), the others match their first 5 tokens (token accuracy 0.2)."""
    path = Path(path)
    path.mkdir(parents=True)
    hit = [i in memorized for i in ids]
    suffix = [list(range(suffix_len))] * len(ids)
    table = pa.table({
        "example_id": ids, "exact_match": hit, "match_len": [suffix_len if h else 5 for h in hit],
        "token_accuracy": [1.0 if h else 0.2 for h in hit], "edit_distance": [0.0 if h else 0.8 for h in hit],
        "approx_match": hit, "generated_ids": [s if h else [0] * suffix_len for s, h in zip(suffix, hit)],
        "suffix_ids": suffix, "prefix_ids": [list(range(prefix_len))] * len(ids)})
    pq.write_table(table, path / "results.parquet", write_page_checksum=True)  # as evalmem writes results
    settings = {"command": "extract", "model": model, "data": "data.jsonl", "data_fingerprint": data_fingerprint,
                "prefix_len": prefix_len, "suffix_len": suffix_len, "engine": "hf", "mode": "decode"}
    (path / "manifest.json").write_text(json.dumps({"settings": settings, "versions": {}}))
    n, exact = len(ids), sum(hit)
    (path / "summary.json").write_text(json.dumps({
        "model": model, "data": "data.jsonl", "n_examples": n, "prefix_len": prefix_len, "suffix_len": suffix_len,
        "engine": "hf", "mode": "decode", "exact_match_count": exact, "exact_match_rate": exact / n}))
    return str(path)


def write_features(path, ids, x, fingerprint="sha256:test-data"):
    """A hand-built `evalmem features` directory."""
    from evalmem.predict import DEFAULT_FEATURES

    path = Path(path)
    path.mkdir(parents=True)
    columns = {"example_id": ids, **{name: x[:, i] for i, name in enumerate(DEFAULT_FEATURES)},
               "min_k_logprob": -x[:, 0]}
    pq.write_table(pa.table(columns), path / "features.parquet")
    settings = {"command": "features", "data_fingerprint": fingerprint, "prefix_len": 50, "suffix_len": 50}
    (path / "manifest.json").write_text(json.dumps({"settings": settings, "versions": {}}))
    (path / "summary.json").write_text(json.dumps({"n_examples": len(ids)}))
    return str(path)


def flip_byte(path, column: str) -> None:
    """Damage a Parquet file under its valid footer: flip the last byte of `column`'s pages (page data, which
    the page CRC covers; not the page header's statistics)."""
    path = Path(path)
    meta = pq.read_metadata(path)
    chunk = meta.row_group(0).column(meta.schema.to_arrow_schema().get_field_index(column))
    damaged = bytearray(path.read_bytes())
    damaged[(chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size - 1] ^= 0xFF
    path.write_bytes(bytes(damaged))


@pytest.fixture(scope="session")
def tiny_runs(tiny, tmp_path_factory):
    """Real `evalmem extract --engine hf` runs of the tiny memorizing model and its base on `tiny.data`."""
    root = tmp_path_factory.mktemp("tiny_runs")
    runs = SimpleNamespace(model=str(root / "model"), base=str(root / "base"))
    for model, out in ((tiny.model, runs.model), (tiny.base, runs.base)):
        invoke_cli("extract", "--model", model, "--data", tiny.data, "--engine", "hf", "--out", out)
    return runs
