"""`evalmem generate`: the hard-label corpus from the tiny memorizing model (vLLM), checked against
transformers greedy decoding, seeded sampling, resuming and bad input."""

from __future__ import annotations

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
                                           (["--temperature", -1], "--temperature must be >= 0"),
                                           (["--top-p", 0], "--top-p in (0, 1]")])
def test_bad_generate_input(tiny, tmp_path, invoke, args, message):
    result = invoke("generate", "--model", tiny.model, "--data", tiny.data, "--out", tmp_path / "x", *args, code=2)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], result.output
