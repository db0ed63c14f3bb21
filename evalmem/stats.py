"""The uncertainty of the memorization numbers evalmem reports (docs/analysis.md, "Statistics").

    rate        k of n examples memorized, with its 95% Wilson score interval (scipy.stats.binomtest)
    paired      two runs on the same examples: both, a_only, b_only, neither; the exact McNemar p-value is
                the two-sided binomial test of a_only out of the a_only + b_only discordant examples at 1/2
    difference  rate_a - rate_b = (a_only - b_only) / n with Newcombe's (1998) square-and-add interval of the
                two Wilson intervals, corrected for their correlation (Fagerland et al. 2014's choice)
    ratio       rate_a / rate_b with the MOVER Wilson score interval for paired probabilities (Fagerland et al.
                2014); unbounded above when run b memorized none of the examples
    Holm        the p-values of the pairs of one comparison adjusted by Holm's step-down (statsmodels); a
                difference is distinguishable from chance when its adjusted p-value is below ALPHA

Intervals are dicts {"estimate", "low", "high"}; a ratio unbounded above has "high": None and "unbounded": True.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

ALPHA = 0.05
CONFIDENCE = 1 - ALPHA
METHODS = {"confidence": CONFIDENCE, "alpha": ALPHA, "rate_interval": "Wilson score",
           "paired_test": "exact McNemar: two-sided binomial test on the discordant examples",
           "difference_interval": "Newcombe square-and-add of the Wilson intervals (paired)",
           "ratio_interval": "MOVER Wilson score (paired)", "adjustment": "Holm over the pairs of one comparison"}


def wilson(k: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of k successes in n trials."""
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def rate(k: int, n: int) -> dict | None:
    """k of n as a rate with its Wilson interval; None for n = 0."""
    if n == 0:
        return None
    low, high = wilson(k, n)
    return {"estimate": k / n, "low": low, "high": high}


def table(a: np.ndarray, b: np.ndarray) -> dict:
    """The paired 2x2 table of two boolean vectors over the same examples."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    both = int((a & b).sum())
    a_only, b_only = int(a.sum()) - both, int(b.sum()) - both
    return {"n": len(a), "both": both, "a_only": a_only, "b_only": b_only, "neither": len(a) - both - a_only - b_only}


def mcnemar(a_only: int, b_only: int) -> float:
    """Exact McNemar p-value: two-sided binomial test of a_only of the discordant examples at 1/2."""
    discordant = a_only + b_only
    return float(stats.binomtest(a_only, discordant).pvalue) if discordant else 1.0


def _marginals(t: dict):
    n = t["n"]
    row, col = t["both"] + t["a_only"], t["both"] + t["b_only"]  # memorized by a, by b
    return n, row, col, row / n, col / n, wilson(row, n), wilson(col, n)


def difference(t: dict) -> dict:
    """rate_a - rate_b with Newcombe's square-and-add interval for paired proportions (his method 10; the
    correlation estimate with its continuity correction, as Fagerland, Lydersen and Laake 2014 give it)."""
    n, row, col, p1, p2, (l1, u1), (l2, u2) = _marginals(t)
    psi = 0.0
    if 0 < row < n and 0 < col < n:
        a = t["both"] * t["neither"] - t["a_only"] * t["b_only"]
        a = a - n / 2 if a > n / 2 else min(a, 0)
        psi = a / math.sqrt(row * (n - row) * col * (n - col))
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * psi * (p1 - l1) * (u2 - p2))
    high = d + math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * psi * (p2 - l2) * (u1 - p1))
    return {"estimate": d, "low": low, "high": high}


def ratio(t: dict) -> dict:
    """rate_a / rate_b with the MOVER Wilson score interval for paired probabilities (Fagerland et al. 2014,
    section 8.7); unbounded above when b memorized none."""
    n, row, col, p1, p2, (l1, u1), (l2, u2) = _marginals(t)
    denom = math.sqrt(row * (n - row) * col * (n - col))
    corr = (t["both"] * t["neither"] - t["a_only"] * t["b_only"]) / denom if denom else 0.0
    a, b = corr * (p1 - l1) * (u2 - p2), corr * (u1 - p1) * (p2 - l2)
    low = (a - p1 * p2 + math.sqrt(max((a - p1 * p2) ** 2 - l1 * (2 * p1 - l1) * u2 * (2 * p2 - u2), 0.0))) \
        / (u2 * (u2 - 2 * p2))
    high = None
    if l2 > 0:
        root = (b - p1 * p2) ** 2 - u1 * (2 * p1 - u1) * l2 * (2 * p2 - l2)
        high = (b - p1 * p2 - math.sqrt(max(root, 0.0))) / (l2 * (l2 - 2 * p2))
        high = high if high >= 0 else None
    return {"estimate": p1 / p2 if col else None, "low": max(0.0, low), "high": high, "unbounded": high is None}


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Two runs' memorization of the same examples: the 2x2 table, both rates, the difference with its
    interval and the exact McNemar p-value."""
    t = table(a, b)
    if t["n"] == 0:
        return {**t, "rate_a": None, "rate_b": None, "difference": None, "p_value": 1.0}
    return {**t, "rate_a": (t["both"] + t["a_only"]) / t["n"], "rate_b": (t["both"] + t["b_only"]) / t["n"],
            "difference": difference(t), "p_value": mcnemar(t["a_only"], t["b_only"])}


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels' multipletests)."""
    if not p_values:
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(p_values, alpha=ALPHA, method="holm")[1]]


def distinguishable(p_value: float) -> bool:
    return p_value < ALPHA


def mean_interval(values: list[float]) -> dict | None:
    """The mean of values (one per seed) with its 95% Student-t interval; None for fewer than two values."""
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if len(values) < 2:
        return None
    mean, sem = float(values.mean()), float(stats.sem(values))
    low, high = stats.t.interval(CONFIDENCE, len(values) - 1, loc=mean, scale=sem) if sem > 0 else (mean, mean)
    return {"estimate": mean, "low": float(low), "high": float(high)}
