"""`evalmem extract --mode screen|verify|auto` against `--mode decode` (the reference) on the tiny models."""

import json
import shutil
from functools import partial

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import PREFIX, SUFFIX

MODES = ("decode", "screen", "verify", "auto")
NULL_COLUMNS = ("token_accuracy", "edit_distance", "approx_match", "generated_ids")
PERTURBED = {"p1": [30], "p5": [10, 18, 26, 34, 42], "p6": [5, 12, 19, 26, 33, 40]}  # suffix positions changed


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """The tiny memorizing model's extraction in every mode (shards of 24: the last one is partial) on its
    windows and on copies of trained windows with 1, 5 and 6 suffix tokens changed: the model still generates
    the trained suffix, so those are approximate matches (edit distance 1/50 and 5/50) and a near miss (6/50)."""
    from conftest import invoke_cli, write_jsonl

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


def test_levenshtein_rows_and_bound_against_rapidfuzz():
    """Every DP row equals rapidfuzz's distance to each suffix prefix; the bound never exceeds the final
    distance and equals it after the last token."""
    from rapidfuzz.distance import Levenshtein

    from evalmem.screen import levenshtein_step

    rng = np.random.default_rng(0)
    generated, true = rng.integers(0, 3, size=(2, 64, 9))
    dist, span = torch.arange(10).repeat(64, 1), torch.arange(10)
    final = torch.tensor([Levenshtein.distance(list(g), list(t)) for g, t in zip(generated, true)])
    for step in range(9):
        dist = levenshtein_step(dist, torch.from_numpy(generated[:, step]), torch.from_numpy(true), step + 1)
        expected = [[Levenshtein.distance(list(g[:step + 1]), list(t[:j])) for j in range(10)]
                    for g, t in zip(generated, true)]
        assert dist.tolist() == expected
        bound = (dist + (span - step - 1).abs()).min(1).values
        assert (bound <= final).all()
    assert bound.tolist() == final.tolist()


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


def test_decide_equals_argmax_and_runner_up():
    """decide's shortcuts (one max pass; top-2 and arg-max only where the true token attains the max) give
    torch.argmax's choice (lowest index on exact ties) and the gap to the best other token, on random
    logits with exact ties planted, against a plain per-position computation."""
    from evalmem.screen import decide

    logits = torch.randn(4, 6, 9, generator=torch.Generator().manual_seed(0))
    true = logits.argmax(-1)
    true[1] = torch.randint(0, 9, (6,), generator=torch.Generator().manual_seed(1))  # mostly misses
    logits[2:, :, 0] = logits[2:].amax(-1) + 1
    logits[2:, :, 8] = logits[2:, :, 0]  # tokens 0 and 8 tie for the max: greedy picks 0
    true[2], true[3] = 0, 8  # a hit and a miss by a tie
    hit, gap, true_logit = decide(logits, true)
    for b, j in np.ndindex(*true.shape):
        row, t = logits[b, j], true[b, j]
        others = torch.cat([row[:t], row[t + 1:]])
        assert hit[b, j] == (row.argmax() == t) and true_logit[b, j] == row[t]
        assert torch.isclose(gap[b, j], (row[t] - others.max()).abs()), (b, j)
    assert not hit[3].any() and (gap[2:] == 0).all() and hit[0].all() and not hit[1].all()


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
    from conftest import write_jsonl

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


@pytest.fixture(scope="module")
def arrays(tiny):
    """The tiny memorizing model (transformers) and its windows as prefix and suffix arrays."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny.model).eval()
    windows = np.array([json.loads(line)["input_ids"][:PREFIX + SUFFIX] for line in open(tiny.data)])
    return model, windows[:, :PREFIX], windows[:, PREFIX:]


def test_batches_run_concurrently_in_order(arrays):
    """screen, verify and auto give the same arrays in batches of 5 (two batches at a time on CPU) as in one
    batch, and leave torch's thread count as it was."""
    from evalmem import screen

    model, prefix, suffix = arrays
    threads = torch.get_num_threads()
    for run in (screen.screen, screen.verify, partial(screen.auto, max_distance=5)):
        whole, batched = run(model, prefix, suffix, len(prefix)), run(model, prefix, suffix, 5)
        assert whole.keys() == batched.keys() and len(whole["match_len"]) == len(prefix) > 10
        for name in whole:
            np.testing.assert_allclose(batched[name], whole[name], atol=1e-4, err_msg=name)
        assert (whole["match_len"] == SUFFIX).any() and (whole["match_len"] < SUFFIX).any()
    assert torch.get_num_threads() == threads


def test_verify_hands_rows_still_matching_to_screen(arrays):
    """verify's rows still matching after `steps` decoding steps, finished by screen, get the match_len and
    near_tie of decoding them to the end, memorized and part-way rows among them."""
    from evalmem import screen

    model, prefix, suffix = arrays
    decoded = screen.verify(model, prefix, suffix, 8, steps=SUFFIX)
    handed = screen.verify(model, prefix, suffix, 8, steps=2)
    assert ((decoded["match_len"] > 2) & (decoded["match_len"] < SUFFIX)).any()
    assert (decoded["match_len"] == SUFFIX).any() and (decoded["match_len"] < 2).any()
    for name in ("match_len", "near_tie"):
        np.testing.assert_array_equal(handed[name], decoded[name], err_msg=name)
