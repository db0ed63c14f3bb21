"""The memorization predictor on synthetic features, and `evalmem predict` / `evalmem filter`."""

import json
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import write_features, write_jsonl, write_run
from evalmem.data import load_source
from evalmem.predict import fit_predictor
from evalmem.settings import DEFAULT_FEATURES, DataSpec


def synthetic(n=3000, n_pos=90, separation=3.0, seed=0):
    """Labels with `n_pos` positives and the paper's four features, the first shifted by `separation`
    standard deviations for positives, the others pure noise."""
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=bool)
    y[rng.choice(n, n_pos, replace=False)] = True
    x = rng.normal(size=(n, 4))
    x[:, 0] += separation * y
    return x, y


def test_separating_feature_gives_auc_near_1():
    x, y = synthetic(separation=6.0)
    report, model = fit_predictor(x, y, DEFAULT_FEATURES, trials=20, neg_ratio=3, test_size=0.3, seed=0)
    assert report["n_positive"] == 90 and report["base_rate"] == 0.03
    assert report["resampled"]["roc_auc"]["mean"] > 0.99
    assert report["resampled"]["precision"]["mean"] > 0.95 and report["resampled"]["recall"]["mean"] > 0.95
    real = report["base_rate_eval"]
    assert real["roc_auc"]["mean"] > 0.99 and real["base_rate"]["mean"] < 0.03
    coefs = report["coefficients"]
    assert coefs["teacher_ppl"]["mean"] > 2
    assert max(abs(coefs[f]["mean"]) for f in DEFAULT_FEATURES[1:]) < coefs["teacher_ppl"]["mean"] / 4
    assert model.predict_proba(x)[:, 1][y].min() > model.predict_proba(x)[:, 1][~y].mean()
    roc, pr = report["roc"], report["pr_base_rate"]
    assert roc["fpr"][0] == roc["tpr"][0] == 0 and roc["fpr"][-1] == roc["tpr"][-1] == 1
    assert roc["tpr"][5] > 0.95 and len(roc["tpr"]) == len(roc["tpr_std"]) == 101  # TPR at FPR 5%
    assert pr["precision"][50] > 0.9 and all(a >= b for a, b in zip(pr["precision"], pr["precision"][1:]))


def test_curves_of_noise():
    """Where the features carry no signal the ROC curve is the diagonal."""
    x, y = synthetic(separation=0.0)
    report, _ = fit_predictor(x, y, DEFAULT_FEATURES, trials=30, neg_ratio=3, test_size=0.3, seed=1)
    assert np.abs(np.array(report["roc"]["tpr"]) - np.array(report["roc"]["fpr"])).max() < 0.15
    base_rate = report["base_rate_eval"]["base_rate"]["mean"]  # of the unused examples: most positives trained
    assert abs(report["pr_base_rate"]["precision"][-1] - base_rate) < 0.002  # recall 1: everything is flagged


def test_real_base_rate_lowers_precision():
    """A weaker signal: at the real 3% base rate precision falls far below the resampled 1:3 figure."""
    x, y = synthetic(separation=2.0)
    report, _ = fit_predictor(x, y, DEFAULT_FEATURES, trials=20, neg_ratio=3, test_size=0.3, seed=0)
    assert report["base_rate_eval"]["precision"]["mean"] < report["resampled"]["precision"]["mean"] - 0.3


def test_noise_gives_auc_near_half():
    x, y = synthetic(separation=0.0)
    report, _ = fit_predictor(x, y, DEFAULT_FEATURES, trials=30, neg_ratio=3, test_size=0.3, seed=1)
    assert abs(report["resampled"]["roc_auc"]["mean"] - 0.5) < 0.07
    assert abs(report["base_rate_eval"]["roc_auc"]["mean"] - 0.5) < 0.07


def test_trials_are_reproducible_from_the_seed():
    x, y = synthetic(separation=1.0)
    a, _ = fit_predictor(x, y, DEFAULT_FEATURES, trials=5, neg_ratio=3, test_size=0.3, seed=7)
    b, _ = fit_predictor(x, y, DEFAULT_FEATURES, trials=5, neg_ratio=3, test_size=0.3, seed=7)
    c, _ = fit_predictor(x, y, DEFAULT_FEATURES, trials=5, neg_ratio=3, test_size=0.3, seed=8)
    assert a == b and a["resampled"] != c["resampled"]


