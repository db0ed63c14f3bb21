"""The command line end to end with bad input: a one-line error on stderr, exit code 2 (130 for Ctrl-C), no
traceback, nothing that looks complete, nothing lost."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import RECIPES, flip_byte, invoke_cli, parquet, write_features, write_jsonl, write_run

RECIPE = RECIPES / "tiny.yaml"


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


def test_missing_hub_dataset(extract):
    check_refused(*extract(data="no-such-org/no-such-dataset"), "cannot load data")


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


# --- the bad-input matrix: malformed inputs across every command (README: Troubleshooting) ---


def bad_data(kind, tiny, tmp):
    """A data file with one kind of damage."""
    window = tiny.trained[0]
    if kind == "ids as strings":
        return parquet(tmp / "d.parquet", {"input_ids": [[str(t) for t in window]]})
    if kind == "ids as floats":
        return parquet(tmp / "d.parquet", {"input_ids": [[float(t) for t in window]]})
    if kind == "ids not lists":
        return parquet(tmp / "d.parquet", {"input_ids": [5, 6]})
    if kind == "ids nested":
        return parquet(tmp / "d.parquet", {"input_ids": [[[t] for t in window]]})
    if kind == "ids out of vocabulary":
        return write_jsonl(tmp / "d.jsonl", [{"input_ids": [10**6] * 100}])
    if kind == "negative ids":
        return write_jsonl(tmp / "d.jsonl", [{"input_ids": [-1] * 100}])
    if kind == "text as numbers":
        return parquet(tmp / "d.parquet", {"text": [5, 7]})
    if kind == "text as bytes":
        return parquet(tmp / "d.parquet", {"text": pa.array([b"\xff\xfe in the beginning"], pa.binary())})
    if kind == "empty strings":
        return write_jsonl(tmp / "d.jsonl", [{"text": ""}] * 3)
    if kind == "mixed encodings":
        (tmp / "d.jsonl").write_bytes('{"text": "caf\u00e9"}\n'.encode() + '{"text": "caf\u00e9"}\n'.encode("latin-1"))
        return tmp / "d.jsonl"
    if kind == "latin-1 text":
        (tmp / "d.txt").write_bytes("In the beginning God cr\u00e9ated\n".encode("latin-1"))
        return tmp / "d.txt"
    if kind == "duplicated ids":
        return write_jsonl(tmp / "d.jsonl", [{"id": 1, "input_ids": window}] * 2)
    if kind == "ids of mixed types":
        return write_jsonl(tmp / "d.jsonl", [{"id": 1, "input_ids": window}, {"id": "a", "input_ids": window}])
    if kind == "broken JSON line":
        (tmp / "d.jsonl").write_text('{"text": "a"}\n{"text": \n')
        return tmp / "d.jsonl"
    if kind == "not Parquet":
        (tmp / "d.parquet").write_bytes(b"PAR1 this is not a parquet file")
        return tmp / "d.parquet"
    if kind == "zero rows":
        return parquet(tmp / "d.parquet", {"text": pa.array([], pa.string())})
    if kind == "empty file":
        (tmp / "d.txt").write_text("")
        return tmp / "d.txt"
    if kind == "no text column":
        return write_jsonl(tmp / "d.jsonl", [{"body": "x"}])
    if kind == "missing file":
        return tmp / "nope.jsonl"
    if kind == "null text":
        return write_jsonl(tmp / "d.jsonl", [{"text": "In the beginning"}, {"text": None}])
    if kind == "null ids":
        return write_jsonl(tmp / "d.jsonl", [{"input_ids": window}, {"input_ids": None}])
    raise ValueError(kind)


DATA_ERRORS = {"ids as strings": "integer token ids", "ids as floats": "integer token ids",
               "ids not lists": "integer token ids", "ids nested": "integer token ids",
               "ids out of vocabulary": "vocabulary", "negative ids": "vocabulary", "text as numbers": "non-text",
               "text as bytes": "non-text", "empty strings": "no example", "mixed encodings": "not valid UTF-8",
               "latin-1 text": "not valid UTF-8", "duplicated ids": "duplicated",
               "ids of mixed types": "mixes int, str values", "broken JSON line": "cannot load data",
               "not Parquet": "not a readable Parquet file", "zero rows": "no examples",
               "empty file": "no examples", "no text column": "no column 'text'", "missing file": "no such data file",
               "null text": "holds 1 null values (first in row 1)", "null ids": "holds 1 null values"}


def data_command(command, tiny, tmp, data, *extra):
    """The command line of a data-reading command over `data` (`evalmem-train` ones start with `train`)."""
    out = tmp / "out"
    if command == "extract":
        return ["extract", "--model", tiny.model, "--data", data, "--out", out, *extra]
    if command == "generate":
        return ["generate", "--model", tiny.model, "--data", data, "--max-new-tokens", 50, "--out", out, *extra]
    if command == "features":
        return ["features", "--teacher", tiny.model, "--baseline", tiny.base, "--data", data, "--out", out, *extra]
    if command == "filter":
        ids = list(range(40))
        x = np.random.default_rng(0).normal(size=(40, 4))
        feats = write_features(tmp / "feats", ids, x)
        labels = write_run(tmp / "labels", ids, set(range(10)))
        invoke_cli("predict", "--features", feats, "--labels", labels, "--trials", 2, "--out", tmp / "pred")
        return ["filter", "--predictor", tmp / "pred", "--features", feats, "--data", data, "--top-frac", 0.1,
                "--out", tmp / "kept.jsonl", *extra]
    if command == "finetune":
        return ["train", "finetune", "--run", "teacher", "--recipe", RECIPE, "--set", f"data.path={data}",
                "--set", f"teacher.model={tiny.base}", "--set", f"out={out}", *extra]
    raise ValueError(command)


def bad_result(kind, tiny, tmp):
    """Result directories of compare / predict / report / distill-hard with one kind of damage."""
    ids = [f"e{i}" for i in range(12)]
    teacher, baseline = write_run(tmp / "t", ids, {"e0", "e1"}), write_run(tmp / "b", ids, {"e0"})
    results = tmp / "t" / "results.parquet"
    table = pq.read_table(results)
    if kind == "exact_match as strings":
        pq.write_table(table.set_column(1, "exact_match", pa.array(["yes"] * 12)), results)
    elif kind == "duplicated example_ids":
        pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), results)
    elif kind == "flipped bytes":
        flip_byte(results, "token_accuracy")  # a column compare reads
    elif kind == "manifest not JSON":
        (tmp / "t" / "manifest.json").write_text("{oops")
    elif kind == "features as strings":
        x = np.random.default_rng(0).normal(size=(12, 4))
        feats = pq.read_table(write_features(tmp / "f", ids, x) + "/features.parquet")
        pq.write_table(feats.set_column(1, "teacher_ppl", pa.array(["high"] * 12)), tmp / "f" / "features.parquet")
        return ["predict", "--features", tmp / "f", "--labels", teacher, "--trials", 2, "--out", tmp / "out"]
    elif kind == "duplicated feature rows":
        x = np.random.default_rng(0).normal(size=(13, 4))
        write_features(tmp / "f", ids + ["e0"], x)
        return ["predict", "--features", tmp / "f", "--labels", teacher, "--trials", 2, "--out", tmp / "out"]
    elif kind in ("compare.json a list", "compare.json not JSON"):
        (tmp / "cmp").mkdir()
        (tmp / "cmp" / "compare.json").write_text("[1, 2]" if kind.endswith("list") else "{oops")
        return ["report", "--compare", tmp / "cmp", "--out", tmp / "r.html"]
    elif kind == "corpus ids as strings":
        (tmp / "corpus").mkdir()
        parquet(tmp / "corpus" / "results.parquet", {"example_id": ["w0"], "input_ids": [["1", "2"]],
                                                     "text": ["x"]})
        (tmp / "corpus" / "summary.json").write_text("{}")
        return ["train", "distill-hard", "--recipe", RECIPE, "--set", f"hard.corpus={tmp / 'corpus'}", "--set",
                f"data.path={tiny.data}", "--set", f"student.model={tiny.base}", "--set", f"out={tmp / 'out'}"]
    else:
        raise ValueError(kind)
    return ["compare", "--teacher", teacher, "--baseline", baseline, "--out", tmp / "out"]


RESULT_ERRORS = {"exact_match as strings": "exact_match", "duplicated example_ids": "duplicated",
                 "flipped bytes": "cannot read", "manifest not JSON": "unreadable",
                 "features as strings": "teacher_ppl", "duplicated feature rows": "duplicated",
                 "compare.json a list": "not written by evalmem compare", "compare.json not JSON": "cannot read",
                 "corpus ids as strings": "integer token ids"}

LENGTHS = [  # (command, options, message)
    ("extract", ["--prefix-len", 10**9], "exceeds the model's context"),
    ("extract", ["--prefix-len", -3], "--prefix-len must be positive"),
    ("extract", ["--suffix-len", 0], "--suffix-len must be positive"),
    ("extract", ["--prefix-len", 400, "--suffix-len", 200], "exceeds the model's context of 512"),
    ("extract", ["--limit", 0], "Invalid value for '--limit'"),
    ("extract", ["--shard-size", -5], "Invalid value for '--shard-size'"),
    ("extract", ["--prefix-len", "fifty"], "'fifty' is not an integer or a comma-separated list"),
    ("extract", ["--engine", "server", "--concurrency", 0], "Invalid value for '--concurrency'"),
    ("extract", ["--max-model-len", 64], "--max-model-len 64 is shorter than the job's --prefix-len + --suffix-len"),
    ("extract", ["--max-model-len", 40], "--max-model-len 40 is shorter"),
    ("extract", ["--mode", "screen", "--engine", "vllm"], "--mode screen does not run on --engine vllm"),
    ("generate", ["--max-model-len", 64], "--max-model-len 64 is shorter than the job's --prefix-len + --max-new"),
    ("generate", ["--temperature", "inf"], "--temperature must be a finite number"),
    ("generate", ["--temperature", -1], "Invalid value for '--temperature'"),
    ("generate", ["--max-new-tokens", 10**9], "exceeds the model's context"),
    ("generate", ["--prefix-len", -1], "--prefix-len must be positive"),
    ("features", ["--suffix-len", 10**9], "exceeds the model's context"),
    ("features", ["--prefix-len", 0], "--prefix-len must be positive"),
    ("finetune", ["--set", "data.window_len=1000000000"], "exceeds the context"),
    ("finetune", ["--set", "data.window_len=-5"], "must be positive"),
]

MATRIX = (
    [("extract", kind) for kind in DATA_ERRORS]
    + [("generate", k) for k in ("ids as floats", "ids out of vocabulary", "empty strings", "duplicated ids",
                                 "null text")]
    + [("features", k) for k in ("ids as strings", "negative ids", "mixed encodings", "duplicated ids")]
    + [("filter", k) for k in ("duplicated ids", "mixed encodings", "not Parquet", "text as numbers")]
    + [("finetune", k) for k in ("ids as strings", "ids out of vocabulary", "duplicated ids", "empty strings")]
    + [("result", kind) for kind in RESULT_ERRORS]
    + [("length", i) for i in range(len(LENGTHS))]
)
IN_SUBPROCESS = {("extract", "ids as strings"), ("finetune", "duplicated ids"), ("result", "flipped bytes"),
                 ("length", 8), ("length", 11), ("length", 12)}  # vLLM's limits: the traceback came from there


@pytest.mark.parametrize("command, case", MATRIX, ids=[
    f"{c}-{LENGTHS[k][0]}-{LENGTHS[k][1][0]}={LENGTHS[k][1][-1]}" if c == "length" else f"{c}-{k}"
    for c, k in MATRIX])
def test_bad_input_matrix(tiny, tmp_path, command, case):
    """Every malformed input gets one line `Error: ...` (naming the problem) and exit code 2, in process or
    (a few) in a real subprocess, and no output that looks complete."""
    if command == "result":
        args, message = bad_result(case, tiny, tmp_path), RESULT_ERRORS[case]
    elif command == "length":
        command, extra, message = LENGTHS[case]
        args = data_command(command, tiny, tmp_path, tiny.data, *extra)
    else:
        args, message = data_command(command, tiny, tmp_path, bad_data(case, tiny, tmp_path)), DATA_ERRORS[case]
    group = args[0] == "train"
    args = args[1:] if group else args
    if (command, case) in IN_SUBPROCESS:
        proc = subprocess.run([sys.executable, "-m", "train" if group else "evalmem", *map(str, args)],
                              capture_output=True, text=True)
        code, output = proc.returncode, proc.stderr
    else:
        from train.cli import main as train_main

        result = invoke_cli(*args, code=2, group=train_main if group else None)
        code, output = result.exit_code, result.output
    lines = output.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], output
    out = tmp_path / "out"
    assert not any((out / name).exists() for name in ("summary.json", "results.parquet", "features.parquet",
                                                     "predict.json", "compare.json", "teacher"))


EMPTY_OUT = {  # every command that writes, its --out given as '' (an unset shell variable)
    "extract": lambda t, tmp: ["extract", "--model", t.model, "--data", t.data],
    "generate": lambda t, tmp: ["generate", "--model", t.model, "--data", t.data],
    "features": lambda t, tmp: ["features", "--teacher", t.model, "--baseline", t.base, "--data", t.data],
    "perplexity": lambda t, tmp: ["perplexity", "--model", t.model, "--data", t.data],
    "compare": lambda t, tmp: ["compare", "--teacher", write_run(tmp / "a", ["e0"], set()), "--run",
                               write_run(tmp / "b", ["e0"], set())],
    "report": lambda t, tmp: ["report", "--compare", tmp],
    "pipeline": lambda t, tmp: ["pipeline", "--recipe", RECIPES / "tiny.yaml"],
}


@pytest.mark.parametrize("command", EMPTY_OUT)
def test_empty_out_is_refused_before_anything_is_written(tiny, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    result = invoke_cli(*EMPTY_OUT[command](tiny, tmp_path), "--out", "", code=2)
    assert result.output.strip() == "Error: --out is empty: name the directory or file to write"
    assert not list(tmp_path.glob("manifest.json")) and not (tmp_path / "shards").exists()


def test_filter_never_overwrites_its_input(tiny, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": i, "input_ids": tiny.trained[0]} for i in range(40)])
    before = data.read_bytes()
    args = data_command("filter", tiny, tmp_path, data)
    args[args.index("--out") + 1] = data
    result = invoke_cli(*args, code=2)
    assert "is the input --data" in result.output and data.read_bytes() == before


@pytest.mark.slow
def test_ctrl_c_exits_130_and_says_how_to_resume(tiny, tmp_path):
    import signal
    import time

    out = tmp_path / "r"
    rows = [json.loads(line) for line in open(tiny.data)]
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": f"{k}-{r['id']}", "input_ids": r["input_ids"]}
                                              for k in range(16) for r in rows])  # long enough to outlast a slow start
    args = ["extract", "--model", tiny.model, "--data", data, "--engine", "hf", "--batch-size", 1,
            "--shard-size", 2, "--out", out]
    # SIGINT handled as in a terminal's job: a background shell (`cmd &`, e.g. CI's) starts children ignoring it
    proc = subprocess.Popen([sys.executable, "-m", "evalmem", *map(str, args)], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    while not list((out / "shards").glob("*.parquet")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == ("Error: interrupted; finished shards and stages are kept: rerun the "
                                               "same command to resume")
    assert not (out / "summary.json").exists()


def test_text_data_without_a_tokenizer_says_what_to_pass(tiny, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny.model, model, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "In the beginning God created the heaven"}])
    result = invoke_cli("extract", "--model", model, "--data", data, "--out", tmp_path / "o", code=2)
    assert "cannot load a tokenizer from" in result.output and "pass --tokenizer" in result.output
    assert result.output.count("\n") == 1
