"""The memorization predictor on synthetic features, its intervals, the model saved as data, and `evalmem
predict`."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import one_line_error, synthetic, write_features, write_run
from evalmem.data import load_source
from evalmem.errors import InputError
from evalmem.predict import fit_predictor, intervals, labeled, load_predictor
from evalmem.settings import DEFAULT_FEATURES, DataSpec


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


def test_predict_writes_the_model_as_data(invoke, predictor_data):
    """predict.json (also printed), risk.parquet and model.json; the model rebuilt from model.json scores examples
    as the model `fit_predictor` returns, bit for bit (JSON writes float64 in the digits that read back the same)."""
    d, tmp = predictor_data, predictor_data["tmp"]
    columns = ["teacher_ppl", "min_k_logprob"]
    result = invoke("predict", "--features", d["feats"], "--labels", d["labels"], "--out", tmp / "pred",
                    "--trials", 10, "--bootstrap", 200, *[a for c in columns for a in ("--feature", c)])
    report = json.loads((tmp / "pred" / "predict.json").read_text())
    assert json.loads(result.stdout) == report
    assert report["features"] == columns and report["n_positive"] == 30
    assert report["resampled"]["roc_auc"]["mean"] > 0.99
    assert report["model_file"] == "model.json" and report["risk_file"] == "risk.parquet"
    assert sorted(p.name for p in (tmp / "pred").iterdir()) == ["model.json", "predict.json", "risk.parquet"]
    risk = pq.read_table(tmp / "pred" / "risk.parquet").to_pydict()
    assert risk["example_id"] == sorted(d["ids"])
    top = {i for i, r in zip(risk["example_id"], risk["risk"]) if r >= 0.5}
    assert len(top & {i for i, hit in zip(d["ids"], d["y"]) if hit}) >= 25

    _, x, y, _ = labeled(d["feats"], d["labels"], columns)
    _, fitted = fit_predictor(x, y, columns, trials=10, neg_ratio=3.0, test_size=0.3, seed=0)
    model, names, fingerprint, saved_report = load_predictor(tmp / "pred")
    assert names == columns and fingerprint == report["data_fingerprint"] and saved_report == report
    other = np.random.default_rng(1).normal(scale=3, size=(500, 2))
    for rows in (x, other):
        assert np.array_equal(model.predict_proba(rows), fitted.predict_proba(rows))
    doc = json.loads((tmp / "pred" / "model.json").read_text())
    assert doc["logistic_regression"]["coefficients"] == list(report["final_model"]["coefficients"].values())
    assert set(doc["versions"]) == {"evalmem", "scikit-learn"} and doc["neg_ratio"] == 3.0

    ci = report["intervals"]
    assert ci["n_resamples"] == 200 and ci["scores"] == "cross-fitted risk" and ci["base_rate"] == 0.05
    assert np.isclose(ci["roc_auc"]["estimate"], report["cross_fitted"]["roc_auc"], rtol=0, atol=600 * 2.3e-16)
    for metric in ("roc_auc", "average_precision", "precision", "recall"):
        assert ci[metric]["low"] <= ci[metric]["estimate"] <= ci[metric]["high"], metric


@pytest.mark.parametrize("case, words", [
    ("no positives", "0 memorized examples out of 600"),
    ("missing features", "no such run directory"),
    ("disjoint", "share no example_id"),
    ("other data", "different data or protocol"),
    ("unknown feature", "'perplexity' is not one of"),
    ("no resamples", "Invalid value for '--bootstrap'"),
])
def test_predict_bad_input(invoke, predictor_data, case, words):
    d, tmp = predictor_data, predictor_data["tmp"]
    feats, labels, extra = d["feats"], d["labels"], []
    fingerprint = load_source(DataSpec(d["data"])).fingerprint
    if case == "no positives":
        labels = write_run(tmp / "none", d["ids"], set(), data_fingerprint=fingerprint)
    elif case == "missing features":
        feats = str(tmp / "nowhere")
    elif case == "disjoint":
        feats = write_features(tmp / "other", [f"z{i}" for i in range(600)], d["x"], fingerprint)
    elif case == "other data":
        feats = write_features(tmp / "other", d["ids"], d["x"], "sha256:other")
    elif case == "no resamples":
        extra = ["--bootstrap", 0]
    else:
        extra = ["--feature", "perplexity"]
    result = invoke("predict", "--features", feats, "--labels", labels, "--out", tmp / "pred", *extra, code=2)
    one_line_error(result.output, words)
    assert not (tmp / "pred" / "predict.json").exists() and not (tmp / "pred" / "model.json").exists()


def test_labels_written_back_by_pandas_are_read_the_same(invoke, predictor_data):
    """A results.parquet re-saved by pandas (example_id as large_string) gives the same predictor."""
    import pandas as pd

    d, tmp = predictor_data, predictor_data["tmp"]
    invoke("predict", "--features", d["feats"], "--labels", d["labels"], "--out", tmp / "a", "--trials", 3)
    results = Path(d["labels"]) / "results.parquet"
    pd.read_parquet(results).to_parquet(results, index=False)
    assert pq.read_schema(results).field("example_id").type == pa.large_string()
    invoke("predict", "--features", d["feats"], "--labels", d["labels"], "--out", tmp / "b", "--trials", 3)
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


def planted(n_pos=40, n_neg=160, shift=1.0, seed=0, decimals=1):
    """Labels and scores: positives shifted by `shift`, rounded to `decimals` so that many scores tie."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    return y, np.round(rng.normal(size=len(y)) + shift * y, decimals)


