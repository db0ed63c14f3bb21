"""`evalmem extract`: metrics on hand-made cases, the result contract, and every mode against `--mode decode` (the
reference) on the tiny memorizing model."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from evalmem.extraction import edit_distances, match_lengths, metrics
from helpers import PREFIX, SUFFIX

MODES = ("decode", "screen", "verify", "auto")
NULL_COLUMNS = ("token_accuracy", "edit_distance", "approx_match", "generated_ids")
PERTURBED = {"p1": [30], "p5": [10, 18, 26, 34, 42], "p6": [5, 12, 19, 26, 33, 40]}  # suffix positions changed
RESULT_COLUMNS = {"example_id", "exact_match", "match_len", "token_accuracy", "edit_distance", "approx_match",
                  "generated_ids", "suffix_ids"}
SUMMARY_KEYS = {"model", "data", "n_examples", "prefix_len", "suffix_len", "engine", "mode", "exact_match_count",
                "exact_match_rate", "approx_match_rate", "mean_token_accuracy", "seconds", "tokens_per_second"}


@pytest.fixture(scope="module")
def engines(tiny, tmp_path_factory):
    """The same extraction with the vLLM engine and with the transformers reference."""
    from helpers import invoke_cli

    out = tmp_path_factory.mktemp("extract")
    for engine in ("hf", "vllm"):
        invoke_cli("extract", "--model", tiny.model, "--data", tiny.data, "--out", out / engine,
                   "--engine", engine, "--shard-size", 24)
    return {e: pq.read_table(out / e / "results.parquet").to_pylist() for e in ("hf", "vllm")} | {"dir": out}


def test_vllm_equals_transformers_greedy(engines):
    vllm, hf = engines["vllm"], engines["hf"]
    assert [r["example_id"] for r in vllm] == [r["example_id"] for r in hf]
    assert [r["generated_ids"] for r in vllm] == [r["generated_ids"] for r in hf]
    assert [r["exact_match"] for r in vllm] == [r["exact_match"] for r in hf]
    memorized = sum(r["exact_match"] for r in vllm)
    assert 0 < memorized < len(vllm), "the fixture must give memorized and non-memorized examples"



def test_trained_windows_memorized_unseen_not(engines, tiny):
    rows = {r["example_id"]: r for r in engines["vllm"]}
    trained = [rows[f"w{i}"]["exact_match"] for i in range(len(tiny.trained))]
    unseen = [rows[f"w{i}"]["exact_match"] for i in range(len(tiny.trained), len(tiny.trained) + len(tiny.unseen))]
    assert sum(trained) >= len(trained) // 2
    assert sum(unseen) == 0


def test_result_contract(engines, tiny):
    out = engines["dir"] / "vllm"
    table = pq.read_table(out / "results.parquet")
    assert RESULT_COLUMNS <= set(table.column_names)
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    rows = engines["vllm"]
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


def arr(*rows):
    return np.array(rows, dtype=np.int64)


def test_match_len_is_longest_common_prefix():
    suffix = arr([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4])
    generated = arr([1, 2, 3, 4], [9, 2, 3, 4], [1, 2, 9, 4], [1, 2, 3, 9])
    assert match_lengths(generated, suffix).tolist() == [4, 0, 2, 3]


def test_token_accuracy_counts_positions_not_prefix():
    m = metrics(arr([1, 9, 3, 9]), arr([1, 2, 3, 4]))
    assert m["token_accuracy"].tolist() == [0.5]
    assert m["match_len"].tolist() == [1]
    assert m["exact_match"].tolist() == [False]


def test_edit_distance_is_levenshtein_over_suffix_length():
    suffix = arr([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    # one substitution, one shift (deletion + insertion = 2 edits), identical, all different
    generated = arr([1, 2, 3, 4, 5, 6, 7, 8, 9, 0],
                    [2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
                    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    suffix = np.repeat(suffix, 4, axis=0)
    assert edit_distances(generated, suffix).tolist() == pytest.approx([0.1, 0.2, 0.0, 1.0])
    m = metrics(generated, suffix)
    assert m["approx_match"].tolist() == [True, False, True, False]
    assert m["exact_match"].tolist() == [False, False, True, False]
    # a shifted copy has low token accuracy but small edit distance: the two metrics differ on purpose
    assert m["token_accuracy"].tolist() == [0.9, 0.0, 1.0, 0.0]


# --- every mode against decode ---


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """The tiny memorizing model's extraction in every mode (shards of 24: the last one is partial) on its
    windows and on copies of trained windows with 1, 5 and 6 suffix tokens changed: the model still generates
    the trained suffix, so those are approximate matches (edit distance 1/50 and 5/50) and a near miss (6/50)."""
    from helpers import invoke_cli, write_jsonl

    out = tmp_path_factory.mktemp("modes")
    rows = [json.loads(line) for line in open(tiny.data)]
    for k, (name, positions) in enumerate(PERTURBED.items()):
        ids = list(rows[k]["input_ids"])
        for j in positions:
            ids[PREFIX + j] = (ids[PREFIX + j] + 1) % tiny.tokenizer.vocab_size
        rows.append({"id": name, "input_ids": ids})
    data = write_jsonl(out / "data.jsonl", rows)
    runs = {mode: (mode, "hf") for mode in MODES} | {"verify-vllm": ("verify", "vllm")}
    for name, (mode, engine) in runs.items():
        invoke_cli("extract", "--model", tiny.model, "--data", data, "--out", out / name, "--engine", engine,
                   "--mode", mode, "--shard-size", 24)
    return {m: {"rows": pq.read_table(out / m / "results.parquet").to_pylist(),
                "summary": json.loads((out / m / "summary.json").read_text())} for m in runs} | {"dir": out}


@pytest.mark.parametrize("mode", ["screen", "verify", "auto", "verify-vllm"])
def test_exact_match_and_match_len_equal_decode(runs, mode):
    decode, rows = runs["decode"]["rows"], runs[mode]["rows"]
    assert [r["example_id"] for r in rows] == [r["example_id"] for r in decode]
    assert [r["exact_match"] for r in rows] == [r["exact_match"] for r in decode]
    assert [r["match_len"] for r in rows] == [r["match_len"] for r in decode]
    assert [r["suffix_ids"] for r in rows] == [r["suffix_ids"] for r in decode]
    lengths = {r["match_len"] for r in decode}
    assert SUFFIX in lengths and 0 in lengths, "memorized and non-memorized examples must be present"
    assert lengths - {0, SUFFIX}, "and some that diverge part-way"
    assert decode[-3]["match_len"] == 30 and decode[-1]["match_len"] == 5
    summary = runs[mode]["summary"]
    assert summary["exact_match_count"] == runs["decode"]["summary"]["exact_match_count"]
    assert summary["mean_match_len"] == pytest.approx(runs["decode"]["summary"]["mean_match_len"])


def test_auto_equals_decode_where_it_decodes(runs):
    """auto: approx_match of every row equals decode's; rows that can match approximately (and only those,
    besides near misses dropped late) are decoded to the end, with decode's generated text and metrics."""
    decode, rows, summary = runs["decode"]["rows"], runs["auto"]["rows"], runs["auto"]["summary"]
    assert [r["approx_match"] for r in rows] == [r["approx_match"] for r in decode]
    by_id = {r["example_id"]: r for r in decode}
    assert [by_id[k]["approx_match"] and not by_id[k]["exact_match"] for k in PERTURBED] == [True, True, False]
    assert [by_id[k]["edit_distance"] for k in PERTURBED] == [0.02, 0.1, 0.12]
    full = [r for r in rows if r["generated_ids"] is not None]
    assert {r["example_id"] for r in full} >= {r["example_id"] for r in decode if r["approx_match"]}
    dropped = {r["example_id"] for r in rows if r["generated_ids"] is None}
    assert "p6" in dropped and {r["example_id"] for r in decode if r["match_len"] == 0} <= dropped
    for row in full:
        assert {c: row[c] for c in NULL_COLUMNS} == {c: by_id[row["example_id"]][c] for c in NULL_COLUMNS}
    for row in rows:
        if row["generated_ids"] is None:
            assert row["token_accuracy"] is None and row["edit_distance"] is None and row["approx_match"] is False
    assert summary["mode"] == "auto" and summary["n_fully_decoded"] == len(full)
    assert summary["null_columns"] == ["token_accuracy", "edit_distance", "generated_ids"]
    assert summary["approx_match_count"] == runs["decode"]["summary"]["approx_match_count"]
    assert summary["approx_match_rate"] == runs["decode"]["summary"]["approx_match_rate"]
    assert summary["mean_token_accuracy"] is None and summary["n_near_ties"] == sum(r["near_tie"] for r in rows)


