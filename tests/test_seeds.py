"""Findings across seeds: means with their intervals, ranges and the paper's four checks in shape and
significantly, from each seed's comparison of planted runs."""

import pytest
from scipy import stats as scipy_stats

from evalmem.analysis import compare, join, load_runs
from evalmem.seeds import CHECKS, across_seeds, seed_findings, seeds_markdown
from helpers import IDS, members, write_run

MODELS = ("teacher", "b0", "b1", "soft", "hard")
N = [f"x{i}" for i in range(1000)]
CLEAR = {  # the paper's findings, far beyond chance: students well below the baselines, the hard one inheriting
    "teacher": range(200), "b0": range(120), "b1": [*range(110), *range(900, 910)], "soft": range(40),
    "hard": [*range(30), *range(150, 180)]}
PRED = {"resampled": {"roc_auc": {"mean": 0.95, "std": 0.01}}, "intervals": {"roc_auc": {"low": 0.92}},
        "base_rate_eval": {"precision": {"mean": 0.4}, "recall": {"mean": 0.9}}}


def comparison(root, ids, memorized):
    dirs = {name: write_run(root / name, ids, memorized[name]) for name in MODELS}
    runs = load_runs(dirs["teacher"], [f"b0={dirs['b0']}", f"b1={dirs['b1']}"],
                     [f"soft={dirs['soft']}", f"hard={dirs['hard']}"], [])
    return compare(join(runs))[0]


@pytest.fixture
def seeds(tmp_path):
    clear = comparison(tmp_path / "clear", N, {m: {f"x{i}" for i in r} for m, r in CLEAR.items()})
    regions = comparison(tmp_path / "regions", IDS, {m: members(m) for m in MODELS})
    return {0: seed_findings(clear, PRED, None, None), 1: seed_findings(regions, None, None, None)}


def test_checks_in_shape_and_significantly(seeds):
    assert seeds[0]["checks"] == dict.fromkeys(CHECKS, {"shape": True, "significant": True})
    regions = seeds[1]["checks"]  # soft 20 > the baselines' mean 18; easy share 15/20; hard inherits 8 < 10
    assert regions[CHECKS[0]] == regions[CHECKS[1]] == regions[CHECKS[3]] == {"shape": False, "significant": False}
    assert regions[CHECKS[2]] == {"shape": None, "significant": None}  # no predictor
    assert seeds[0]["values"]["soft reduction against the baselines' mean"] == pytest.approx(1 - 0.04 / 0.12)


def test_not_significant_when_the_difference_is_within_chance(tmp_path):
    """Students below the baselines in sign only: one example apart."""
    close = {**CLEAR, "soft": range(114), "hard": [*range(113), 150]}
    checks = seed_findings(comparison(tmp_path, N, {m: {f"x{i}" for i in r} for m, r in close.items()}),
                           PRED, None, None)["checks"]
    assert checks[CHECKS[0]] == {"shape": True, "significant": False}


def test_means_intervals_ranges_and_table(seeds):
    summary = across_seeds(seeds)
    teacher = summary["findings"]["teacher rate"]
    assert teacher["per_seed"] == [0.2, 0.31] and teacher["mean"] == pytest.approx(0.255)
    half = scipy_stats.t.ppf(0.975, 1) * scipy_stats.sem([0.2, 0.31])
    assert teacher["interval"]["low"] == pytest.approx(0.255 - half) and (teacher["min"], teacher["max"]) == (0.2, 0.31)
    assert summary["findings"]["ROC-AUC"]["per_seed"] == [0.95, None] and summary["findings"]["ROC-AUC"]["interval"] \
        is None
    text = seeds_markdown(summary)
    assert "| 1 students < baselines < teacher | yes, significantly | no |" in text
    assert "| 3 ROC-AUC >= 0.9 | yes, significantly | – |" in text
    assert f"| teacher rate | 0.255 [{teacher['interval']['low']:.3g}, {teacher['interval']['high']:.3g}] | " \
           "0.2 - 0.31 | 0.2 | 0.31 |" in text
