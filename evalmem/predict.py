"""The memorization risk model: its protocol, its intervals, and the saved model as data.

`predict` (the paper's protocol): positives are the examples the student memorized, negatives are
resampled 1:neg_ratio in every trial, test_size of that balanced set is held out; a logistic regression
on standardized features (scikit-learn Pipeline) reports ROC-AUC, precision and recall (threshold 0.5)
and standardized coefficients, mean ± std over trials. Because resampling inflates precision, every
trial is ALSO scored on all examples it did not train on, at their real base rate.
risk.parquet holds every example's cross-fitted risk: scored by a model fit on the other folds, never on its
own label, so ranking the training data by it is honest (`filter` and the risk-filtering experiment use it).
On it, at the real base rate, `intervals` gives ROC-AUC and average precision with stratified bootstrap
intervals and precision and recall at the threshold with Wilson intervals.

The saved model (model.json) is fit on all positives and neg_ratio times as many sampled negatives, so its
probabilities assume that 1:neg_ratio prior; a ranking (`filter --top-frac`) does not depend on it. It is
stored as numbers (the scaler's mean and scale, the coefficients and intercept) and rebuilt into the same
scikit-learn Pipeline on loading; a pickle in a predictor directory is refused, never loaded, since
loading a pickle can run any code and predictor directories are shared.

Curves for the report (predict.json): each trial's held-out ROC curve interpolated on a common grid of false
positive rates, and its precision-recall curve at the real base rate on a grid of recalls (interpolated
precision: the best precision at that recall or more), mean ± std over trials.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from evalmem.analysis import check_protocol, load_run, read_settings
from evalmem.errors import InputError, first_line
from evalmem.profile import MEMBERSHIP
from evalmem.settings import COUNT_FEATURES, DEFAULT_FEATURES, FEATURES, PredictSettings, longest_prefix
from evalmem.store import make_dir, read_results, write_atomic, write_json

KNOWN_FEATURES = FEATURES + COUNT_FEATURES + MEMBERSHIP


def make_model():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def load_features(features_dir: str | Path, columns) -> tuple[dict, pa.Table]:
    path = Path(features_dir)
    settings = read_settings(path, "features.parquet")
    return settings, read_results(path / "features.parquet", ["example_id", *columns])


def feature_table(features_dir, columns, counts_dir=None, scores_dir=None) -> tuple[dict, pa.Table]:
    """The settings of `features_dir` and its `columns`, with the duplicate counts of `counts_dir` (`evalmem
    dupcount`) and the membership scores of `scores_dir` (`extract --mode screen`) on the same data joined where
    `columns` name them."""
    settings, feats = load_features(features_dir, [c for c in columns if c in FEATURES])
    for names, where, what, results in ((COUNT_FEATURES, counts_dir, "--counts (`evalmem dupcount`)", "counts"),
                                        (MEMBERSHIP, scores_dir, "--scores (`evalmem extract --mode screen`)",
                                         "results")):
        wanted = [c for c in columns if c in names]
        if not wanted:
            continue
        if where is None:
            raise InputError(f"feature {wanted[0]} needs {what}")
        other = read_settings(Path(where), f"{results}.parquet")
        longest = longest_prefix(other["prefix_len"])
        check_protocol([(str(features_dir), settings), (str(where), {**other, "prefix_len": longest})])
        extra = read_results(Path(where) / f"{results}.parquet", ["example_id", *wanted], prefix_len=longest)
        feats = feats.join(extra, "example_id", join_type="inner")
    return settings, feats


def matrix(table: pa.Table, columns) -> np.ndarray:
    """The feature matrix; duplicate counts enter as log(1 + count)."""
    x = [table[c].to_numpy().astype(np.float64) for c in columns]
    return np.column_stack([np.log1p(v) if c in COUNT_FEATURES else v for v, c in zip(x, columns)])


def labeled(features_dir, labels_dir, columns, counts_dir=None, prefix_len: int | None = None, scores_dir=None
            ) -> tuple[list, np.ndarray, np.ndarray, dict]:
    """Example ids, feature matrix and student-memorized labels (at `prefix_len` for a run of several) of the
    examples both directories hold, and the features' settings."""
    settings, feats = feature_table(features_dir, columns, counts_dir, scores_dir)
    labels = load_run("labels", "run", labels_dir, prefix_len)
    check_protocol([(str(features_dir), settings), (str(labels_dir), labels.settings)])
    joined = feats.join(labels.table.select(["example_id", "exact_match"]), "example_id",
                        join_type="inner").sort_by("example_id")
    if joined.num_rows == 0:
        raise InputError(f"{features_dir} and {labels_dir} share no example_id")
    y = joined["exact_match"].to_numpy(zero_copy_only=False).astype(bool)
    return joined["example_id"].to_pylist(), matrix(joined, columns), y, settings


