"""The report's figures: drawn from the numbers they show (bars, error bars, curves), only what has data, and an
alternative text for every figure the report can hold."""

import numpy as np
from matplotlib.figure import Figure

from evalmem.figures import ALT, draw_rates, draw_series, draw_series_teacher_only, png, series_axis


def axes(draw):
    ax = Figure().subplots()
    draw(ax)
    return ax


def run(rate, low, high, approx=None):
    return {"exact_match_rate": rate, "exact_match_interval": {"low": low, "high": high},
            "approx_match_rate": approx, "approx_match_interval": None if approx is None else {"low": approx,
                                                                                             "high": approx}}


def test_rates_with_their_intervals_and_approximate_bars_only_where_computed():
    result = {"runs": {"teacher": run(0.1, 0.05, 0.2), "soft": run(0.02, 0.01, 0.05)}}
    ax = axes(draw_rates(result))
    heights = [p.get_height() for p in ax.patches]
    assert np.allclose(heights, [10, 2]) and ax.get_legend() is None  # exact bars only: nothing else computed
    from matplotlib.container import BarContainer

    bars = next(c for c in ax.containers if isinstance(c, BarContainer))
    errors = bars.errorbar.lines[2][0].get_segments()
    assert np.allclose([(s[0][1], s[1][1]) for s in errors], [(5, 20), (1, 5)])  # the 95% interval, in percent
    result["runs"]["soft"] = run(0.02, 0.01, 0.05, approx=0.04)
    ax = axes(draw_rates(result))
    assert len(ax.patches) == 4 and ax.get_legend() is not None


def point(step, epoch, rate, teacher_only=None):
    return {"step": step, "epoch": epoch, "exact_match_rate": rate,
            "exact_match_interval": {"low": rate / 2, "high": rate * 2}, "teacher_only": teacher_only}


def test_series_curves_by_epoch_where_known_else_by_step():
    series = {"teacher": [point(10, 1.0, 0.01, 0), point(20, 2.0, 0.05, 4)],
              "hard": [point(4, 1.0, 0.0, 0), point(8, 2.0, 0.02, 9)]}
    assert series_axis(series) == "epoch"
    ax = axes(draw_series(series))
    assert [list(line.get_xdata()) for line in ax.lines] == [[1.0, 2.0], [1.0, 2.0]]
    assert list(ax.lines[0].get_ydata()) == [1.0, 5.0] and ax.get_xlabel() == "epoch"
    assert [list(line.get_ydata()) for line in axes(draw_series_teacher_only(series)).lines] == [[0, 4], [0, 9]]
    series["hard"][0]["epoch"] = None
    assert series_axis(series) == "step"


def test_png_bytes_and_every_figure_described():
    assert png(draw_rates({"runs": {"t": run(0.1, 0.05, 0.2)}}))[:8] == b"\x89PNG\r\n\x1a\n"
    names = {"rates.png", "overlap.png", "token_accuracy.png", "students.png", "copies.png", "profile.png",
             "training.png", "training_teacher_only.png", "roc.png", "pr.png", "coefficients.png"}
    assert set(ALT) == names and all(len(text) > 40 and not text.endswith(".png") for text in ALT.values())
