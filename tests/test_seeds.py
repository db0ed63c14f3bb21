"""Findings across seeds: means, ranges and the paper's four checks, from each seed's results."""

from evalmem.seeds import across_seeds, seeds_markdown


def findings(teacher, baselines, soft, hard, easy, soft_inh, hard_inh, auc):
    return {"teacher rate": teacher, "baselines' mean rate": baselines, "soft rate": soft, "hard rate": hard,
            "soft easy share": easy, "soft inherited": soft_inh, "hard inherited": hard_inh, "ROC-AUC": auc}


def test_means_ranges_and_checks():
    summary = across_seeds({0: findings(0.05, 0.03, 0.01, 0.02, 0.9, 1, 12, 0.95),
                            1: findings(0.04, 0.03, 0.01, 0.035, 0.7, 3, 11, 0.85)})
    teacher = summary["findings"]["teacher rate"]
    assert teacher["per_seed"] == [0.05, 0.04] and abs(teacher["mean"] - 0.045) < 1e-12
    assert (teacher["min"], teacher["max"]) == (0.04, 0.05)
    assert summary["checks"][0] == {"1 students < baselines < teacher": True, "2 soft easy share >= 80%": True,
                                    "3 ROC-AUC >= 0.9": True, "4 hard inherits more, >= 10": True}
    assert summary["checks"][1] == {"1 students < baselines < teacher": False, "2 soft easy share >= 80%": False,
                                    "3 ROC-AUC >= 0.9": False, "4 hard inherits more, >= 10": True}
    text = seeds_markdown(summary)
    assert "| teacher rate | 0.045 | 0.04 - 0.05 | 0.05 | 0.04 |" in text
    assert "| 4 hard inherits more, >= 10 | yes | yes |" in text
    missing = across_seeds({0: {"teacher rate": 0.1}})
    assert missing["checks"][0]["3 ROC-AUC >= 0.9"] is None
