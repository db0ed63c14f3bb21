"""The experiment's findings across seeds: `evalmem pipeline --seeds N` runs the recipe with seeds S..S+N-1
(OUT/seed-S each) and tabulates each finding's mean with its 95% Student-t interval across seeds and its range, and
per seed the paper's four checks, in shape and significantly (evalmem.stats; alpha 0.05):

    1  each student memorizes less than the baselines' mean, which is less than the teacher;
       significantly: each student below each baseline, and each baseline below the teacher, by the paired test
       (Holm-adjusted over the comparison's pairs)
    2  at least 80% of the soft student's memorized examples are easy; significantly: the share's interval too
    3  the predictor's ROC-AUC (the paper's protocol) is at least 0.9; significantly: the bootstrap interval too
    4  the hard student inherits more teacher-only examples than the soft one, and at least 10; significantly: by
       the paired test on the teacher-only examples
"""

from __future__ import annotations

import numpy as np

from evalmem.stats import distinguishable, mean_interval
from evalmem.tables import Table, estimate_ci, fmt, markdown

CHECKS = ("1 students < baselines < teacher", "2 soft easy share >= 80%", "3 ROC-AUC >= 0.9",
          "4 hard inherits more, >= 10")


def seed_findings(result: dict, pred: dict | None, utility: dict | None, risk: dict | None) -> dict:
    """One run's findings as numbers (None where the run has none), and the four checks."""
    values = finding_values(result, pred, risk)
    return {"values": values, "checks": checks(values, result, pred)}


def finding_values(result: dict, pred: dict | None, risk: dict | None) -> dict:
    runs, students = result["runs"], result.get("students", {})
    rate = {name: r["exact_match_rate"] for name, r in runs.items()}
    baselines = [rate[n] for n, r in runs.items() if r["role"] == "baseline"]
    mean = float(np.mean(baselines)) if baselines else None
    found = {"teacher rate": rate.get("teacher"), "baselines' mean rate": mean,
             "teacher-only examples": result.get("sets", {}).get("teacher_only")}
    for name in ("soft", "hard"):
        s = students.get(name, {})
        found |= {f"{name} rate": rate.get(name),
                  f"{name} reduction against the baselines' mean": 1 - rate[name] / mean if mean and name in rate
                  else None,
                  f"{name} easy share": s.get("easy_share"), f"{name} inherited": s.get("inherited")}
    if pred:
        found |= {"ROC-AUC": pred["resampled"]["roc_auc"]["mean"],
                  "precision at the real base rate": pred["base_rate_eval"]["precision"]["mean"],
                  "recall at the real base rate": pred["base_rate_eval"]["recall"]["mean"]}
    for name, r in (risk or {}).items():
        found |= {f"{name} memorized among kept, before": r["memorized_before"],
                  f"{name} after risk filtering": r["memorized_after"],
                  f"{name} after random removal": r["random_control"]["memorized_after"]}
    return found


def below(result: dict, low: str, high: str) -> bool:
    """Whether run `low` memorizes significantly less than run `high` (Holm-adjusted paired test)."""
    test = next(t for t in result["paired"] if {t["a"], t["b"]} == {low, high})
    rate = {test["a"]: test["rate_a"], test["b"]: test["rate_b"]}
    return rate[low] < rate[high] and distinguishable(test["p_holm"])


def checks(f: dict, result: dict, pred: dict | None) -> dict[str, dict]:
    """The paper's four findings for one seed: {"shape": held in sign, "significant": held by the tests}
    (None: the run lacks the numbers)."""
    def known(*keys):
        return all(f.get(k) is not None for k in keys)

    runs, students = result["runs"], result.get("students", {})
    baselines = [n for n, r in runs.items() if r["role"] == "baseline"]
    out = dict.fromkeys(CHECKS, {"shape": None, "significant": None})
    if known("soft rate", "hard rate", "baselines' mean rate", "teacher rate"):
        out[CHECKS[0]] = {"shape": max(f["soft rate"], f["hard rate"]) < f["baselines' mean rate"] < f["teacher rate"],
                          "significant": all(below(result, s, b) for s in ("soft", "hard") for b in baselines)
                          and all(below(result, b, "teacher") for b in baselines)}
    if known("soft easy share"):
        interval = students["soft"].get("easy_share_interval")
        out[CHECKS[1]] = {"shape": f["soft easy share"] >= 0.8,
                          "significant": bool(interval) and interval["low"] >= 0.8}
    if known("ROC-AUC"):
        auc = (pred or {}).get("intervals", {}).get("roc_auc")
        out[CHECKS[2]] = {"shape": f["ROC-AUC"] >= 0.9, "significant": auc["low"] >= 0.9 if auc else None}
    if known("hard inherited", "soft inherited"):
        shape = f["hard inherited"] > f["soft inherited"] and f["hard inherited"] >= 10
        test = result.get("hard_vs_soft", {}).get("paired")
        out[CHECKS[3]] = {"shape": shape, "significant": shape and distinguishable(test["p_value"]) if test else None}
    return out


def across_seeds(per_seed: dict[int, dict]) -> dict:
    """Mean with its 95% interval, and range, of every finding; the checks per seed."""
    names = list(dict.fromkeys(k for f in per_seed.values() for k in f["values"]))
    table = {}
    for name in names:
        values = [f["values"].get(name) for f in per_seed.values()]
        known = [v for v in values if v is not None]
        table[name] = {"per_seed": values, "mean": float(np.mean(known)) if known else None,
                       "interval": mean_interval(known), "min": min(known) if known else None,
                       "max": max(known) if known else None}
    return {"seeds": list(per_seed), "findings": table, "checks": {seed: f["checks"] for seed, f in per_seed.items()}}


def held(check: dict) -> str:
    if check["shape"] is None:
        return "–"
    if not check["shape"]:
        return "no"
    return {True: "yes, significantly", False: "yes, not significantly", None: "yes"}[check["significant"]]


def seeds_tables(summary: dict) -> list[Table]:
    seeds = summary["seeds"]
    rows = [[name, estimate_ci(c["interval"]) if c["interval"] else fmt(c["mean"]),
             f"{fmt(c['min'])} - {fmt(c['max'])}", *map(fmt, c["per_seed"])] for name, c in summary["findings"].items()]
    checked = [[name, *(held(summary["checks"][s][name]) for s in seeds)] for name in CHECKS]
    return [(f"Findings over seeds {', '.join(map(str, seeds))} (mean with its 95% interval across seeds)",
             ["finding", "mean [95% interval]", "range", *(f"seed {s}" for s in seeds)], rows),
            ("The paper's findings, per seed (significantly: by the paired tests and intervals at alpha 0.05)",
             ["finding", *(f"seed {s}" for s in seeds)], checked)]


def seeds_markdown(summary: dict) -> str:
    return markdown(seeds_tables(summary))
