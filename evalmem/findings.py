"""The report's findings: one sentence (HTML) per finding, each number with its 95% interval and each comparison
with its paired test in words, and the figure that shows it; a line on what a run's mode did not compute."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from evalmem.analysis import interval as interval_of
from evalmem.explorer import set_href
from evalmem.figures import series_axis
from evalmem.tables import difference, estimate_ci, fmt, ms, p_value, pct, pct_ci, ratio_ci, verdict

e = html.escape
NOT_COMPUTED = {  # what an extract mode leaves out, by mode (decode computes every column)
    "verify": "decoding stops at each example's first mismatch",
    "screen": "one teacher-forced pass, no generated text",
    "auto": "decoding stops once an approximate match is out of reach, so token accuracy is partial",
}


def count(value, name: str) -> str:
    """A count of examples in a sentence, linked to those examples in the explorer."""
    return f'<a href="{e(set_href(name))}">{value}</a>'


def listing(parts: list[str]) -> str:
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else "".join(parts)


def labels_name(result: dict, pred: dict) -> str:
    """The run whose exact matches were the predictor's positives."""
    labels = str(pred.get("labels_dir"))
    return next((n for n, r in result["runs"].items() if r.get("dir") == labels), Path(labels).name)


def mode_note(result: dict) -> str:
    """One line per mode that left columns out: which runs, and why their approximate-match rate and token
    accuracy are not shown."""
    by_mode: dict[str, list[str]] = {}
    for name, run in result["runs"].items():
        if run.get("mode") in NOT_COMPUTED:
            by_mode.setdefault(run["mode"], []).append(name)
    return "".join(f'<p class="note">{e(listing(names))}: extracted with <code>--mode {mode}</code> '
                   f"({NOT_COMPUTED[mode]}), so approximate matches and token accuracy are not shown for "
                   f"{'them' if len(names) > 1 else 'it'}; <code>--mode decode</code> computes every column.</p>"
                   for mode, names in by_mode.items())


def rates(result: dict) -> str:
    parts = [f"{e(n)} reproduces {pct_ci(r['exact_match_rate'], r.get('exact_match_interval'))} "
             f"({count(r['exact_match_count'], 'memorized:' + n)})" for n, r in result["runs"].items()]
    return (f"Of the {result['n_examples']} training examples, {listing(parts)} exactly from their prefix (95% Wilson "
            "intervals).")


def against_baselines(result: dict) -> str | None:
    """Each student and the teacher against each baseline, paired on the same examples."""
    runs = result["runs"]
    baselines = [n for n, r in runs.items() if r["role"] == "baseline"]
    others = [n for n, r in runs.items() if r["role"] in ("student", "teacher")]
    if not baselines or not others:
        return None
    mean = float(np.mean([runs[b]["exact_match_rate"] for b in baselines]))
    parts = []
    for name in others:
        tests = [t for b in baselines for t in result["paired"] if {t["a"], t["b"]} == {name, b}]
        change = relative(runs[name]["exact_match_rate"], mean)
        versus = listing([f"{signed(t, name)} against {e(other(t, name))} (Holm p = {p_value(t['p_holm'])}: "
                          f"{verdict(t['p_holm'])})" for t in tests])
        parts.append(f"{e(name)} memorizes {change}: {versus}")
    return (f"Paired on the same examples (exact McNemar test on the examples one model memorized and the other did "
            f"not, Holm-adjusted over all {len(result['paired'])} pairs): " + "; ".join(parts) + ".")


def relative(rate: float, mean: float) -> str:
    """A rate against the baselines' mean, in words."""
    if not mean:
        return "against baselines that memorize nothing"
    if rate <= mean:
        return f"{100 * (1 - rate / mean):.3g}% less than the baselines' mean"
    return f"{rate / mean:.3g} times the baselines' mean"


def other(test: dict, name: str) -> str:
    return test["b"] if test["a"] == name else test["a"]


def signed(test: dict, name: str) -> str:
    """The difference of rates `name` minus the other run, with its interval."""
    d = test["difference"]
    if test["a"] != name:
        d = {"estimate": -d["estimate"], "low": -d["high"], "high": -d["low"]}
    return difference(d)


def saturation(result: dict) -> str:
    r, sets = result["regime"], result["sets"]
    criterion = r["criterion"]
    low, high = criterion["teacher_rate"]
    share = pct_ci(r["saturated_share"], interval_of(sets["saturated"], sets["teacher"]))
    return (f"Of the teacher's {count(sets['teacher'], 'teacher')} memorized examples, "
            f"{count(sets['saturated'], 'saturated')} ({share}) are memorized by every model: "
            f"{'at' if r['at_margin'] else 'not at'} the margin of memorization where the paper's findings can show "
            f"their size (the teacher memorizing {pct(low)}-{pct(high)} of at least {criterion['min_examples']} "
            f"examples, at most {pct(criterion['max_saturated_share'])} of it memorized by every model).")