@pytest.fixture
def dirs(tmp_path):
    """A data file, features of its 600 examples and labels where 30 are memorized (feature 0 separates)."""
    x, y = synthetic(n=600, n_pos=30, separation=6.0)
    ids = [f"d{i}" for i in range(600)]
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": i, "text": f"example {i}"} for i in ids])
    fingerprint = load_source(DataSpec(str(data))).fingerprint
    feats = write_features(tmp_path / "feats", ids, x, fingerprint)
    labels = write_run(tmp_path / "labels", ids, {i for i, hit in zip(ids, y) if hit}, data_fingerprint=fingerprint)
    return dict(data=str(data), feats=feats, labels=labels, ids=ids, y=y, x=x, tmp=tmp_path)


def test_predict_then_filter(invoke, dirs):
    tmp = dirs["tmp"]
    result = invoke("predict", "--features", dirs["feats"], "--labels", dirs["labels"], "--out", tmp / "pred",
                    "--trials", 10, "--feature", "teacher_ppl", "--feature", "min_k_logprob")
    report = json.loads((tmp / "pred" / "predict.json").read_text())
    assert json.loads(result.stdout) == report
    assert report["features"] == ["teacher_ppl", "min_k_logprob"] and report["n_positive"] == 30
    assert report["resampled"]["roc_auc"]["mean"] > 0.99
    risk = pq.read_table(tmp / "pred" / "risk.parquet").to_pydict()
    assert risk["example_id"] == sorted(dirs["ids"]) and report["risk_file"] == "risk.parquet"
    top = {i for i, r in zip(risk["example_id"], risk["risk"]) if r is not None and r >= 0.5}
    assert len(top & {i for i, hit in zip(dirs["ids"], dirs["y"]) if hit}) >= 25
    saved = joblib.load(tmp / "pred" / "model.joblib")
    prob = saved["model"].predict_proba(np.column_stack([dirs["x"][:, 0], -dirs["x"][:, 0]]))[:, 1]
    risky = {i for i, p in zip(dirs["ids"], prob) if p >= 0.5}
    assert 25 <= len(risky) <= 40

    result = invoke("filter", "--predictor", tmp / "pred", "--features", dirs["feats"], "--data", dirs["data"],
                    "--out", tmp / "kept.parquet", "--threshold", 0.5)
    counts = json.loads(result.stdout)
    kept = pq.read_table(tmp / "kept.parquet").to_pydict()
    assert counts["n_dropped"] == len(risky) and counts["n_kept"] == 600 - len(risky) == len(kept["id"])
    assert set(kept["id"]) == set(dirs["ids"]) - risky
    assert kept["text"][0] == f"example {kept['id'][0]}"


def test_filter_keeps_row_ids_of_data_without_id_column(invoke, dirs):
    """Data without an `id` column: example ids are row indices, kept as an `id` column in the output."""
    tmp = dirs["tmp"]
    data = write_jsonl(tmp / "noid.jsonl", [{"text": f"row {i}"} for i in range(600)])
    fingerprint = load_source(DataSpec(str(data))).fingerprint
    ids = list(range(600))
    feats = write_features(tmp / "f2", ids, dirs["x"], fingerprint)
    labels = write_run(tmp / "l2", ids, {i for i in ids if dirs["y"][i]}, data_fingerprint=fingerprint)
    invoke("predict", "--features", feats, "--labels", labels, "--out", tmp / "p2", "--trials", 3)
    invoke("filter", "--predictor", tmp / "p2", "--features", feats, "--data", data, "--out", tmp / "kept.jsonl",
           "--top-frac", 0.05)
    rows = [json.loads(line) for line in (tmp / "kept.jsonl").read_text().splitlines()]
    assert len(rows) == 570 and all(r["text"] == f"row {r['id']}" for r in rows)
    assert all(isinstance(r["id"], int) for r in rows)
    assert sum(dirs["y"][r["id"]] for r in rows) <= 3  # the top 5% are (almost) all the 30 positives


@pytest.mark.parametrize("case, words", [
    ("no positives", "0 memorized examples out of 600"),
    ("missing features", "no such run directory"),
    ("disjoint", "share no example_id"),
    ("other data", "different data or protocol"),
    ("unknown feature", "'perplexity' is not one of"),
])
def test_predict_bad_input(invoke, dirs, case, words):
    tmp = dirs["tmp"]
    feats, labels, extra = dirs["feats"], dirs["labels"], []
    if case == "no positives":
        fingerprint = load_source(DataSpec(dirs["data"])).fingerprint
        labels = write_run(tmp / "none", dirs["ids"], set(), data_fingerprint=fingerprint)
    elif case == "missing features":
        feats = str(tmp / "nowhere")
    elif case == "disjoint":
        feats = write_features(tmp / "other", [f"z{i}" for i in range(600)], dirs["x"],
                               load_source(DataSpec(dirs["data"])).fingerprint)
    elif case == "other data":
        feats = write_features(tmp / "other", dirs["ids"], dirs["x"], "sha256:other")
    else:
        extra = ["--feature", "perplexity"]
    result = invoke("predict", "--features", feats, "--labels", labels, "--out", tmp / "pred", *extra, code=2)
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ") and words in result.output
    assert not (tmp / "pred" / "predict.json").exists()