def test_intervals_equal_scipy_bootstrap_of_sklearn_metrics():
    """The AUC and average-precision intervals are scipy.stats.bootstrap's own (percentile, the two classes as
    two samples, same seed) of scikit-learn's metrics on the resampled scores, though computed from tie counts."""
    from scipy.stats import bootstrap
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, risk = planted()

    def metrics(pos, neg):
        labels, scores = np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]
        return roc_auc_score(labels, scores), average_precision_score(labels, scores)

    theirs = bootstrap((risk[y], risk[~y]), metrics, n_resamples=300, vectorized=False, method="percentile",
                       confidence_level=0.95, rng=np.random.default_rng(5)).confidence_interval
    ours = intervals(y, risk, n_resamples=300, seed=5)
    tol = len(y) * np.finfo(np.float64).eps  # sums over the examples, in another order
    for i, metric in enumerate(("roc_auc", "average_precision")):
        np.testing.assert_allclose([ours[metric]["low"], ours[metric]["high"]], [theirs.low[i], theirs.high[i]],
                                   rtol=0, atol=tol)
    for metric, score in (("roc_auc", roc_auc_score), ("average_precision", average_precision_score)):
        assert np.isclose(ours[metric]["estimate"], score(y, risk), rtol=0, atol=tol)
    assert (ours["confidence"], ours["n_resamples"], ours["threshold"], ours["base_rate"]) == (0.95, 300, 0.5, 0.2)


def test_precision_and_recall_have_wilson_intervals():
    """Precision (of the flagged) and recall (of the memorized) at the threshold, each in the Wilson score
    interval by its formula."""
    from scipy.stats import norm

    y, risk = planted()
    ours = intervals(y, risk, n_resamples=10, seed=0)
    flagged = risk >= 0.5
    z = norm.ppf(0.975)
    for metric, k, n in (("precision", (flagged & y).sum(), flagged.sum()), ("recall", (flagged & y).sum(), y.sum())):
        p = k / n
        centre, half = (p + z**2 / (2 * n)) / (1 + z**2 / n), z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n
                                                                                           + z**2 / (4 * n**2))
        np.testing.assert_allclose([ours[metric][key] for key in ("estimate", "low", "high")],
                                   [p, centre - half, centre + half], rtol=1e-12)


def test_auc_interval_covers_the_population_auc():
    """Scores N(delta, 1) for memorized and N(0, 1) for the others have AUC Phi(delta / sqrt 2); the 95% interval
    holds it in about 95% of 1000 simulated data sets (within 3 binomial standard errors: 0.95 +- 0.021)."""
    from scipy.stats import norm

    delta, n_pos, n_neg, sims = 1.0, 50, 150, 1000
    truth = norm.cdf(delta / np.sqrt(2))
    rng = np.random.default_rng(0)
    covered = 0
    for s in range(sims):
        y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
        ci = intervals(y, rng.normal(size=len(y)) + delta * y, n_resamples=500, seed=s)["roc_auc"]
        covered += ci["low"] <= truth <= ci["high"]
    assert abs(covered / sims - 0.95) < 3 * np.sqrt(0.95 * 0.05 / sims), covered / sims


def test_degenerate_intervals():
    """Perfect separation: every resample's AUC and AP is 1, the interval [1, 1]; nothing flagged: precision
    is 0 in [0, 1], recall 0 in Wilson's interval; fewer than two examples of a class: refused."""
    y = np.r_[np.ones(20, bool), np.zeros(80, bool)]
    risk = np.where(y, 0.9, 0.1) + np.linspace(0, 0.05, 100)
    ci = intervals(y, risk, n_resamples=200, seed=0)
    for metric in ("roc_auc", "average_precision", "precision", "recall"):
        assert (ci[metric]["estimate"], ci[metric]["high"]) == (1.0, 1.0), metric
    assert ci["roc_auc"]["low"] == ci["average_precision"]["low"] == 1.0 and ci["recall"]["low"] > 0.8
    quiet = intervals(y, risk / 10, n_resamples=200, seed=0)
    assert quiet["precision"] == {"estimate": 0.0, "low": 0.0, "high": 1.0}
    assert quiet["recall"]["estimate"] == quiet["recall"]["low"] == 0.0 < quiet["recall"]["high"] < 0.2
    assert quiet["roc_auc"]["low"] == 1.0
    with pytest.raises(InputError, match="at least 2 memorized and 2 unmemorized examples, got 1 and 99"):
        intervals(np.r_[True, np.zeros(99, bool)], risk, n_resamples=10, seed=0)
