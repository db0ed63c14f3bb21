"""The experiment's findings across seeds: `evalmem pipeline --seeds N` runs the recipe with seeds S..S+N-1
(OUT/seed-S each) and tabulates each finding's mean and range, with the paper's four checks per seed:

    1  each student memorizes less than the baselines' mean, which is less than the teacher
    2  at least 80% of the soft student's memorized examples are easy
    3  the predictor's ROC-AUC (the paper's protocol) is at least 0.9
    4  the hard student inherits more teacher-only examples than the soft one, and at least 10
"""

from __future__ import annotations

import numpy as np

from evalmem.tables import Table, fmt, markdown


def seed_findings(result: dict, pred: dict | None, utility: dict | None, risk: dict | None) -> dict:
    """One run's findings, as numbers (None where the run has none)."""
    runs, students = result["runs"], result.get("students", {})
    rate = {name: r["exact_match_rate"] for name, r in runs.items()}
    baselines = [rate[n] for n, r in runs.items() if r["role"] == "baseline"]
    found = {"teacher rate": rate.get("teacher"), "baselines' mean rate": float(np.mean(baselines)) if baselines
             else None, "teacher-only examples": result.get("sets", {}).get("teacher_only")}
    for name in ("soft", "hard"):
        s = students.get(name, {})
        found |= {f"{name} rate": rate.get(name), f"{name} easy share": s.get("easy_share"),
                  f"{name} inherited": s.get("inherited")}
    if pred:
        found |= {"ROC-AUC": pred["resampled"]["roc_auc"]["mean"],
                  "precision at the real base rate": pred["base_rate_eval"]["precision"]["mean"],
                  "recall at the real base rate": pred["base_rate_eval"]["recall"]["mean"]}
    for name, r in (risk or {}).items():
        found |= {f"{name} memorized among kept, before": r["memorized_before"],
                  f"{name} after risk filtering": r["memorized_after"],
                  f"{name} after random removal": r["random_control"]["memorized_after"]}
    return found


def checks(f: dict) -> dict[str, bool | None]:
    """The paper's four findings, in shape, for one seed (None: the run lacks the numbers)."""
    def known(*keys):
        return all(f.get(k) is not None for k in keys)

    students = known("soft rate", "hard rate", "baselines' mean rate", "teacher rate")
    return {"1 students < baselines < teacher": max(f["soft rate"], f["hard rate"]) < f["baselines' mean rate"]
            < f["teacher rate"] if students else None,
            "2 soft easy share >= 80%": f["soft easy share"] >= 0.8 if known("soft easy share") else None,
            "3 ROC-AUC >= 0.9": f["ROC-AUC"] >= 0.9 if known("ROC-AUC") else None,
            "4 hard inherits more, >= 10": f["hard inherited"] > f["soft inherited"] and f["hard inherited"] >= 10
            if known("hard inherited", "soft inherited") else None}


def across_seeds(per_seed: dict[int, dict]) -> dict:
    """Mean and range of every finding, and the checks, over the seeds."""
    names = list(dict.fromkeys(k for f in per_seed.values() for k in f))
    table = {}
    for name in names:
        values = [f.get(name) for f in per_seed.values()]
        known = [v for v in values if v is not None]
        table[name] = {"per_seed": values, "mean": float(np.mean(known)) if known else None,
                       "min": min(known) if known else None, "max": max(known) if known else None}
    return {"seeds": list(per_seed), "findings": table,
            "checks": {seed: checks(f) for seed, f in per_seed.items()}}


def seeds_tables(summary: dict) -> list[Table]:
    seeds = summary["seeds"]
    rows = [[name, fmt(c["mean"]), f"{fmt(c['min'])} - {fmt(c['max'])}", *map(fmt, c["per_seed"])]
            for name, c in summary["findings"].items()]
    names = list(next(iter(summary["checks"].values())))
    held = [[name, *("yes" if summary["checks"][s][name] else "–" if summary["checks"][s][name] is None
                     else "no" for s in seeds)] for name in names]
    return [(f"Findings over seeds {', '.join(map(str, seeds))}", ["finding", "mean", "range",
                                                                    *(f"seed {s}" for s in seeds)], rows),
            ("The paper's findings, per seed", ["finding", *(f"seed {s}" for s in seeds)], held)]


def seeds_markdown(summary: dict) -> str:
    return markdown(seeds_tables(summary))
