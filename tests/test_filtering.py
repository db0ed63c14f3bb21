"""`evalmem filter` (the riskiest examples dropped, or as many random ones; the predictor read as data, a pickle
refused) and `evalmem filter-effect` (memorized counts on the kept examples)."""

import json
import os
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import IDS, one_line_error, write_features, write_jsonl, write_run
from evalmem.data import load_source
from evalmem.filtering import dropped_ids
from evalmem.predict import cross_fitted, fit_predictor, labeled, matrix
from evalmem.settings import DataSpec, FilterSettings


def predict(invoke, d, out="pred", *extra):
    invoke("predict", "--features", d["feats"], "--labels", d["labels"], "--out", d["tmp"] / out, "--trials", 3,
           "--bootstrap", 20, *extra)
    return d["tmp"] / out


def kept_ids(path):
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_filter_drops_the_risky_by_threshold(invoke, predictor_data):
    """On the data the predictor was fit on, --threshold P drops the examples whose cross-fitted risk is >= P."""
    d = predictor_data
    pred = predict(invoke, d)
    risk = pq.read_table(pred / "risk.parquet").to_pydict()
    risky = {i for i, r in zip(risk["example_id"], risk["risk"]) if r >= 0.5}
    assert len(risky & {i for i, hit in zip(d["ids"], d["y"]) if hit}) >= 25
    out = d["tmp"] / "kept.parquet"
    result = invoke("filter", "--predictor", pred, "--features", d["feats"], "--data", d["data"], "--out", out,
                    "--threshold", 0.5)
    counts = json.loads(result.stdout)
    kept = pq.read_table(out).to_pydict()
    assert counts == {"out": str(out), "n_input": 600, "n_scored": 600, "n_dropped": len(risky),
                      "n_kept": 600 - len(risky), "random": False}
    assert set(kept["id"]) == set(d["ids"]) - risky and len(kept["id"]) == 600 - len(risky)
    assert all(text == f"example {i}" for i, text in zip(kept["id"], kept["text"]))


@pytest.mark.parametrize("ranking, selection", [
    ("cross-fitted", ["--top-frac", 0.1]), ("cross-fitted", ["--threshold", 0.3]),
    ("saved model", ["--top-frac", 0.1]), ("saved model", ["--threshold", 0.5])])
def test_filter_selects_as_the_fitted_model(invoke, predictor_data, ranking, selection):
    """The selection is the one the fitted objects in memory give: the cross-fitted risk on the predictor's own
    data; on other data the model fit_predictor returns (here rebuilt from model.json)."""
    d, tmp = predictor_data, predictor_data["tmp"]
    columns = ["teacher_ppl", "kl_teacher_baseline"]
    pred = predict(invoke, d, "pred", "--feature", columns[0], "--feature", columns[1])
    ids, x, y, _ = labeled(d["feats"], d["labels"], columns)
    feats, data = d["feats"], d["data"]
    if ranking == "cross-fitted":
        risk = cross_fitted(x, y, neg_ratio=3.0, folds=5, seed=0)
    else:  # other data: other rows, other features, so other fingerprints
        data = write_jsonl(tmp / "other.jsonl", [{"id": f"o{i}", "text": f"other {i}"} for i in range(300)])
        ids = [f"o{i}" for i in range(300)]
        other = np.random.default_rng(2).normal(size=(300, 4)) * 2
        feats = write_features(tmp / "other-feats", ids, other, load_source(DataSpec(str(data))).fingerprint)
        _, model = fit_predictor(x, y, columns, trials=3, neg_ratio=3.0, test_size=0.3, seed=0)
        risk = model.predict_proba(matrix(pq.read_table(f"{feats}/features.parquet"), columns))[:, 1]
    expected = dropped_ids(ids, risk, FilterSettings(**{selection[0][2:].replace("-", "_"): selection[1]}))
    assert 0 < len(expected) < len(ids)
    out = tmp / "kept.jsonl"
    invoke("filter", "--predictor", pred, "--features", feats, "--data", data, "--out", out, *selection)
    assert set(ids) - set(kept_ids(out)) == expected


