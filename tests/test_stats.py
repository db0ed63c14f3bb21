"""evalmem.stats against scipy's own functions, hand computations, published worked examples and simulation."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from evalmem import stats

# Cavo et al. (2012), as Fagerland, Lydersen and Laake (2014, ch. 8) work it: 59 both, 6 A only, 16 B only, 80 neither
CAVO = {"n": 161, "both": 59, "a_only": 6, "b_only": 16, "neither": 80}


def wilson_by_formula(k, n, z=scipy_stats.norm.ppf(0.975)):
    """Wilson (1927) score interval from its closed form."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(157, 2048), (0, 2048), (2048, 2048), (1, 3), (7, 40)])
def test_rate_interval_is_wilson(k, n):
    r = stats.rate(k, n)
    ci = scipy_stats.binomtest(k, n).proportion_ci(method="wilson")
    assert r["estimate"] == k / n and (r["low"], r["high"]) == (ci.low, ci.high)
    np.testing.assert_allclose([r["low"], r["high"]], wilson_by_formula(k, n), rtol=1e-9, atol=1e-12)
    assert stats.rate(0, 0) is None


def test_rate_interval_covers_the_rate():
    """2,000 data sets of 2,048 examples at a known rate: the 95% interval covers it 93-97% of the time."""
    rng = np.random.default_rng(0)
    for p in (0.0767, 0.01):
        hits = [stats.rate(int(k), 2048) for k in rng.binomial(2048, p, size=2000)]
        coverage = np.mean([h["low"] <= p <= h["high"] for h in hits])
        assert 0.93 <= coverage <= 0.97, (p, coverage)


def test_mcnemar_by_hand():
    # 1 of 10 discordant examples: P(X <= 1 or X >= 9) under Binomial(10, 1/2) = 2 * 11 / 1024
    assert stats.mcnemar(1, 9) == pytest.approx(22 / 1024, rel=1e-12)
    assert stats.mcnemar(9, 1) == pytest.approx(22 / 1024, rel=1e-12)
    assert stats.mcnemar(5, 5) == 1.0 and stats.mcnemar(0, 0) == 1.0
    assert stats.mcnemar(34, 1) == scipy_stats.binomtest(34, 35).pvalue


def test_paired_table_of_vectors():
    a = np.array([1, 1, 0, 0, 1, 0, 0, 0], bool)
    b = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)
    t = stats.paired(a, b)
    assert {k: t[k] for k in ("n", "both", "a_only", "b_only", "neither")} == \
        {"n": 8, "both": 1, "a_only": 2, "b_only": 3, "neither": 2}
    assert t["rate_a"] == 3 / 8 and t["rate_b"] == 4 / 8 and t["p_value"] == stats.mcnemar(2, 3)
    assert t["difference"]["estimate"] == pytest.approx(-1 / 8)


def test_difference_interval_equals_the_published_example():
    d = stats.difference(CAVO)  # published: -0.0621 (95% CI -0.1186 to -0.0046)
    assert [round(d[k], 4) for k in ("estimate", "low", "high")] == [-0.0621, -0.1186, -0.0046]


def test_ratio_interval_equals_the_published_example_and_is_unbounded_without_denominator():
    r = stats.ratio(CAVO)  # published: 0.8667 (95% CI 0.7592 to 0.9866)
    assert [round(r[k], 4) for k in ("estimate", "low", "high")] == [0.8667, 0.7592, 0.9866] and not r["unbounded"]
    none = stats.ratio({"n": 40, "both": 0, "a_only": 34, "b_only": 0, "neither": 6})
    assert none["estimate"] is None and none["high"] is None and none["unbounded"] and none["low"] > 1


def test_difference_interval_covers_the_paired_difference():
    """2,000 paired data sets from known cell probabilities: the interval covers the true difference 93-97%."""
    rng = np.random.default_rng(1)
    cells = np.array([0.03, 0.015, 0.006, 0.949])  # both, a only, b only, neither: rates 4.5% vs 3.6%
    truth = cells[1] - cells[2]
    covered = []
    for both, a_only, b_only, neither in rng.multinomial(2048, cells, size=2000):
        d = stats.difference({"n": 2048, "both": both, "a_only": a_only, "b_only": b_only, "neither": neither})
        covered.append(d["low"] <= truth <= d["high"])
    assert 0.93 <= np.mean(covered) <= 0.97, np.mean(covered)


def test_holm_by_hand():
    # sorted: 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; 0.04 * 1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and stats.holm([]) == []


def test_mean_interval_is_student_t():
    m = stats.mean_interval([1.0, 2.0, 3.0])
    half = scipy_stats.t.ppf(0.975, 2) * 1 / math.sqrt(3)
    assert m["estimate"] == 2.0 and m["low"] == pytest.approx(2 - half) and m["high"] == pytest.approx(2 + half)
    assert stats.mean_interval([0.5]) is None and stats.mean_interval([0.5, 0.5]) == {"estimate": 0.5, "low": 0.5,
                                                                                        "high": 0.5}