@pytest.mark.parametrize("mode", ["screen", "verify", "verify-vllm"])
def test_columns_needing_generated_text_are_null(runs, mode):
    rows, summary = runs[mode]["rows"], runs[mode]["summary"]
    assert summary["mode"] == mode.removesuffix("-vllm")
    assert summary["engine"] == ("vllm" if mode.endswith("vllm") else "hf")
    assert summary["null_columns"] == list(NULL_COLUMNS)
    assert summary["approx_match_rate"] is None and summary["mean_token_accuracy"] is None
    assert summary["n_near_ties"] == sum(r["near_tie"] for r in rows)
    for row in rows:
        assert all(row[c] is None for c in NULL_COLUMNS)
        assert row["exact_match"] == (row["match_len"] == SUFFIX)
    assert runs["decode"]["summary"]["mode"] == "decode"
    assert all(r["approx_match"] is not None for r in runs["decode"]["rows"])


def test_screen_logprobs_are_the_models(runs, tiny):
    """suffix_logprobs equal an independent full forward pass over the whole window."""
    from transformers import AutoModelForCausalLM

    rows = runs["screen"]["rows"]
    assert all(r["suffix_logprobs"] is None for r in runs["verify"]["rows"])
    model = AutoModelForCausalLM.from_pretrained(tiny.model).eval()
    picked = rows[:4] + rows[-4:]
    ids = torch.tensor([r["prefix_ids"] + r["suffix_ids"] for r in picked])
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    expected = logprobs[:, PREFIX - 1:-1].gather(-1, ids[:, PREFIX:, None]).squeeze(-1).numpy()
    np.testing.assert_allclose(np.array([r["suffix_logprobs"] for r in picked]), expected, atol=1e-4)
    memorized = [np.mean(r["suffix_logprobs"]) for r in rows if r["exact_match"]]
    unseen = [np.mean(r["suffix_logprobs"]) for r in rows if r["match_len"] == 0]
    assert min(memorized) > max(unseen)