def test_filter_keeps_row_ids_of_data_without_id_column(invoke, predictor_data):
    """Data without an `id` column: example ids are row indices, kept as an `id` column in the output."""
    d, tmp = predictor_data, predictor_data["tmp"]
    data = write_jsonl(tmp / "noid.jsonl", [{"text": f"row {i}"} for i in range(600)])
    fingerprint = load_source(DataSpec(str(data))).fingerprint
    ids = list(range(600))
    feats = write_features(tmp / "f2", ids, d["x"], fingerprint)
    labels = write_run(tmp / "l2", ids, {i for i in ids if d["y"][i]}, data_fingerprint=fingerprint)
    predict(invoke, dict(d, feats=feats, labels=labels), "p2")
    invoke("filter", "--predictor", tmp / "p2", "--features", feats, "--data", data, "--out", tmp / "kept.jsonl",
           "--top-frac", 0.05)
    rows = [json.loads(line) for line in (tmp / "kept.jsonl").read_text().splitlines()]
    assert len(rows) == 570 and all(r["text"] == f"row {r['id']}" for r in rows)
    assert all(isinstance(r["id"], int) for r in rows)
    assert sum(d["y"][r["id"]] for r in rows) <= 3  # the top 5% are (almost) all the 30 positives


def test_filter_drops_the_riskiest_or_as_many_at_random(invoke, predictor_data):
    d, tmp = predictor_data, predictor_data["tmp"]
    pred = predict(invoke, d)
    risk = pq.read_table(pred / "risk.parquet").to_pydict()
    common = ["filter", "--predictor", pred, "--features", d["feats"], "--data", d["data"]]
    invoke(*common, "--as-many-as", d["labels"], "--out", tmp / "top.jsonl")
    invoke(*common, "--as-many-as", d["labels"], "--random", "--out", tmp / "random.jsonl")
    kept = {name: set(kept_ids(tmp / f"{name}.jsonl")) for name in ("top", "random")}
    riskiest = {i for _, i in sorted(zip(risk["risk"], risk["example_id"]), reverse=True)[:30]}
    assert len(kept["top"]) == len(kept["random"]) == 570
    assert set(d["ids"]) - kept["top"] == riskiest
    positives = {i for i, hit in zip(d["ids"], d["y"]) if hit}
    assert len(positives - kept["top"]) >= 28 and len(positives - kept["random"]) <= 6
    invoke(*common, "--as-many-as", d["labels"], "--random", "--seed", 1, "--out", tmp / "seed1.jsonl")
    assert set(kept_ids(tmp / "seed1.jsonl")) != kept["random"]


@pytest.mark.parametrize("case, words", [
    ("two selections", "exactly one of --threshold, --top-frac, --top-n and --as-many-as"),
    ("other data", "computed on other data"),
    ("no predictor", "cannot load the predictor"),
    ("out not data", "--out must end in .jsonl or .parquet"),
    ("no model.json", "no model.json"),
])
def test_filter_bad_input(invoke, predictor_data, case, words):
    d, tmp = predictor_data, predictor_data["tmp"]
    pred = predict(invoke, d)
    data, out, selection = d["data"], tmp / "kept.jsonl", ["--threshold", 0.5]
    if case == "two selections":
        selection += ["--top-frac", 0.1]
    elif case == "other data":
        data = write_jsonl(tmp / "other.jsonl", [{"id": "d0", "text": "x"}])
    elif case == "no predictor":
        pred = tmp / "nowhere"
    elif case == "out not data":
        out = tmp / "kept.csv"
    else:
        (pred / "model.json").unlink()
    result = invoke("filter", "--predictor", pred, "--features", d["feats"], "--data", data, "--out", out,
                    *selection, code=2)
    one_line_error(result.output, words)
    assert not out.exists()