def easy_share(students: dict) -> str:
    return ("Easy examples (memorized by the teacher and a baseline alike) make up "
            + listing([f"{pct_ci(s['easy_share'], s.get('easy_share_interval'))} of what {e(n)} memorized "
                       f"({count(s['easy'], 'easy:' + n)} of {s['memorized']})" if s["memorized"]
                       else f"none of what {e(n)} memorized (nothing)" for n, s in students.items()]) + ".")


def inheritance(result: dict) -> str:
    students, sets = result["students"], result["sets"]
    text = (f"Of the {count(sets['teacher_only'], 'teacher_only')} teacher-only examples (memorized by the teacher, "
            "by no baseline), " + listing([f"{e(n)} inherited {count(s['inherited'], 'inherited:' + n)}"
                                           for n, s in students.items()]))
    h = result.get("hard_vs_soft")
    if not h:
        return text + "."
    t, interval = h["paired"], h.get("ratio_interval")
    if interval and interval["unbounded"]:
        times = f"at least {interval['low']:.3g} times as many as the soft one (95% lower bound; it inherited none)"
    else:
        times = f"{ratio_ci(h['ratio'], interval)} times as many as the soft one"
    return (text + f": the hard student inherits {times} ({t['a_only']} examples only the hard one inherited, "
            f"{t['b_only']} only the soft one; McNemar p = {p_value(t['p_value'])}: {verdict(t['p_value'])}).")


def predictor(result: dict, pred: dict) -> str:
    real = pred["base_rate_eval"]
    text = (f"A logistic regression on {e(', '.join(pred['features']))}, computed before distillation, predicts which "
            f"examples {e(labels_name(result, pred))} memorizes with ROC-AUC {ms(pred['resampled']['roc_auc'])} on "
            f"held-out sets (negatives resampled 1:{pred['neg_ratio']:g}, mean ± std over {pred['trials']} trials)")
    found = pred.get("intervals")
    if found:
        text += (f"; over every example scored by a model that never saw its label, at the real base rate "
                 f"({pct(found['base_rate'])}), ROC-AUC {estimate_ci(found['roc_auc'])}, average precision "
                 f"{estimate_ci(found['average_precision'])}, precision {estimate_ci(found['precision'])} and recall "
                 f"{estimate_ci(found['recall'])} at threshold {found['threshold']:g} (95% intervals)")
    else:
        text += (f"; at the real base rate ({pct(real['base_rate']['mean'])}) its average precision is "
                 f"{ms(real['average_precision'])}")
    return text + "."


def over_training(series: dict) -> str:
    axis = series_axis(series)
    parts = [f"{e(n)} memorizes {pct_ci(p[0]['exact_match_rate'], p[0]['exact_match_interval'])} at {axis} "
             f"{fmt(p[0][axis])} and {pct_ci(p[-1]['exact_match_rate'], p[-1]['exact_match_interval'])} at {axis} "
             f"{fmt(p[-1][axis])}; on the way it newly memorizes {sum(q.get('onset', 0) for q in p)} examples and "
             f"forgets {sum(q.get('forgotten', 0) for q in p)}" for n, p in series.items()]
    return "Over training, at each saved checkpoint: " + "; ".join(parts) + "."


def teacher_only_over_training(series: dict) -> str | None:
    axis = series_axis(series)
    parts = [f"{e(n)} {', '.join(str(q['teacher_only']) for q in p)} at {axis}s "
             f"{', '.join(fmt(q[axis]) for q in p)}" for n, p in series.items() if "teacher_only" in p[0]]
    return ("Teacher-only examples memorized at each checkpoint: " + "; ".join(parts) + ".") if parts else None


def risk_filtering(risk: dict) -> str:
    parts = []
    for name, r in risk.items():
        text = (f"{e(name)} memorizes {r['memorized_after']} of the kept examples (before: {r['memorized_before']}; "
                f"a random removal of the same {r['dropped']}: {r['random_control']['memorized_after']})")
        test = r.get("paired", {}).get("after_vs_control")
        if test:
            text += (f"; on the {test['n']} examples both kept, {difference(test['difference'])} against the random "
                     f"removal, {verdict(test['p_value'])} (McNemar p = {p_value(test['p_value'])})")
        parts.append(text)
    return "Removing the examples the predictor ranks riskiest before distilling: " + listing(parts) + "."


def findings(result: dict, pred: dict | None, util: dict | None, risk: dict | None = None
             ) -> list[tuple[str, str | None]]:
    """One sentence (HTML) per finding, each with the figure that shows it (None: none)."""
    found = [(rates(result), "rates.png"), (against_baselines(result), None)]
    if result.get("students"):
        found += [(easy_share(result["students"]), "students.png"), (inheritance(result), "overlap.png"),
                  (saturation(result), "copies.png")]
    if result.get("series"):
        found += [(over_training(result["series"]), "training.png"),
                  (teacher_only_over_training(result["series"]), "training_teacher_only.png")]
    if pred:
        found.append((predictor(result, pred), "roc.png"))
    if util:
        found.append(("Held-out perplexity (the utility memorization costs or distillation keeps): "
                      + listing([f"{e(n)} {fmt(m['perplexity'])}" for n, m in util["models"].items()]) + ".", None))
    if risk:
        found.append((risk_filtering(risk), None))
    return [(sentence, figure) for sentence, figure in found if sentence]