def test_exact_tie_is_flagged_as_near_tie(tiny, tmp_path, invoke):
    """A model whose output rows for two tokens are identical ties them exactly: every example whose
    deciding positions include one of them is flagged, in screen and in verify (hf and vllm)."""
    from safetensors.torch import load_file, save_file

    model = tmp_path / "tied"
    shutil.copytree(tiny.model, model)
    weights = load_file(model / "model.safetensors")
    first = json.loads(open(tiny.data).readline())["input_ids"][PREFIX]  # example 0's first suffix token
    twin = (first + 1) % weights["lm_head.weight"].shape[0]
    weights["lm_head.weight"][twin] = weights["lm_head.weight"][first]
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    for mode, engine in (("screen", "hf"), ("verify", "hf"), ("verify", "vllm")):
        invoke("extract", "--model", model, "--data", tiny.data, "--limit", 4, "--mode", mode, "--engine", engine,
               "--out", tmp_path / mode / engine)
        rows = pq.read_table(tmp_path / mode / engine / "results.parquet").to_pylist()
        assert rows[0]["near_tie"], (mode, engine)
        assert json.loads((tmp_path / mode / engine / "summary.json").read_text())["n_near_ties"] >= 1


def test_bad_mode_exits_2(tiny, tmp_path, invoke):
    result = invoke("extract", "--model", tiny.model, "--data", tiny.data, "--mode", "fast", "--out", tmp_path,
                    code=2)
    assert "--mode" in result.output
    assert not tmp_path.joinpath("manifest.json").exists()


def test_resume_with_another_mode_is_refused(tiny, tmp_path, invoke):
    args = ["extract", "--model", tiny.model, "--data", tiny.data, "--limit", 4, "--out", tmp_path]
    invoke(*args, "--mode", "screen")
    result = invoke(*args, "--mode", "verify", code=2)
    assert "mode" in result.output and "other settings" in result.output
    invoke(*args, "--mode", "screen")  # the same mode resumes (here: a complete run, nothing to do)


@pytest.mark.parametrize("mode", ["screen", "verify"])
def test_shard_of_only_short_examples(tiny, tmp_path, invoke, mode):
    from helpers import write_jsonl

    window = json.loads(open(tiny.data).readline())["input_ids"]
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": "long", "input_ids": window},
                                              {"id": "short", "input_ids": window[:10]}])  # shard 2: empty
    invoke("extract", "--model", tiny.model, "--data", data, "--mode", mode, "--shard-size", 1,
           "--out", tmp_path / "r")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert (summary["n_examples"], summary["n_skipped_short"]) == (1, 1)
    assert pq.read_table(tmp_path / "r" / "results.parquet")["example_id"].to_pylist() == ["long"]


def test_compare_says_not_computed_for_runs_without_decoding(runs, tmp_path, invoke):
    """A screen run joins with decode runs; its approximate-match rate is unknown (None), never 0; an auto
    run's is known, its mean token accuracy is not."""
    invoke("compare", "--teacher", runs["dir"] / "screen", "--baseline", f"b0={runs['dir'] / 'decode'}",
           "--run", f"auto={runs['dir'] / 'auto'}", "--out", tmp_path / "cmp")
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"]
    assert result["teacher"]["approx_match_rate"] is None and result["teacher"]["mean_token_accuracy"] is None
    assert result["teacher"]["exact_match_count"] == runs["decode"]["summary"]["exact_match_count"]
    assert result["b0"]["approx_match_rate"] == runs["decode"]["summary"]["approx_match_rate"]
    assert result["auto"]["approx_match_rate"] == result["b0"]["approx_match_rate"]  # auto knows every row's
    assert result["auto"]["mean_token_accuracy"] is None  # but not every row's token accuracy


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root, model, revision):
    """A Hugging Face hub cache holding the folder `model` as evalmem/tiny at `revision` (the layout a download
    leaves): from_pretrained's offline path for a hub id and a revision."""
    repo = root / "models--evalmem--tiny"
    shutil.copytree(model, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / revision).write_text(COMMIT)
    return root