class Planted:
    """Unpickling it runs a shell command that creates `marker`: what a shared predictor directory could hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.mark.parametrize("name, protocol, words", [
    ("model.joblib", 5, "model.joblib is a pickle"),  # beside a valid model.json
    ("old.pkl", 2, "old.pkl is a pickle"),
    ("Model.PICKLE", 4, "Model.PICKLE is a pickle"),
    ("model.json", 5, "model.json is a pickle"),  # where the model should be
    ("model.json", 0, "model.json: Expecting value"),  # a text pickle is not JSON either
])
def test_filter_refuses_a_pickle_without_loading_it(cli, invoke, predictor_data, name, protocol, words):
    d, tmp = predictor_data, predictor_data["tmp"]
    proof = tmp / "proof"
    pickle.loads(pickle.dumps(Planted(proof), protocol=protocol))
    assert proof.exists()  # the planted pickle does run its command when loaded
    pred, marker, out = predict(invoke, d), tmp / "ran", tmp / "kept.jsonl"
    (pred / name).write_bytes(pickle.dumps(Planted(marker), protocol=protocol))
    proc = cli("filter", "--predictor", pred, "--features", d["feats"], "--data", d["data"], "--out", out,
               "--top-frac", 0.1, check=False)
    assert proc.returncode == 2 and not marker.exists() and not out.exists()
    assert one_line_error(proc.stderr, words).startswith(f"Error: cannot load the predictor in {pred}: ")


def malform(doc: dict, case: str) -> str:
    """model.json's text with one kind of damage."""
    if case == "not JSON":
        return "{oops"
    if case == "a list":
        return "[1, 2]"
    if case == "NaN coefficient":
        return json.dumps(doc).replace(str(doc["logistic_regression"]["coefficients"][0]), "NaN", 1)
    changes = {"other format": ("format", "sklearn-pickle"), "unknown feature": ("features", ["perplexity"] * 4),
               "short mean": ("scaler", dict(doc["scaler"], mean=[0.0])),
               "zero scale": ("scaler", dict(doc["scaler"], scale=[0.0] * 4)),
               "string intercept": ("logistic_regression", dict(doc["logistic_regression"], intercept="0.1")),
               "boolean coefficients": ("logistic_regression", dict(doc["logistic_regression"],
                                                                    coefficients=[True] * 4)),
               "huge integer": ("scaler", dict(doc["scaler"], mean=[10**400] * 4)),
               "no scaler": ("scaler", None)}
    key, value = changes[case]
    return json.dumps({**doc, key: value})


MALFORMED = {"not JSON": "model.json: Expecting property name", "a list": "model.json: not a JSON object",
             "NaN coefficient": "NaN is not a JSON number", "other format": "format is not 'evalmem-predictor/1'",
             "unknown feature": "features must be distinct names", "short mean": "scaler.mean must be 4 finite",
             "zero scale": "scaler.scale must be positive",
             "string intercept": "logistic_regression.intercept must be one finite number",
             "boolean coefficients": "logistic_regression.coefficients must be 4 finite numbers",
             "huge integer": "scaler.mean must be 4 finite numbers", "no scaler": "scaler.mean must be"}


@pytest.mark.parametrize("case", MALFORMED)
def test_filter_refuses_a_malformed_model(invoke, predictor_data, case):
    d, tmp = predictor_data, predictor_data["tmp"]
    pred, out = predict(invoke, d), tmp / "kept.jsonl"
    doc = json.loads((pred / "model.json").read_text())
    (pred / "model.json").write_text(malform(doc, case))
    result = invoke("filter", "--predictor", pred, "--features", d["feats"], "--data", d["data"], "--out", out,
                    "--top-frac", 0.1, code=2)
    line = one_line_error(result.output, MALFORMED[case])
    assert line.startswith(f"Error: cannot load the predictor in {pred}: ") and not out.exists()


