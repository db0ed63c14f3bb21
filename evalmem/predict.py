"""The memorization risk model and risk filtering.

`predict` (the paper's protocol): positives are the examples the student memorized, negatives are
resampled 1:neg_ratio in every trial, test_size of that balanced set is held out; a logistic regression
on standardized features (scikit-learn Pipeline) reports ROC-AUC, precision and recall (threshold 0.5)
and standardized coefficients, mean ± std over trials. Because resampling inflates precision, every
trial is ALSO scored on all examples it did not train on, at their real base rate.
The saved model (model.joblib) is fit on all positives and neg_ratio times as many sampled negatives,
so its probabilities assume that 1:neg_ratio prior; `filter --top-frac` does not depend on it.

Curves for the report (predict.json): each trial's held-out ROC curve interpolated on a common grid of false
positive rates, and its precision-recall curve at the real base rate on a grid of recalls (interpolated
precision: the best precision at that recall or more), mean ± std over trials. risk.parquet holds every
example's out-of-sample risk: its mean predicted probability over the trials that did not train on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from evalmem.analysis import check_protocol, read_settings
from evalmem.errors import InputError, first_line
from evalmem.settings import DEFAULT_FEATURES, FEATURES, DataSpec, PredictSettings
from evalmem.store import make_dir, read_results, write_atomic, write_json


def make_model():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def load_features(features_dir: str | Path, columns) -> tuple[dict, pa.Table]:
    path = Path(features_dir)
    settings = read_settings(path, "features.parquet")
    return settings, read_results(path / "features.parquet", ["example_id", *columns])


def labeled(features_dir, labels_dir, columns) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """Feature matrix, student-memorized labels and example ids of the examples both directories hold."""
    settings, feats = load_features(features_dir, columns)
    labels_path = Path(labels_dir)
    check_protocol([(str(features_dir), settings), (str(labels_dir), read_settings(labels_path, "results.parquet"))])
    labels = read_results(labels_path / "results.parquet", ["example_id", "exact_match"])
    joined = feats.join(labels, "example_id", join_type="inner")
    if joined.num_rows == 0:
        raise InputError(f"{features_dir} and {labels_dir} share no example_id")
    x = np.column_stack([joined[c].to_numpy().astype(np.float64) for c in columns])
    return x, joined["exact_match"].to_numpy(zero_copy_only=False).astype(bool), joined["example_id"]


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
    out = {"unused": unused}
    for key, rows in (("resampled", test), ("base_rate_eval", unused)):
        prob = out[f"{key}_prob"] = model.predict_proba(x[rows])[:, 1]
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


def held_out_risk(runs: list[dict], n: int) -> np.ndarray:
    """Each example's mean probability over the trials that did not train on it (NaN: every trial did)."""
    total, count = np.zeros(n), np.zeros(n)
    for r in runs:
        np.add.at(total, r["unused"], r["base_rate_eval_prob"])
        np.add.at(count, r["unused"], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def mean_std(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std())}


def fit_predictor(x: np.ndarray, y: np.ndarray, names, trials: int, neg_ratio: float, test_size: float,
                  seed: int):
    """Run the trials; return the report, a final model fit on all positives and resampled negatives, and each
    example's out-of-sample risk."""
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
    return report, final, held_out_risk(runs, len(y))


def predict_run(features: str, labels: str, out: str, columns, protocol: PredictSettings) -> dict:
    """`evalmem predict`: fit and evaluate; write OUT/model.joblib, OUT/risk.parquet and OUT/predict.json."""
    import joblib

    columns = list(columns or DEFAULT_FEATURES)
    unknown = sorted(set(columns) - set(FEATURES))
    if unknown:
        raise InputError(f"unknown feature {', '.join(unknown)}: choose from {', '.join(FEATURES)}")
    x, y, ids = labeled(features, labels, columns)
    report, model, risk = fit_predictor(x, y, columns, protocol.trials, protocol.neg_ratio, protocol.test_size,
                                        protocol.seed)
    report.update({"features_dir": str(features), "labels_dir": str(Path(labels).resolve()),
                   "model_file": "model.joblib", "risk_file": "risk.parquet"})
    out = make_dir(out)
    write_atomic(out / "model.joblib", lambda tmp: joblib.dump({"model": model, "features": columns}, tmp))
    risks = pa.table({"example_id": ids, "risk": pa.array(risk, mask=np.isnan(risk))})
    write_atomic(out / "risk.parquet", lambda tmp: pq.write_table(risks, tmp, write_page_checksum=True))
    write_json(out / "predict.json", report)
    return report


def risky(prob: np.ndarray, threshold: float | None, top_frac: float | None) -> np.ndarray:
    """Which examples the predictor marks: probability >= threshold, or the top_frac share by probability."""
    if top_frac is None:
        return prob >= threshold
    marked = np.zeros(len(prob), dtype=bool)
    marked[np.argsort(-prob, kind="stable")[:int(round(top_frac * len(prob)))]] = True
    return marked


def filter_run(predictor: str, features: str, data: DataSpec, out: str, threshold: float | None,
               top_frac: float | None) -> dict:
    """`evalmem filter`: write DATA without the examples the predictor marks risky."""
    import joblib

    from evalmem.data import load_source

    if (threshold is None) == (top_frac is None):
        raise InputError("give exactly one of --threshold and --top-frac")
    if Path(out).suffix not in (".jsonl", ".parquet"):
        raise InputError(f"--out must end in .jsonl or .parquet, got {out}")
    if Path(out).resolve() == Path(data.path).resolve():
        raise InputError(f"--out {out} is the input --data: write the filtered data to another file")
    try:
        saved = joblib.load(Path(predictor) / "model.joblib")
    except Exception as exc:
        raise InputError(f"cannot load the predictor in {predictor}: {first_line(exc)}") from exc
    settings, feats = load_features(features, saved["features"])
    source = load_source(data)
    if settings.get("data_fingerprint") != source.fingerprint:
        raise InputError(f"{features} was computed on other data than {data.path} (data fingerprints differ)")
    x = np.column_stack([feats[c].to_numpy().astype(np.float64) for c in saved["features"]])
    prob = saved["model"].predict_proba(x)[:, 1]
    dropped = set(pc.filter(feats["example_id"], pa.array(risky(prob, threshold, top_frac))).to_pylist())
    table = source.rows.with_format("arrow")[:]
    if "id" not in table.column_names:  # keep the original ids so results on OUT join results on DATA
        table = table.append_column("id", pa.array(source.ids))
    kept = table.filter(pa.array([i not in dropped for i in source.ids]))
    write_atomic(out, lambda tmp: write_rows(kept, tmp, Path(out).suffix))
    return {"out": str(out), "n_input": table.num_rows, "n_scored": len(prob), "n_dropped": len(dropped),
            "n_kept": kept.num_rows, "threshold": threshold, "top_frac": top_frac}


def write_rows(table: pa.Table, path: Path, fmt: str) -> None:
    """Write rows as Parquet (`fmt` .parquet) or JSON lines."""
    if fmt == ".parquet":
        pq.write_table(table, path)
        return
    with open(path, "w", encoding="utf-8") as f:
        for batch in table.to_batches():
            f.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in batch.to_pylist())
