"""`extract --mode screen`: every prefix length and score from one pass, against independent paths: decoding at
each prefix length, Monte-Carlo sampling with vLLM, transformers' own loss, and the features' Min-K%."""

import json
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from helpers import one_line_error, write_jsonl

LENGTHS, SUFFIX_LEN = (10, 30, 50), 40


@pytest.fixture(scope="module")
def profile_runs(tiny, tmp_path_factory):
    """The tiny memorizing model in --mode screen at three prefix lengths (the base model as reference), and
    --mode decode at each of them, on trained windows, unseen ones and trained ones changed part-way."""
    from helpers import invoke_cli

    root = tmp_path_factory.mktemp("profile")
    rows = [{"id": f"t{i}", "input_ids": w} for i, w in enumerate(tiny.trained[:12])]
    rows += [{"id": f"u{i}", "input_ids": w} for i, w in enumerate(tiny.unseen[:6])]
    for i, position in enumerate((20, 45, 70)):  # after the 10-token prefix; inside every suffix; late
        ids = list(tiny.trained[12 + i])
        ids[position] = (ids[position] + 1) % len(tiny.tokenizer)
        rows.append({"id": f"p{i}", "input_ids": ids})
    data = write_jsonl(root / "d.jsonl", rows)
    common = ["--model", tiny.model, "--data", data, "--suffix-len", SUFFIX_LEN]
    invoke_cli("extract", *common, "--mode", "screen", "--prefix-len", ",".join(map(str, LENGTHS)),
               "--reference", tiny.base, "--out", root / "screen")
    for k in LENGTHS:
        invoke_cli("extract", *common, "--prefix-len", k, "--out", root / f"decode-{k}")
    return root


def table(path):
    return pq.read_table(path / "results.parquet").to_pylist()


def test_every_prefix_length_equals_decoding_there(profile_runs):
    screen = {(r["example_id"], r["prefix_len"]): r for r in table(profile_runs / "screen")}
    assert len(screen) == 21 * len(LENGTHS)
    lengths = set()
    for k in LENGTHS:
        for row in table(profile_runs / f"decode-{k}"):
            ours = screen[row["example_id"], k]
            assert (ours["exact_match"], ours["match_len"]) == (row["exact_match"], row["match_len"]), (k, row)
            assert ours["suffix_ids"] == row["suffix_ids"] and ours["prefix_ids"] == row["prefix_ids"]
            lengths.add(row["match_len"])
    assert SUFFIX_LEN in lengths and 0 in lengths and lengths - {0, SUFFIX_LEN}, "memorized, unseen, part-way"
    summary = json.loads((profile_runs / "screen" / "summary.json").read_text())
    assert [p["prefix_len"] for p in summary["profile"]] == list(LENGTHS) and summary["n_examples"] == 21
    for p in summary["profile"]:
        decoded = json.loads((profile_runs / f"decode-{p['prefix_len']}" / "summary.json").read_text())
        assert p["exact_match_count"] == decoded["exact_match_count"]


def test_membership_scores_against_transformers(profile_runs, tiny):
    """loss is transformers' own loss over the window, for the model and the reference; zlib_ratio divides
    it by the compressed text; min_k equals the features' Min-K% of the same window."""
    from transformers import AutoModelForCausalLM

    from evalmem.features import token_scores

    rows = [r for r in table(profile_runs / "screen") if r["prefix_len"] == LENGTHS[-1]]
    models = [AutoModelForCausalLM.from_pretrained(m).eval() for m in (tiny.model, tiny.base)]
    for row in rows[::5]:
        ids = torch.tensor([row["prefix_ids"] + row["suffix_ids"]])
        with torch.no_grad():
            losses = [m(input_ids=ids, labels=ids).loss.item() for m in models]
            logits = models[0](input_ids=ids).logits
        assert row["loss"] == pytest.approx(losses[0], rel=1e-4, abs=1e-5)
        assert row["ref_loss_diff"] == pytest.approx(losses[0] - losses[1], rel=1e-4, abs=1e-4)
        text = tiny.tokenizer.decode(ids[0].tolist(), skip_special_tokens=True)
        assert row["zlib_ratio"] == pytest.approx(row["loss"] / len(zlib.compress(text.encode())), rel=1e-6)
        assert row["min_k"] == pytest.approx(float(token_scores(logits, logits, ids, 0.2)["min_k_logprob"][0]),
                                             rel=1e-4, abs=1e-5)
    memorized = [r["min_k_pp"] for r in rows if r["exact_match"]]
    unseen = [r["min_k_pp"] for r in rows if r["example_id"].startswith("u")]
    assert min(memorized) > max(unseen), "Min-K%++: higher is more member-like"


