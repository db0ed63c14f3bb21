"""Risk filtering: the training data without the examples the predictor marks (`evalmem filter`), and what
removing them did (`evalmem filter-effect`: the risk-filtering experiment's numbers).

The ranking is the predictor's cross-fitted risk (predict/risk.parquet) when the features are of the data the
predictor was fit on, so no example is ranked by a model that saw its own label; on other data, the saved model's
probability (model.json, rebuilt from its numbers; a predictor directory holding a pickle is refused). A random
removal of the same size (`--random`) is the experiment's control.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from evalmem import stats
from evalmem.analysis import join, load_run
from evalmem.data import load_source
from evalmem.errors import InputError
from evalmem.predict import feature_table, load_predictor, matrix
from evalmem.settings import DataSpec, FilterSettings
from evalmem.store import make_dir, read_results, write_atomic, write_json


def risk_scores(predictor: str, features: str) -> tuple[list, np.ndarray, str]:
    """(example ids, risk, fingerprint of the features' data): cross-fitted where the predictor has it for
    these features' data, else the saved model (model.json) applied to the features."""
    model, names, fitted_on, report = load_predictor(predictor)
    settings, feats = feature_table(features, names, report.get("counts_dir"), report.get("scores_dir"))
    fingerprint = settings.get("data_fingerprint")
    if fingerprint == fitted_on and (Path(predictor) / "risk.parquet").exists():
        risk = read_results(Path(predictor) / "risk.parquet", ["example_id", "risk"])
        return risk["example_id"].to_pylist(), risk["risk"].to_numpy(), fingerprint
    prob = model.predict_proba(matrix(feats, names))[:, 1]
    return feats["example_id"].to_pylist(), prob, fingerprint


def how_many(selection: FilterSettings, risk: np.ndarray) -> int:
    if selection.threshold is not None:
        return int((risk >= selection.threshold).sum())
    if selection.top_frac is not None:
        return int(round(selection.top_frac * len(risk)))
    if selection.top_n is not None:
        return min(selection.top_n, len(risk))
    run = load_run("run", "run", selection.as_many_as)
    return min(len(run.memorized()), len(risk))


def dropped_ids(ids: list, risk: np.ndarray, selection: FilterSettings) -> set:
    """The examples to drop: the riskiest (ties in input order), or as many at random."""
    n = how_many(selection, risk)
    order = np.random.default_rng(selection.seed).permutation(len(ids)) if selection.random \
        else np.argsort(-risk, kind="stable")
    return {ids[i] for i in order[:n]}


def filter_run(predictor: str, features: str, data: DataSpec, out: str, selection: FilterSettings) -> dict:
    """`evalmem filter`: write DATA without the examples the predictor marks risky (or, --random, as many others)."""
    if Path(out).suffix not in (".jsonl", ".parquet"):
        raise InputError(f"--out must end in .jsonl or .parquet, got {out}")
    if Path(out).resolve() == Path(data.path).resolve():
        raise InputError(f"--out {out} is the input --data: write the filtered data to another file")
    ids, risk, fingerprint = risk_scores(predictor, features)
    source = load_source(data)
    if fingerprint != source.fingerprint:
        raise InputError(f"{features} was computed on other data than {data.path} (data fingerprints differ)")
    dropped = dropped_ids(ids, risk, selection)
    table = source.rows.with_format("arrow")[:]
    if "id" not in table.column_names:  # keep the original ids so results on OUT join results on DATA
        table = table.append_column("id", pa.array(source.ids))
    kept = table.filter(pa.array([i not in dropped for i in source.ids]))
    make_dir(Path(out).parent)
    write_atomic(out, lambda tmp: write_rows(kept, tmp, Path(out).suffix))
    return {"out": str(out), "n_input": table.num_rows, "n_scored": len(risk), "n_dropped": len(dropped),
            "n_kept": kept.num_rows, "random": selection.random}


def write_rows(table: pa.Table, path: Path, fmt: str) -> None:
    """Write rows as Parquet (`fmt` .parquet) or JSON lines."""
    if fmt == ".parquet":
        pq.write_table(table, path)
        return
    with open(path, "w", encoding="utf-8") as f:
        for batch in table.to_batches():
            f.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in batch.to_pylist())


def paired_on_shared(a, b) -> dict:
    """The paired test of two runs on the examples both hold (none shared: an empty table)."""
    shared = set(a.ids) & set(b.ids)
    if not shared:
        return stats.paired([], [])
    first, second = join([a, b])
    return stats.paired(first.hits(), second.hits())


def filter_effect(before: dict[str, str], after: dict[str, str], control: dict[str, str], out: str) -> dict:
    """`evalmem filter-effect`: per student, the examples dropped and its memorized count on the examples kept,
    distilled on all the data (`before`) and on what the filter kept (`after`); the same for a random removal of
    the same size (`control`). Counted on the kept examples only, so the drop is not just the removed ones. `paired`:
    the filtered student against the random control on the examples both kept, and against the student distilled
    on all the data on the examples the filter kept (evalmem.stats.paired: a is the filtered student)."""
    if not before or set(before) != set(after) or set(before) != set(control):
        raise InputError("name every student in --before, --after and --control alike (NAME=DIR each)")
    result = {}
    for name in before:
        runs = {role: load_run(name, role, path) for role, path in
                (("before", before[name]), ("after", after[name]), ("control", control[name]))}
        full = set(runs["before"].ids)
        memorized = runs["before"].memorized()
        result[name] = {"n_examples": len(full), "memorized_all": len(memorized)}
        for role, key in (("after", None), ("control", "random_control")):
            kept = set(runs[role].ids)
            if not kept <= full:
                raise InputError(f"{runs[role].path} holds examples that {runs['before'].path} does not: "
                                 "extract the filtered students on the kept part of the same data")
            cells = {"dropped": len(full - kept), "kept": len(kept), "memorized_before": len(memorized & kept),
                     "memorized_after": len(runs[role].memorized())}
            if key:
                result[name][key] = cells
            else:
                result[name].update(cells)
        result[name]["paired"] = {"after_vs_control": paired_on_shared(runs["after"], runs["control"]),
                                  "after_vs_before": paired_on_shared(runs["after"], runs["before"])}
    write_json(out, result)
    return result
