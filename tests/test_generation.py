"""`evalmem generate`: the hard-label corpus from the tiny memorizing model (vLLM), checked against
transformers greedy decoding, seeded sampling, resuming and bad input."""

from __future__ import annotations

import json

import datasets
import pyarrow.parquet as pq
import pytest


def generate(invoke, tiny, out, *args, code=0):
    return invoke("generate", "--model", tiny.model, "--data", tiny.data, "--limit", 16, "--prefix-len", 50,
                  "--max-new-tokens", 50, "--out", out, *args, code=code)


def rows(out):
    """The corpus as `datasets` loads it, as plain lists."""
    return datasets.load_dataset("parquet", data_files=str(out / "results.parquet"), split="train").to_dict()


def test_generate_equals_transformers_greedy(tiny, tmp_path, invoke):
    generate(invoke, tiny, tmp_path / "vllm")
    generate(invoke, tiny, tmp_path / "hf", "--engine", "hf")
    fast, reference = rows(tmp_path / "vllm"), rows(tmp_path / "hf")
    assert fast["example_id"] == reference["example_id"] == [f"w{i}" for i in range(16)]
    assert fast["input_ids"] == reference["input_ids"]
    windows = tiny.trained[:16]
    assert [r[:50] for r in fast["input_ids"]] == [w[:50] for w in windows]
    assert all(len(r) == 100 for r in fast["input_ids"])
    assert fast["text"] == tiny.tokenizer.batch_decode(fast["input_ids"])
    # the model memorized these windows: its greedy continuations are mostly the true ones
    assert sum(r == w for r, w in zip(fast["input_ids"], windows)) >= 12


def test_seeded_sampling_is_reproducible(tiny, tmp_path, invoke):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        generate(invoke, tiny, tmp_path / name, "--temperature", 1.5, "--seed", seed)
    a, b, c = (rows(tmp_path / name)["input_ids"] for name in "abc")
    assert a == b
    assert a != c


def test_generate_resumes_a_damaged_run(tiny, tmp_path, invoke):
    out = tmp_path / "corpus"
    generate(invoke, tiny, out, "--shard-size", 4)
    first = pq.read_table(out / "results.parquet").to_pydict()
    for name in ("summary.json", "results.parquet", "shards/00002.parquet"):
        (out / name).unlink()
    (out / "shards" / "00001.parquet").write_bytes(b"truncated")
    generate(invoke, tiny, out, "--shard-size", 4)
    assert pq.read_table(out / "results.parquet").to_pydict() == first
    result = generate(invoke, tiny, out, "--shard-size", 4, "--temperature", 1.0, code=2)
    assert "other settings" in result.output


@pytest.mark.parametrize("args, message", [(["--max-new-tokens", 500], "exceeds the model's context"),
                                           (["--temperature", -1], "Invalid value for '--temperature'"),
                                           (["--temperature", "nan"], "--temperature must be a finite number"),
                                           (["--top-p", 0], "Invalid value for '--top-p'")])
def test_bad_generate_input(tiny, tmp_path, invoke, args, message):
    result = invoke("generate", "--model", tiny.model, "--data", tiny.data, "--out", tmp_path / "x", *args, code=2)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], result.output


def test_generate_needs_only_the_prefix(tiny, tmp_path, invoke):
    """Continuing a 16-token prefix by 24 tokens works on 32-token examples (shorter than prefix + new tokens)."""
    data = tmp_path / "short.jsonl"
    from helpers import write_jsonl

    write_jsonl(data, [{"id": f"s{i}", "input_ids": w[:32]} for i, w in enumerate(tiny.trained[:4])]
                + [{"id": "tiny", "input_ids": tiny.trained[5][:10]}])
    summary = json.loads(invoke("generate", "--model", tiny.model, "--data", data, "--prefix-len", 16,
                                "--max-new-tokens", 24, "--out", tmp_path / "c").stdout)
    assert (summary["n_examples"], summary["n_skipped_short"]) == (4, 1)
    assert all(len(r) == 40 for r in rows(tmp_path / "c")["input_ids"])