def test_extraction_logprob_equals_monte_carlo_sampling(profile_runs, tiny):
    """exp(extraction_logprob) of a memorized window equals the share of 2,000 vLLM samples (T = 1, and T = 0.8
    with top-k 3) that reproduce its suffix, within the estimate's 99% interval."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from evalmem.cli.run import ENGINES
    from evalmem.engines import EngineOptions, for_job
    from helpers import invoke_cli

    data = profile_runs / "d.jsonl"
    invoke_cli("extract", "--model", tiny.model, "--data", data, "--mode", "screen", "--prefix-len", 30,
               "--suffix-len", 10, "--temperature", 0.8, "--top-k", 3, "--limit", 12, "--out", profile_runs / "k3")
    engine = ENGINES.get(for_job(EngineOptions(engine="vllm"), model=tiny.model, mode="decode", dtype="float32",
                                 seq_len=100))
    for run, sampling, suffix_len in (("screen", {"temperature": 1.0}, SUFFIX_LEN),
                                      ("k3", {"temperature": 0.8, "top_k": 3}, 10)):
        rows = [r for r in table(profile_runs / run) if r["prefix_len"] == 30 and r["example_id"].startswith("t")]
        row = min(rows, key=lambda r: abs(r["extraction_logprob"] - np.log(0.5)))  # the most informative
        p = float(np.exp(row["extraction_logprob"]))
        assert 0.05 < p < 0.995, p  # a suffix sampling does not always reproduce
        params = SamplingParams(max_tokens=suffix_len, ignore_eos=True, detokenize=False, **sampling)
        outputs = engine.llm.generate([TokensPrompt(prompt_token_ids=row["prefix_ids"])] * 2000, params,
                                      use_tqdm=False)
        hits = np.mean([list(o.outputs[0].token_ids) == row["suffix_ids"] for o in outputs])
        assert abs(hits - p) <= 2.576 * np.sqrt(p * (1 - p) / 2000), (run, hits, p)


@pytest.mark.parametrize("lengths, message", [
    ("", "is not an integer or a comma-separated list"),
    ("30,10,10", "--prefix-len lengths must increase, without repeats, got 30,10,10"),
    ("8,600", "exceeds the model's context of 512 tokens"),
])
def test_bad_prefix_lengths(tiny, tmp_path, invoke, lengths, message):
    result = invoke("extract", "--model", tiny.model, "--data", tiny.data, "--mode", "screen", "--prefix-len",
                    lengths, "--out", tmp_path / "o", code=2)
    one_line_error(result.output, message)


def test_several_lengths_or_scores_need_screen(tiny, tmp_path, invoke):
    for extra in (["--prefix-len", "10,20"], ["--top-k", 5], ["--reference", tiny.base]):
        result = invoke("extract", "--model", tiny.model, "--data", tiny.data, "--mode", "verify", *extra,
                        "--out", tmp_path / "o", code=2)
        one_line_error(result.output, "needs --mode screen")


def test_compare_picks_one_length_and_draws_the_profile(profile_runs, tiny_runs, tmp_path, invoke):
    screen = profile_runs / "screen"
    message = invoke("compare", "--run", f"s={screen}", "--run", f"d={profile_runs / 'decode-50'}", "--out",
                     tmp_path / "a", code=2).output
    one_line_error(message, "holds prefix lengths 10, 30, 50: pass --prefix-len K")
    invoke("compare", "--run", f"s={screen}", "--run", f"d={profile_runs / 'decode-30'}", "--prefix-len", 30,
           "--out", tmp_path / "b")
    result = json.loads((tmp_path / "b" / "compare.json").read_text())
    decoded = json.loads((profile_runs / "decode-30" / "summary.json").read_text())
    assert result["runs"]["s"]["exact_match_count"] == decoded["exact_match_count"]
    assert [p["prefix_len"] for p in result["profiles"]["s"]] == list(LENGTHS)
    assert (tmp_path / "b" / "profile.png").exists()


def test_predictor_takes_the_membership_scores(profile_runs, tiny, tmp_path, invoke):
    """predict --scores: a screen run's membership scores as features, next to the paper's."""
    feats = tmp_path / "f"
    invoke("features", "--teacher", tiny.model, "--baseline", tiny.base, "--data", profile_runs / "d.jsonl",
           "--suffix-len", SUFFIX_LEN, "--out", feats)
    labels = profile_runs / "decode-50"
    report = json.loads(invoke("predict", "--features", feats, "--labels", labels, "--scores",
                               profile_runs / "screen", "--feature", "min_k_pp", "--feature", "ref_loss_diff",
                               "--trials", 5, "--out", tmp_path / "p").stdout)
    assert report["features"] == ["min_k_pp", "ref_loss_diff"] and report["n_examples"] == 21
    one_line_error(invoke("predict", "--features", feats, "--labels", labels, "--feature", "loss", "--out",
                          tmp_path / "q", code=2).output, "feature loss needs --scores")
