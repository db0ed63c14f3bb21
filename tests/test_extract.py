"""`evalmem extract` end to end: vLLM against the transformers reference, the result contract."""

import json

import pyarrow.parquet as pq
import pytest

from conftest import PREFIX, SUFFIX

RESULT_COLUMNS = {"example_id", "exact_match", "match_len", "token_accuracy", "edit_distance", "approx_match",
                  "generated_ids", "suffix_ids"}
SUMMARY_KEYS = {"model", "data", "n_examples", "prefix_len", "suffix_len", "engine", "mode", "exact_match_count",
                "exact_match_rate", "approx_match_rate", "mean_token_accuracy", "seconds", "tokens_per_second"}


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """The same extraction with the vLLM engine and with the transformers reference."""
    from conftest import invoke_cli

    out = tmp_path_factory.mktemp("extract")
    for engine in ("hf", "vllm"):
        invoke_cli("extract", "--model", tiny.model, "--data", tiny.data, "--out", out / engine,
                   "--engine", engine, "--shard-size", 24)
    return {e: pq.read_table(out / e / "results.parquet").to_pylist() for e in ("hf", "vllm")} | {"dir": out}


def test_vllm_equals_transformers_greedy(runs):
    vllm, hf = runs["vllm"], runs["hf"]
    assert [r["example_id"] for r in vllm] == [r["example_id"] for r in hf]
    assert [r["generated_ids"] for r in vllm] == [r["generated_ids"] for r in hf]
    assert [r["exact_match"] for r in vllm] == [r["exact_match"] for r in hf]
    memorized = sum(r["exact_match"] for r in vllm)
    assert 0 < memorized < len(vllm), "the fixture must give memorized and non-memorized examples"


def test_trained_windows_memorized_unseen_not(runs, tiny):
    rows = {r["example_id"]: r for r in runs["vllm"]}
    trained = [rows[f"w{i}"]["exact_match"] for i in range(len(tiny.trained))]
    unseen = [rows[f"w{i}"]["exact_match"] for i in range(len(tiny.trained), len(tiny.trained) + len(tiny.unseen))]
    assert sum(trained) >= len(trained) // 2
    assert sum(unseen) == 0


def test_result_contract(runs, tiny):
    out = runs["dir"] / "vllm"
    table = pq.read_table(out / "results.parquet")
    assert RESULT_COLUMNS <= set(table.column_names)
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    rows = runs["vllm"]
    assert summary["n_examples"] == len(rows) == len(tiny.trained) + len(tiny.unseen)
    assert summary["exact_match_count"] == sum(r["exact_match"] for r in rows)
    assert summary["exact_match_rate"] == pytest.approx(summary["exact_match_count"] / len(rows))
    assert (summary["prefix_len"], summary["suffix_len"], summary["engine"]) == (PREFIX, SUFFIX, "vllm")
    windows = tiny.trained + tiny.unseen
    for row, window in zip(rows, windows):
        assert row["suffix_ids"] == window[PREFIX:PREFIX + SUFFIX]
        assert row["exact_match"] == (row["generated_ids"] == row["suffix_ids"])
        assert row["exact_match"] == (row["match_len"] == SUFFIX)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["data_fingerprint"].startswith("sha256:")
    assert {"vllm", "torch", "transformers"} <= set(manifest["versions"]) | {"vllm"}


def test_text_input_is_tokenized_like_the_model(tiny, tmp_path, invoke):
    """A .txt file (one example per line) gives the same windows as its pre-tokenized form."""
    texts = [tiny.tokenizer.decode(w) for w in tiny.trained[:6]]
    assert all("\n" not in t for t in texts)
    (tmp_path / "d.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    invoke("extract", "--model", tiny.model, "--data", tmp_path / "d.txt", "--out", tmp_path / "run")
    rows = pq.read_table(tmp_path / "run" / "results.parquet").to_pylist()
    assert [r["example_id"] for r in rows] == list(range(6))
    for row, text in zip(rows, texts):
        ids = tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert row["suffix_ids"] == ids[PREFIX:PREFIX + SUFFIX]


def test_parquet_text_input_and_row_index_ids(tiny, tmp_path, invoke):
    import pyarrow as pa

    texts = [tiny.tokenizer.decode(w) for w in tiny.unseen[:5]]
    pq.write_table(pa.table({"body": texts}), tmp_path / "d.parquet")
    result = invoke("extract", "--model", tiny.model, "--data", tmp_path / "d.parquet", "--text-column", "body",
                    "--limit", 3, "--out", tmp_path / "run")
    summary = json.loads(result.stdout)
    assert summary["n_examples"] == 3 and summary["n_input_rows"] == 3
    assert pq.read_table(tmp_path / "run" / "results.parquet")["example_id"].to_pylist() == [0, 1, 2]
