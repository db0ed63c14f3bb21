"""`evalmem features` against independent computations, and the whole predictor path on the tiny model."""

import json
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from evalmem.features import token_scores


def test_token_scores_match_hand_computation():
    """KL, perplexities and Min-K% on a toy vocabulary, computed by hand with numpy; the baseline's padded
    vocabulary (two extra columns) is cut to the teacher's."""
    rng = np.random.default_rng(0)
    lt, lb = rng.normal(size=(2, 5, 6)), rng.normal(size=(2, 5, 8))
    ids = rng.integers(0, 6, size=(2, 5))
    got = token_scores(torch.tensor(lt), torch.tensor(lb), torch.tensor(ids), min_k=0.5)

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    for row in range(2):
        lp_t, lp_b = log_softmax(lt[row, :4]), log_softmax(lb[row, :4, :6])
        tok_t = np.array([lp_t[i, ids[row, i + 1]] for i in range(4)])
        tok_b = np.array([lp_b[i, ids[row, i + 1]] for i in range(4)])
        kl = np.mean([sum(np.exp(lp_t[i, v]) * (lp_t[i, v] - lp_b[i, v]) for v in range(6)) for i in range(4)])
        assert got["kl_teacher_baseline"][row].item() == pytest.approx(kl, rel=1e-6)
        assert got["teacher_ppl"][row].item() == pytest.approx(np.exp(-tok_t.mean()), rel=1e-6)
        assert got["baseline_ppl"][row].item() == pytest.approx(np.exp(-tok_b.mean()), rel=1e-6)
        assert got["min_k_logprob"][row].item() == pytest.approx(np.sort(tok_t)[:2].mean(), rel=1e-6)
    same = token_scores(torch.tensor(lt), torch.tensor(lt), torch.tensor(ids), min_k=0.5)
    np.testing.assert_allclose(same["kl_teacher_baseline"], np.zeros(2), atol=1e-6)


@pytest.fixture(scope="module")
def feats(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("feats") / "feats"
    from helpers import invoke_cli

    invoke_cli("features", "--teacher", tiny.model, "--baseline", tiny.base, "--data", tiny.data, "--out", out,
               "--batch-size", 16, "--shard-size", 40)
    return out


def test_features_match_transformers(tiny, feats):
    """Perplexity equals exp(transformers' own loss) on the same window; zlib entropy is the compressed
    length of the decoded window."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    table = pq.read_table(feats / "features.parquet").to_pydict()
    assert table["example_id"] == [f"w{i}" for i in range(64)]
    windows = tiny.trained + tiny.unseen
    tok = AutoTokenizer.from_pretrained(tiny.model)
    for name, column in ((tiny.model, "teacher_ppl"), (tiny.base, "baseline_ppl")):
        model = AutoModelForCausalLM.from_pretrained(name).eval()
        for i in (0, 5, 40, 63):
            ids = torch.tensor([windows[i]])
            with torch.no_grad():
                loss = model(input_ids=ids, labels=ids).loss.item()
            assert table[column][i] == pytest.approx(np.exp(loss), rel=1e-4)
    for i in (0, 63):
        assert table["zlib_entropy"][i] == len(zlib.compress(tok.decode(windows[i]).encode()))
    teacher_ppl = np.array(table["teacher_ppl"])
    assert teacher_ppl[:32].mean() < teacher_ppl[32:].mean()  # trained windows are more likely
    assert min(table["kl_teacher_baseline"]) > 0
    assert all(m <= np.log(1 / p) + 1e-6 for m, p in zip(table["min_k_logprob"], teacher_ppl))
    summary = json.loads((feats / "summary.json").read_text())
    assert summary["n_examples"] == 64 and len(list((feats / "shards").iterdir())) == 2


def test_features_resume_and_refuse_other_settings(invoke, tiny, feats):
    args = ["features", "--teacher", tiny.model, "--baseline", tiny.base, "--data", tiny.data, "--out", feats]
    before = (feats / "features.parquet").stat().st_mtime_ns
    invoke(*args, "--batch-size", 16, "--shard-size", 40)  # complete: nothing recomputed
    assert (feats / "features.parquet").stat().st_mtime_ns == before
    result = invoke(*args, "--min-k", 0.1, "--shard-size", 40, code=2)
    assert "other settings (min_k)" in result.output


@pytest.mark.parametrize("args, words", [
    (["--teacher", "/no/such/model"], "cannot load model /no/such/model"),
    (["--min-k", "0"], "Invalid value for '--min-k'"),
])
def test_features_bad_input(invoke, tiny, tmp_path, args, words):
    base = {"--teacher": tiny.model, "--baseline": tiny.base, "--min-k": "0.2"}
    base.update(dict(zip(args[::2], args[1::2])))
    result = invoke("features", *[x for kv in base.items() for x in kv], "--data", tiny.data,
                    "--out", tmp_path / "f", code=2)
    assert result.output.startswith("Error: ") and words in result.output


def test_predict_and_filter_on_the_tiny_model(invoke, tiny, tiny_runs, feats, tmp_path):
    """Features of the real models predict what the memorizing model extracted; filtering drops the risky."""
    pred = tmp_path / "pred"
    invoke("predict", "--features", feats, "--labels", tiny_runs.model, "--out", pred, "--trials", 10)
    report = json.loads((pred / "predict.json").read_text())
    labels = pq.read_table(f"{tiny_runs.model}/results.parquet").to_pydict()
    assert report["n_examples"] == 64 and report["n_positive"] == sum(labels["exact_match"])
    assert report["resampled"]["roc_auc"]["mean"] > 0.9
    out = tmp_path / "kept.jsonl"
    result = invoke("filter", "--predictor", pred, "--features", feats, "--data", tiny.data, "--out", out,
                    "--top-frac", 0.25)
    counts = json.loads(result.stdout)
    kept = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert counts["n_dropped"] == 16 and counts["n_kept"] == len(kept) == 48
    dropped = {f"w{i}" for i in range(64)} - set(kept)
    assert len(dropped & {f"w{i}" for i in range(32)}) >= 12  # the risky are mostly trained windows
