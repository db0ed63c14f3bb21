"""Bad input: a one-line error on stderr, exit code 2, no traceback, nothing that looks complete."""

import json

import pytest

from conftest import write_jsonl


def check_refused(result, out, *words):
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert message.startswith("Error:") and "\n" not in message and "Traceback" not in message, message
    for word in words:
        assert word in message, message
    assert not (out / "summary.json").exists() and not (out / "results.parquet").exists()


@pytest.fixture
def extract(tiny, tmp_path, invoke):
    def run(*args, data=None, model=None, code=2, out="out"):
        out = tmp_path / out
        result = invoke("extract", "--model", model or tiny.model, "--data", data or tiny.data, "--out", out,
                        *args, code=code)
        return result, out
    return run


def test_missing_file(extract, tmp_path):
    check_refused(*extract(data=tmp_path / "nope.jsonl"), "no such data file")


def test_missing_hub_dataset(extract):
    check_refused(*extract(data="no-such-org/no-such-dataset"), "cannot load data")


def test_unknown_text_column(extract, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"body": "x"}])
    check_refused(*extract("--text-column", "content", data=data), "no column 'content'", "body")


def test_empty_input(extract, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    check_refused(*extract(data=tmp_path / "empty.txt"), "no examples")


def test_non_utf8_text(extract, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("In the beginning God créated\n".encode("latin-1"))
    check_refused(*extract(data=tmp_path / "latin1.txt"), "not valid UTF-8")


def test_non_text_values_in_text_column(extract, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": 5}, {"text": 7}])
    check_refused(*extract(data=data), "non-text")


def test_token_ids_out_of_vocabulary(extract, tiny, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"input_ids": [10**6] * 100}])
    check_refused(*extract(data=data), "vocabulary")


def test_duplicated_ids(extract, tiny, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": 1, "input_ids": tiny.trained[0]}] * 2)
    check_refused(*extract(data=data), "duplicated")


@pytest.mark.parametrize("args,words", [
    (["--prefix-len", 0], ["--prefix-len must be positive"]),
    (["--suffix-len", -5], ["--suffix-len must be positive"]),
    (["--prefix-len", 400, "--suffix-len", 200], ["exceeds the model's context of 512"]),
])
def test_bad_lengths(extract, args, words):
    check_refused(*extract(*args), *words)


def test_model_folder_that_does_not_load(extract, tmp_path):
    (tmp_path / "broken").mkdir()
    check_refused(*extract(model=tmp_path / "broken"), "cannot load model")
    (tmp_path / "broken" / "config.json").write_text("{not json")
    check_refused(*extract(model=tmp_path / "broken"), "cannot load model")


def test_short_examples_are_skipped_and_counted_or_refused_with_strict(extract, tiny, tmp_path):
    rows = [{"input_ids": tiny.trained[0]}, {"input_ids": tiny.trained[1][:60]}, {"input_ids": tiny.trained[2]}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    result, out = extract(data=data, code=0)
    summary = json.loads(result.stdout)
    assert (summary["n_examples"], summary["n_skipped_short"], summary["n_input_rows"]) == (2, 1, 3)
    import pyarrow.parquet as pq
    assert pq.read_table(out / "results.parquet")["example_id"].to_pylist() == [0, 2]
    check_refused(*extract("--strict", data=data, out="strict"), "1 examples", "fewer than 100 tokens")


def test_all_examples_short(extract, tiny, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"input_ids": tiny.trained[0][:10]}])
    check_refused(*extract(data=data), "no example")


def test_unwritable_out(tiny, tmp_path, invoke):
    (tmp_path / "file").write_text("x")
    result = invoke("extract", "--model", tiny.model, "--data", tiny.data, "--out", tmp_path / "file" / "run",
                    code=2)
    assert "cannot write" in result.output


def test_subprocess_prints_one_line_and_exits_2(tiny, tmp_path, cli):
    proc = cli("extract", "--model", tiny.model, "--data", tmp_path / "missing.parquet", "--out", tmp_path / "o",
               check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"Error: no such data file: {tmp_path / 'missing.parquet'}"]


def test_model_the_engine_cannot_run(tiny, tmp_path, cli):
    """vLLM's CPU attention has no kernel for head_dim 16: reported as a load error, not a traceback."""
    from evalmem.tiny import build_model

    model = build_model(tmp_path / "odd", tiny.tokenizer, hidden=64, layers=1, heads=4)
    proc = cli("extract", "--model", model, "--data", tiny.data, "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"Error: cannot load model {model} with engine vllm")