def test_extract_a_hub_revision(tiny, runs, tmp_path):
    """--revision loads the hub model at that revision (here from the cache, offline) and the manifest records it
    with the commit it names; a revision the cache lacks offline is one line and exit 2."""
    import os

    from helpers import run_cli

    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache(tmp_path / "hub", tiny.model, "step10")), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "rev"
    run_cli("extract", "--model", "evalmem/tiny", "--revision", "step10", "--data", runs["dir"] / "data.jsonl",
            "--mode", "verify", "--engine", "hf", "--out", out, env=env)
    settings = json.loads((out / "manifest.json").read_text())["settings"]
    assert settings["revision"] == "step10" and settings["model_fingerprint"] == f"hub:evalmem/tiny@{COMMIT}"
    by_id = {r["example_id"]: r["match_len"] for r in runs["verify"]["rows"]}
    assert {r["example_id"]: r["match_len"] for r in pq.read_table(out / "results.parquet").to_pylist()} == by_id
    proc = run_cli("extract", "--model", "evalmem/tiny", "--revision", "step99", "--data", tiny.data,
                   "--out", tmp_path / "bad", check=False, env=env)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "cannot load model evalmem/tiny@step99" in proc.stderr and not (tmp_path / "bad" / "summary.json").exists()
    proc = run_cli("extract", "--model", tiny.model, "--revision", "step10", "--data", tiny.data, "--out",
                   tmp_path / "local", check=False, env=env)
    assert proc.returncode == 2 and "is a local folder" in proc.stderr


# --- a real vocabulary's size ---


@pytest.fixture(scope="module")
def wide(tiny, tmp_path_factory):
    """A small Llama at SmolLM2's vocabulary (49,152 entries, tied embeddings) with windows it memorizes: its own
    greedy continuations in full (memorized), greedy for some tokens then another token (part-way), and random."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers import write_jsonl

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=128, tie_word_embeddings=True)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # peaked distributions: clear arg-maxes (random init is near-uniform)
    prefix, suffix, g = 24, 24, torch.Generator().manual_seed(1)
    ids = torch.randint(0, 2048, (18, prefix + suffix), generator=g)  # ids the tiny tokenizer can decode
    with torch.no_grad():
        greedy = model.generate(ids[:12, :prefix], attention_mask=torch.ones(12, prefix, dtype=torch.long),
                                max_new_tokens=suffix, do_sample=False, eos_token_id=None, pad_token_id=0)
    ids[:12, prefix:] = greedy[:, prefix:]
    for row, keep in zip(range(6, 12), (0, 3, 7, 12, 18, 23)):  # part-way: the first `keep` suffix tokens
        ids[row, prefix + keep] = (greedy[row, prefix + keep] + 1) % 2048
    folder = tmp_path_factory.mktemp("wide")
    model.save_pretrained(folder / "model")
    shutil.copytree(tiny.root / "tokenizer", folder / "model", dirs_exist_ok=True)
    data = write_jsonl(folder / "data.jsonl", [{"id": f"w{i}", "input_ids": w} for i, w in enumerate(ids.tolist())])
    return folder, data, prefix, suffix


def test_every_mode_equals_decode_at_a_real_vocabulary_size(wide):
    from helpers import invoke_cli

    folder, data, prefix, suffix = wide
    runs = {"decode": ("decode", "vllm"), "decode-hf": ("decode", "hf"), "screen": ("screen", "hf"),
            "verify-hf": ("verify", "hf"), "verify": ("verify", "vllm")}
    rows = {}
    for name, (mode, engine) in runs.items():
        invoke_cli("extract", "--model", folder / "model", "--data", data, "--out", folder / name, "--mode", mode,
                   "--engine", engine, "--prefix-len", prefix, "--suffix-len", suffix)
        rows[name] = pq.read_table(folder / name / "results.parquet").to_pylist()
    decode = rows["decode"]
    assert [r["match_len"] for r in decode] == [suffix] * 6 + [0, 3, 7, 12, 18, 23] + [0] * 6
    for name, found in rows.items():
        for column in ("example_id", "exact_match", "match_len"):
            assert [r[column] for r in found] == [r[column] for r in decode], (name, column)