def cross_fitted(x: np.ndarray, y: np.ndarray, neg_ratio: float, folds: int, seed: int) -> np.ndarray:
    """Every example's risk from a model that never saw its label: stratified folds, each scored by a model fit
    on the other folds (positives and 1:neg_ratio resampled negatives, as the trials)."""
    from sklearn.model_selection import StratifiedKFold

    rng, risk = np.random.default_rng(seed), np.zeros(len(y))
    split = StratifiedKFold(n_splits=max(2, min(folds, int(y.sum()))), shuffle=True, random_state=seed)
    try:
        for train, held in split.split(x, y):
            fit = train[resample(y[train], neg_ratio, rng)]
            risk[held] = make_model().fit(x[fit], y[fit]).predict_proba(x[held])[:, 1]
    except ValueError as exc:  # too few positives for the folds
        raise InputError(f"cannot cross-fit the risk on {int(y.sum())} memorized examples: {first_line(exc)}") from exc
    return risk


def resample(y: np.ndarray, neg_ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of every positive and of neg_ratio times as many negatives drawn without replacement."""
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    return np.concatenate([pos, rng.choice(neg, size=min(len(neg), round(neg_ratio * len(pos))), replace=False)])


GRID = np.linspace(0, 1, 101)  # false positive rates (ROC) and recalls (precision-recall) the curves share


def roc_on_grid(y: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """True positive rate at each false positive rate of GRID."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, prob)
    tpr = np.interp(GRID, fpr, tpr)
    tpr[0] = 0.0  # a curve starts at (0, 0) even where several examples tie at the top score
    return tpr


def pr_on_grid(y: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Interpolated precision (the best precision at recall r or more) at each recall r of GRID."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, prob)
    precision, recall = precision[::-1], recall[::-1]  # recall ascending
    best = np.maximum.accumulate(precision[::-1])[::-1]
    return best[np.minimum(np.searchsorted(recall, GRID, side="left"), len(best) - 1)]


def trial(x: np.ndarray, y: np.ndarray, neg_ratio: float, test_size: float, rng: np.random.Generator) -> dict:
    """One trial: resample negatives, fit, score the held-out balanced split and everything unused."""
    from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score
    from sklearn.model_selection import train_test_split

    idx = resample(y, neg_ratio, rng)
    train, test = train_test_split(idx, test_size=test_size, stratify=y[idx], random_state=int(rng.integers(2**31)))
    model = make_model().fit(x[train], y[train])
    unused = np.setdiff1d(np.arange(len(y)), train)
    out = {}
    for key, rows in (("resampled", test), ("base_rate_eval", unused)):
        prob = model.predict_proba(x[rows])[:, 1]
        out[key] = {"roc_auc": roc_auc_score(y[rows], prob),
                    "average_precision": average_precision_score(y[rows], prob),
                    "precision": precision_score(y[rows], prob >= 0.5, zero_division=0),
                    "recall": recall_score(y[rows], prob >= 0.5, zero_division=0), "base_rate": float(y[rows].mean())}
        out[key + "_curve"] = roc_on_grid(y[rows], prob) if key == "resampled" else pr_on_grid(y[rows], prob)
    out["coefficients"] = model[-1].coef_[0]
    return out


def curves(runs: list[dict]) -> dict:
    """The trials' ROC (held-out, resampled) and precision-recall (real base rate) curves, mean ± std."""
    def band(key):
        values = np.array([r[key] for r in runs])
        return np.round(values.mean(0), 4).tolist(), np.round(values.std(0), 4).tolist()

    tpr, tpr_std = band("resampled_curve")
    precision, precision_std = band("base_rate_eval_curve")
    return {"roc": {"fpr": np.round(GRID, 4).tolist(), "tpr": tpr, "tpr_std": tpr_std},
            "pr_base_rate": {"recall": np.round(GRID, 4).tolist(), "precision": precision,
                             "precision_std": precision_std}}


def mean_std(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std())}


def fit_predictor(x: np.ndarray, y: np.ndarray, names, trials: int, neg_ratio: float, test_size: float,
                  seed: int):
    """Run the trials; return the report, and a final model fit on all positives and resampled negatives."""
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise InputError(f"the labels have {n_pos} memorized examples out of {len(y)}: a predictor needs both "
                         "memorized and unmemorized examples")
    if not np.isfinite(x).all():
        raise InputError("the features hold NaN or infinite values")
    rng = np.random.default_rng(seed)
    try:
        runs = [trial(x, y, neg_ratio, test_size, rng) for _ in range(trials)]
        idx = resample(y, neg_ratio, rng)
        final = make_model().fit(x[idx], y[idx])
    except ValueError as exc:  # e.g. too few positives to hold out both classes
        raise InputError(f"cannot fit the predictor on {n_pos} memorized examples: {first_line(exc)}") from exc
    report = {"features": list(names), "n_examples": len(y), "n_positive": n_pos, "base_rate": n_pos / len(y),
              "trials": trials, "neg_ratio": neg_ratio, "test_size": test_size, "seed": seed, "threshold": 0.5}
    for key in ("resampled", "base_rate_eval"):
        report[key] = {m: mean_std([r[key][m] for r in runs]) for m in runs[0][key]}
    coefs = np.array([r["coefficients"] for r in runs])
    report["coefficients"] = {n: mean_std(coefs[:, i]) for i, n in enumerate(names)}
    report["final_model"] = {"coefficients": dict(zip(names, final[-1].coef_[0].tolist())),
                             "intercept": float(final[-1].intercept_[0])}
    report.update(curves(runs))
    return report, final


CONFIDENCE = 0.95
INTERVAL_METHOD = ("stratified bootstrap (memorized and unmemorized examples resampled separately: "
                   "scipy.stats.bootstrap, two samples), percentile interval, for roc_auc and average_precision; "
                   "Wilson score interval (scipy.stats.binomtest) for precision and recall at the threshold")
BOOTSTRAP_BATCH = 2**22  # resampled scores held at once across a batch of resamples (memory, not results)


def tie_counts(groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Per resample (rows of `groups`, tie-group ids), how many of its examples fall in each tie group."""
    rows = groups.reshape(-1, groups.shape[-1])
    offsets = (rows + n_groups * np.arange(len(rows))[:, None]).ravel()
    return np.bincount(offsets, minlength=n_groups * len(rows)).reshape(len(rows), n_groups)


def ranking_scores(pos: np.ndarray, neg: np.ndarray, axis: int = -1, *, n_groups: int) -> np.ndarray:
    """ROC-AUC and average precision (scikit-learn's definitions, ties as one threshold) of resamples whose
    memorized (`pos`) and unmemorized (`neg`) examples are given by tie group (0 = the highest score): counted
    per group, so a resample of a million examples costs a count, not a sort."""
    pos, neg = np.moveaxis(pos, axis, -1), np.moveaxis(neg, axis, -1)
    tp, fp = tie_counts(pos, n_groups), tie_counts(neg, n_groups)
    cum_tp, cum_fp = tp.cumsum(-1), fp.cumsum(-1)
    auc = (fp * (cum_tp - tp / 2)).sum(-1) / (pos.shape[-1] * neg.shape[-1])  # ties count one half
    precision = np.divide(cum_tp, cum_tp + cum_fp, out=np.zeros(cum_tp.shape), where=tp > 0)
    ap = (tp * precision).sum(-1) / pos.shape[-1]  # precision at each threshold weighted by the recall gained
    return np.stack([auc.reshape(pos.shape[:-1]), ap.reshape(pos.shape[:-1])])


def wilson(successes: int, trials: int) -> dict:
    """A proportion with its Wilson score interval; none observed (nothing flagged): 0 in [0, 1]."""
    from scipy.stats import binomtest

    if trials == 0:
        return {"estimate": 0.0, "low": 0.0, "high": 1.0}
    ci = binomtest(successes, trials).proportion_ci(CONFIDENCE, method="wilson")
    return {"estimate": successes / trials, "low": float(ci.low), "high": float(ci.high)}


def intervals(y: np.ndarray, risk: np.ndarray, n_resamples: int, seed: int, threshold: float = 0.5) -> dict:
    """ROC-AUC and average precision of `risk` with stratified bootstrap percentile intervals, and precision
    and recall at `threshold` with Wilson intervals, at the real base rate of `y` (predict.json `intervals`)."""
    from scipy.stats import bootstrap

    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if min(n_pos, n_neg) < 2:
        raise InputError(f"intervals need at least 2 memorized and 2 unmemorized examples, got {n_pos} and {n_neg}")
    _, groups = np.unique(-risk, return_inverse=True)
    statistic = partial(ranking_scores, n_groups=int(groups.max()) + 1)
    samples = (groups[y], groups[~y])
    estimate = statistic(*samples)  # the same computation as every resample's, so a degenerate interval holds it
    boot = bootstrap(samples, statistic, n_resamples=n_resamples, vectorized=True,
                     batch=max(1, BOOTSTRAP_BATCH // len(y)), confidence_level=CONFIDENCE, method="percentile",
                     rng=np.random.default_rng(seed))
    low, high = boot.confidence_interval
    flagged = risk >= threshold
    tp = int((flagged & y).sum())
    return {"method": INTERVAL_METHOD, "confidence": CONFIDENCE, "n_resamples": n_resamples, "seed": seed,
            "scores": "cross-fitted risk",
            **{name: {"estimate": float(estimate[i]), "low": float(low[i]), "high": float(high[i])}
               for i, name in enumerate(("roc_auc", "average_precision"))},
            "precision": wilson(tp, int(flagged.sum())), "recall": wilson(tp, n_pos), "threshold": threshold,
            "base_rate": n_pos / len(y)}


MODEL_FORMAT = "evalmem-predictor/1"
PICKLES = (".joblib", ".pkl", ".pickle")  # never loaded: unpickling runs whatever code the file names


def model_document(model, names, fingerprint: str | None, neg_ratio: float) -> dict:
    """The fitted Pipeline as data (model.json): every number its predict_proba uses, and where it came from."""
    import sklearn

    from evalmem import __version__

    scaler, logistic = model[0], model[-1]
    return {"format": MODEL_FORMAT, "model": "scikit-learn StandardScaler then LogisticRegression",
            "features": list(names), "scaler": {"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist()},
            "logistic_regression": {"coefficients": logistic.coef_[0].tolist(),
                                    "intercept": float(logistic.intercept_[0])},
            "neg_ratio": neg_ratio, "data_fingerprint": fingerprint,
            "versions": {"evalmem": __version__, "scikit-learn": sklearn.__version__}}


def numbers(doc: dict, section: str, key: str, size: int | None) -> np.ndarray:
    """`doc[section][key]`: `size` finite numbers (one number where `size` is None), checked."""
    part = doc.get(section)
    value = part.get(key) if isinstance(part, dict) else None
    values = [value] if size is None else value
    try:
        ok = isinstance(values, list) and len(values) == (size or 1) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    except OverflowError:  # an integer beyond float64
        ok = False
    if not ok:
        raise ValueError(f"{section}.{key} must be {'one finite number' if size is None else f'{size} finite numbers'}")
    return np.asarray(values, dtype=np.float64)


def rebuild(doc: dict) -> tuple:
    """The Pipeline and feature names of a model.json document, its shape checked (ValueError naming the
    first problem)."""
    if doc.get("format") != MODEL_FORMAT:
        raise ValueError(f"format is not {MODEL_FORMAT!r}")
    names = doc.get("features")
    if not (isinstance(names, list) and names and all(n in KNOWN_FEATURES for n in names)
            and len(set(names)) == len(names)):
        raise ValueError(f"features must be distinct names among {', '.join(KNOWN_FEATURES)}")
    model = make_model()
    scaler, logistic = model[0], model[-1]
    scaler.mean_ = numbers(doc, "scaler", "mean", len(names))
    scaler.scale_ = numbers(doc, "scaler", "scale", len(names))
    if (scaler.scale_ <= 0).any():
        raise ValueError("scaler.scale must be positive")
    logistic.coef_ = numbers(doc, "logistic_regression", "coefficients", len(names))[None, :]
    logistic.intercept_ = numbers(doc, "logistic_regression", "intercept", None)
    logistic.classes_ = np.array([False, True])  # the labels: memorized or not
    scaler.n_features_in_ = logistic.n_features_in_ = len(names)
    return model, names


def not_a_number(constant: str):
    raise ValueError(f"{constant} is not a JSON number")


def read_object(path: Path) -> dict:
    """A JSON object; NaN and Infinity are refused, as JSON has no such numbers."""
    value = json.loads(path.read_text(), parse_constant=not_a_number)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def load_predictor(directory: str | Path) -> tuple:
    """(Pipeline, feature names, data fingerprint, predict.json) of an `evalmem predict` directory; the model
    rebuilt from model.json, never from a pickle."""
    directory = Path(directory)

    def refuse(why: str):
        return InputError(f"cannot load the predictor in {directory}: {why}")

    def read(name: str) -> dict:
        try:
            return read_object(directory / name)
        except FileNotFoundError:
            raise refuse(f"no {name} (a directory written by `evalmem predict` holds one)") from None
        except (OSError, ValueError) as exc:
            raise refuse(f"{name}: {first_line(exc)}") from exc

    if not directory.is_dir():
        raise refuse("no such directory")
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLES)
    path = directory / "model.json"
    if path.is_file():
        with path.open("rb") as f:
            if f.read(1) == b"\x80":  # the PROTO opcode that pickles (protocol 2 and later) start with
                pickles.insert(0, path.name)
    if pickles:
        raise refuse(f"{pickles[0]} is a pickle, which evalmem never loads (loading one can run any code); fit "
                     "the predictor again with `evalmem predict` and share its model.json")
    doc, report = read("model.json"), read("predict.json")
    try:
        model, names = rebuild(doc)
    except ValueError as exc:
        raise refuse(f"model.json is not an evalmem predictor: {exc}") from exc
    return model, names, doc.get("data_fingerprint"), report


def predict_run(features: str, labels: str, out: str, columns, protocol: PredictSettings,
                counts: str | None = None, prefix_len: int | None = None, scores: str | None = None) -> dict:
    """`evalmem predict`: fit and evaluate; write OUT/predict.json, OUT/model.json and OUT/risk.parquet (every
    example's cross-fitted risk)."""
    from sklearn.metrics import roc_auc_score

    columns = list(columns or DEFAULT_FEATURES)
    ids, x, y, settings = labeled(features, labels, columns, counts, prefix_len, scores)
    report, model = fit_predictor(x, y, columns, protocol.trials, protocol.neg_ratio, protocol.test_size,
                                  protocol.seed)
    risk = cross_fitted(x, y, protocol.neg_ratio, protocol.folds, protocol.seed)
    report["cross_fitted"] = {"folds": protocol.folds, "roc_auc": float(roc_auc_score(y, risk))}
    report["intervals"] = intervals(y, risk, protocol.bootstrap, protocol.seed)
    report.update({"features_dir": str(features), "labels_dir": str(Path(labels).resolve()), "counts_dir": counts,
                   "scores_dir": scores,
                   "data_fingerprint": settings.get("data_fingerprint"), "model_file": "model.json",
                   "risk_file": "risk.parquet"})
    out = make_dir(out)
    write_json(out / "model.json", model_document(model, columns, report["data_fingerprint"], protocol.neg_ratio))
    table = pa.table({"example_id": ids, "risk": risk, "memorized": y})
    write_atomic(out / "risk.parquet", lambda tmp: pq.write_table(table, tmp))
    write_json(out / "predict.json", report)
    return report