def effect_runs(tmp):
    """Two students' runs on e0..e19: distilled on all (`before`), after the filter dropped e0-e2 (`after`) and
    after a random removal of e17-e19 (`control`)."""
    return {"soft": {"before": write_run(tmp / "soft-before", IDS[:20], {"e0", "e1", "e2", "e10"}),
                     "after": write_run(tmp / "soft-after", IDS[3:20], {"e10"}),
                     "control": write_run(tmp / "soft-control", IDS[:17], {"e0", "e1", "e2"})},
            "hard": {"before": write_run(tmp / "hard-before", IDS[:20], {"e0", "e5", "e18", "e19"}),
                     "after": write_run(tmp / "hard-after", IDS[3:20], {"e5", "e18", "e19"}),
                     "control": write_run(tmp / "hard-control", IDS[:17], set())}}


def effect_args(runs):
    return [a for name, roles in runs.items() for role, path in roles.items() for a in (f"--{role}",
                                                                                         f"{name}={path}")]


def test_filter_effect_counts_on_the_kept_examples(invoke, tmp_path):
    result = invoke("filter-effect", *effect_args(effect_runs(tmp_path)), "--out", tmp_path / "effect.json")
    effect = json.loads((tmp_path / "effect.json").read_text())
    assert json.loads(result.stdout) == effect and set(effect) == {"soft", "hard"}
    paired = effect["soft"].pop("paired")
    assert effect["soft"] == {"n_examples": 20, "memorized_all": 4, "dropped": 3, "kept": 17, "memorized_before": 1,
                              "memorized_after": 1, "random_control": {"dropped": 3, "kept": 17,
                                                                       "memorized_before": 4, "memorized_after": 3}}
    cells = ("n", "both", "a_only", "b_only", "neither")
    # both kept e3-e16: the filtered student memorizes e10 there, the control none (its e0-e2 were dropped)
    assert [paired["after_vs_control"][k] for k in cells] == [14, 0, 1, 0, 13]
    assert paired["after_vs_control"]["p_value"] == 1.0
    assert [paired["after_vs_before"][k] for k in cells] == [17, 1, 0, 0, 16]  # e10, memorized before and after
    hard = effect["hard"]
    assert (hard["memorized_all"], hard["memorized_before"], hard["memorized_after"]) == (4, 3, 3)
    assert hard["random_control"] == {"dropped": 3, "kept": 17, "memorized_before": 2, "memorized_after": 0}
    assert hard["paired"]["after_vs_control"]["a_only"] == 1 and hard["paired"]["after_vs_before"]["both"] == 3


@pytest.mark.parametrize("case, words", [
    ("names differ", "name every student in --before, --after and --control alike"),
    ("a student missing", "name every student in --before, --after and --control alike"),
    ("a name twice", "--after names soft twice"),
    ("other examples", "holds examples that"),
    ("no run", "no such run directory"),
])
def test_filter_effect_bad_input(invoke, tmp_path, case, words):
    runs = effect_runs(tmp_path)
    args = effect_args(runs)
    if case == "names differ":
        args[args.index(f"soft={runs['soft']['after']}")] = f"mild={runs['soft']['after']}"
    elif case == "a student missing":
        args = effect_args({"soft": runs["soft"]}) + ["--before", f"hard={runs['hard']['before']}"]
    elif case == "a name twice":
        args += ["--after", f"soft={runs['hard']['after']}"]
    elif case == "other examples":
        runs["soft"]["after"] = write_run(tmp_path / "wrong", ["x1"], set())
        args = effect_args(runs)
    else:
        runs["hard"]["control"] = str(tmp_path / "nowhere")
        args = effect_args(runs)
    result = invoke("filter-effect", *args, "--out", tmp_path / "effect.json", code=2)
    one_line_error(result.output, words)
    assert not (tmp_path / "effect.json").exists()