def test_filter_bad_input(invoke, dirs):
    tmp = dirs["tmp"]
    invoke("predict", "--features", dirs["feats"], "--labels", dirs["labels"], "--out", tmp / "pred", "--trials", 2)
    common = ["filter", "--predictor", tmp / "pred", "--features", dirs["feats"], "--out", tmp / "kept.jsonl"]
    result = invoke(*common, "--data", dirs["data"], "--threshold", 0.5, "--top-frac", 0.1, code=2)
    assert "exactly one of --threshold, --top-frac, --top-n and --as-many-as" in result.output
    other = write_jsonl(tmp / "other.jsonl", [{"id": "d0", "text": "x"}])
    result = invoke(*common, "--data", other, "--threshold", 0.5, code=2)
    assert "computed on other data" in result.output and not (tmp / "kept.jsonl").exists()
    result = invoke(*common[:2], tmp / "nowhere", *common[3:], "--data", dirs["data"], "--top-frac", 0.1, code=2)
    assert result.output.startswith("Error: cannot load the predictor")


def test_labels_written_back_by_pandas_are_read_the_same(invoke, dirs):
    """A results.parquet re-saved by pandas (example_id as large_string) gives the same predictor."""
    import pandas as pd

    tmp = dirs["tmp"]
    invoke("predict", "--features", dirs["feats"], "--labels", dirs["labels"], "--out", tmp / "a", "--trials", 3)
    results = Path(dirs["labels"]) / "results.parquet"
    pd.read_parquet(results).to_parquet(results, index=False)
    assert pq.read_schema(results).field("example_id").type == pa.large_string()
    invoke("predict", "--features", dirs["feats"], "--labels", dirs["labels"], "--out", tmp / "b", "--trials", 3)
    a, b = (json.loads((tmp / d / "predict.json").read_text()) for d in "ab")
    assert a["resampled"] == b["resampled"] and a["n_positive"] == b["n_positive"] == 30


def test_cross_fitted_risk_never_scores_an_example_with_its_own_label():
    """Flipping one example's label does not move its own cross-fitted risk (its fold's model never saw it)."""
    from evalmem.predict import cross_fitted

    x, y = synthetic(n=400, n_pos=40, separation=3.0, seed=3)
    risk = cross_fitted(x, y, neg_ratio=3, folds=5, seed=0)
    assert risk[y].mean() > risk[~y].mean() + 0.3
    flipped = y.copy()
    i = int(np.flatnonzero(y)[0])
    flipped[i] = False
    again = cross_fitted(x, flipped, neg_ratio=3, folds=5, seed=0)
    assert np.isclose(again[i], risk[i], atol=0.2)  # the same fold structure keeps it out of its own fit


def test_filter_drops_the_riskiest_or_as_many_at_random(invoke, dirs):
    tmp = dirs["tmp"]
    invoke("predict", "--features", dirs["feats"], "--labels", dirs["labels"], "--out", tmp / "pred", "--trials", 3)
    risk = pq.read_table(tmp / "pred" / "risk.parquet").to_pydict()
    assert risk["example_id"] == sorted(dirs["ids"])
    common = ["filter", "--predictor", tmp / "pred", "--features", dirs["feats"], "--data", dirs["data"]]
    invoke(*common, "--as-many-as", dirs["labels"], "--out", tmp / "top.jsonl")
    invoke(*common, "--as-many-as", dirs["labels"], "--random", "--out", tmp / "random.jsonl")
    kept = {name: {json.loads(line)["id"] for line in (tmp / f"{name}.jsonl").read_text().splitlines()}
            for name in ("top", "random")}
    riskiest = {i for _, i in sorted(zip(risk["risk"], risk["example_id"]), reverse=True)[:30]}
    assert len(kept["top"]) == len(kept["random"]) == 570
    assert set(dirs["ids"]) - kept["top"] == riskiest
    positives = {i for i, hit in zip(dirs["ids"], dirs["y"]) if hit}
    assert len(positives - kept["top"]) >= 28 and len(positives - kept["random"]) <= 6
    result = invoke(*common, "--top-n", 3, "--top-frac", 0.1, "--out", tmp / "x.jsonl", code=2)
    assert "exactly one of --threshold, --top-frac, --top-n and --as-many-as" in result.output
