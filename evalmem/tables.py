"""Result tables: rows built once, written as Markdown (printed, compare.md) or HTML (the report)."""

from __future__ import annotations

import html

from evalmem.explorer import set_href
from evalmem.stats import ALPHA

Table = tuple[str, list[str], list[list]]  # title, header, rows


class Link(str):
    """A cell that links to the explorer filtered to the set `name` in HTML; in Markdown, its text."""

    def __new__(cls, value, name: str):
        cell = super().__new__(cls, fmt(value))
        cell.set = name
        return cell


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):  # text, and Links, stay as they are
        return value
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.3g}%"


def pct_ci(value, interval: dict | None) -> str:
    """A rate with its 95% interval in percent: 4.05% [3.31, 4.97]."""
    if value is None or not interval:
        return pct(value)
    return f"{pct(value)} [{100 * interval['low']:.3g}, {100 * interval['high']:.3g}]"


def p_value(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def verdict(p: float) -> str:
    return "distinguishable" if p < ALPHA else "not distinguishable"


def difference(d: dict | None) -> str:
    """A difference of rates in percentage points with its interval."""
    if not d:
        return "–"
    low, estimate, high = (100 * d[k] + 0.0 for k in ("low", "estimate", "high"))  # + 0.0: no "-0"
    return f"{estimate:+.3g} pp [{low:+.3g}, {high:+.3g}]"


def ratio_ci(value, interval: dict | None) -> str:
    """A ratio with its interval: 34 [6.1, 199], or unbounded above (the denominator memorized none)."""
    if not interval:
        return fmt(value)
    low = f"{interval['low']:.3g}"
    if interval["unbounded"]:
        return f"{fmt(value) if value is not None else 'unbounded'} [{low}, unbounded]"
    return f"{value:.3g} [{low}, {interval['high']:.3g}]"


def compare_tables(result: dict) -> list[Table]:
    """The comparison's tables; each count of examples links to those examples (Link)."""
    tables = [("Memorization per model (95% Wilson intervals)",
               ["model", "role", "n", "exact matches", "exact rate", "approx. rate", "mean token accuracy"],
               [[name, r["role"], r["n"], Link(r["exact_match_count"], f"memorized:{name}"),
                 pct_ci(r["exact_match_rate"], r.get("exact_match_interval")),
                 pct_ci(r["approx_match_rate"], r.get("approx_match_interval")), fmt(r["mean_token_accuracy"])]
                for name, r in result["runs"].items()])]
    if result.get("paired"):
        tables.append(paired_table(result["paired"]))
    if "sets" in result:
        tables.append(("Teacher and baseline sets", ["set", "examples"],
                       [[k, Link(v, k)] for k, v in result["sets"].items()]))
    if result.get("students"):
        tables.append(("Students", ["student", "memorized", "easy", "inherited", "neither", "easy share",
                                    "inherited share", "neither share", "inheritance rate"],
                       [[name, *(Link(s[k], f"{k}:{name}") for k in ("memorized", "easy", "inherited", "neither")),
                         pct_ci(s["easy_share"], s.get("easy_share_interval")), pct(s["inherited_share"]),
                         pct(s["neither_share"]), pct_ci(s["inheritance_rate"], s.get("inheritance_interval"))]
                        for name, s in result["students"].items()]))
    if "hard_vs_soft" in result:
        h = result["hard_vs_soft"]
        t = h["paired"]
        tables.append(("Hard vs soft distillation on the teacher-only examples (paired)",
                       ["hard inherited", "soft inherited", "hard only", "soft only", "hard/soft ratio",
                        "McNemar p", "verdict"],
                       [[Link(h["hard_inherited"], "inherited:hard"), Link(h["soft_inherited"], "inherited:soft"),
                         t["a_only"], t["b_only"], ratio_ci(h["ratio"], h.get("ratio_interval")),
                         p_value(t["p_value"]), verdict(t["p_value"])]]))
    if result.get("by_copies"):
        first = next(iter(result["by_copies"].values()))
        tables.append(("Memorization by copy count of the suffix (memorized / examples)", ["model", *first],
                       [[name, *(f"{c['memorized']} / {c['n']}" for c in cells.values())]
                        for name, cells in result["by_copies"].items()]))
    tables += [series_table(name, points) for name, points in result.get("series", {}).items()]
    tables.append(("Pairwise overlap of memorized sets", ["a", "b", "intersection", "Jaccard", "overlap coefficient"],
                   [[o["a"], o["b"], o["intersection"], fmt(o["jaccard"]), fmt(o["overlap_coefficient"])]
                    for o in result["overlaps"]]))
    return tables


def paired_table(tests: list[dict]) -> Table:
    """Every pair of runs on their shared examples: who memorized what the other did not, the difference of
    rates, the exact McNemar test and its Holm adjustment."""
    return (f"Paired tests (exact McNemar on the examples one run memorized and the other did not; Holm-adjusted over "
            f"the {len(tests)} pairs)",
            ["a", "b", "a only", "b only", "difference a − b", "p", "Holm p", "verdict"],
            [[t["a"], t["b"], t["a_only"], t["b_only"], difference(t["difference"]), p_value(t["p_value"]),
              p_value(t["p_holm"]), verdict(t["p_holm"])] for t in tests])


def series_table(name: str, points: list[dict]) -> Table:
    """One model over training: each checkpoint's rate, and what it newly memorized and forgot."""
    teacher_only = "teacher_only" in points[0]
    return (f"Memorization over training: {name}",
            ["step", "epoch", "memorized", "rate", "onset", "forgotten", "change p"]
            + (["teacher-only memorized"] if teacher_only else []),
            [[p["step"], fmt(p["epoch"]), p["exact_match_count"], pct_ci(p["exact_match_rate"],
                                                                          p["exact_match_interval"]),
              Link(p["onset"], f"onset:{p['name']}") if "onset" in p else "–",
              Link(p["forgotten"], f"forgotten:{p['name']}") if "forgotten" in p else "–",
              p_value(p["p_value"]) if "p_value" in p else "–"]
             + ([p["teacher_only"]] if teacher_only else []) for p in points])


def ms(d: dict) -> str:
    return f"{d['mean']:.4f} ± {d['std']:.4f}"


def predict_tables(pred: dict) -> list[Table]:
    resampled, real = pred["resampled"], pred["base_rate_eval"]
    return [
        (f"Predictor: held-out test sets, negatives resampled 1:{pred['neg_ratio']}, {pred['trials']} trials",
         ["ROC-AUC", "precision", "recall"], [[ms(resampled[k]) for k in ("roc_auc", "precision", "recall")]]),
        ("Predictor at the real base rate (every example not used for training, no resampling)",
         ["base rate", "ROC-AUC", "average precision", "precision", "recall"],
         [[ms(real[k]) for k in ("base_rate", "roc_auc", "average_precision", "precision", "recall")]]),
        ("Standardized coefficients", ["feature", "coefficient"],
         [[name, ms(c)] for name, c in pred["coefficients"].items()]),
    ] + ([intervals_table(pred["intervals"])] if "intervals" in pred else [])


def intervals_table(found: dict) -> Table:
    """The predictor on every example's cross-fitted risk at the real base rate, with 95% intervals."""
    return (f"Predictor on the {found['scores']} at the real base rate ({pct(found['base_rate'])}; 95% intervals: "
            f"{found['method']})", ["ROC-AUC", "average precision", f"precision at {found['threshold']:g}",
                                    f"recall at {found['threshold']:g}"],
            [[estimate_ci(found[k]) for k in ("roc_auc", "average_precision", "precision", "recall")]])


def utility_table(utility: dict) -> Table:
    return (f"Utility: perplexity on {utility['n_windows']} held-out windows of {utility['window_len']} tokens",
            ["model", "perplexity", "mean NLL"],
            [[name, fmt(m["perplexity"]), fmt(m["mean_nll"])] for name, m in utility["models"].items()])


def summary_tables(result: dict, pred: dict | None, utility: dict | None, risk: dict | None = None) -> list[Table]:
    """The paper-shaped summary: each model's memorized examples and rate, the easy ones among them (for the
    teacher: all easy examples), the teacher-only examples it inherited and its held-out perplexity; then the
    teacher-only count, the hard/soft inheritance ratio and the predictor's AUC; then the risk-filtering
    experiment."""
    sets, students = result.get("sets", {}), result.get("students", {})
    ppl = (utility or {}).get("models", {})
    rows = []
    for name, run in result["runs"].items():
        student = students.get(name)
        if student:
            easy, share = Link(student["easy"], f"easy:{name}"), pct_ci(student["easy_share"],
                                                                      student.get("easy_share_interval"))
        elif run["role"] == "teacher" and "easy" in sets:
            easy, share = Link(sets["easy"], "easy"), pct(sets["easy"] / sets["teacher"] if sets["teacher"] else None)
        else:
            easy, share = None, pct(None)
        rows.append([name, run["role"], Link(run["exact_match_count"], f"memorized:{name}"),
                     pct_ci(run["exact_match_rate"], run.get("exact_match_interval")), fmt(easy), share,
                     Link(student["inherited"], f"inherited:{name}") if student else fmt(None),
                     fmt(ppl.get(name, {}).get("perplexity"))])
    teacher_only = Link(sets["teacher_only"], "teacher_only") if "teacher_only" in sets else None
    hard_soft = result.get("hard_vs_soft", {})
    return [("Summary (the paper's table; rates with 95% intervals)",
             ["model", "role", "memorized", "memorization rate", "easy", "easy share", "inherited (teacher-only)",
              "held-out perplexity"], rows),
            ("Headline", ["teacher-only examples", "hard/soft inherited ratio", "predictor ROC-AUC (95% interval)",
                          "ROC-AUC over resampled trials"],
             [[fmt(teacher_only), ratio_ci(hard_soft.get("ratio"), hard_soft.get("ratio_interval")),
               estimate_ci(pred["intervals"]["roc_auc"]) if pred and "intervals" in pred else "–",
               ms(pred["resampled"]["roc_auc"]) if pred else "–"]])
            ] + ([risk_table(risk)] if risk else [])


def estimate_ci(d: dict) -> str:
    """An estimate with its interval: 0.997 [0.991, 1]."""
    return f"{d['estimate']:.3g} [{d['low']:.3g}, {d['high']:.3g}]"


def risk_table(risk: dict) -> Table:
    """The risk-filtering experiment: memorized examples among those kept, before and after removing the
    riskiest, against a random removal of the same size."""
    def versus(r):
        test = r.get("paired", {}).get("after_vs_control")
        if not test:
            return ["–", "–"]
        return [f"{difference(test['difference'])}, p = {p_value(test['p_value'])}", verdict(test["p_value"])]

    return ("Risk filtering (memorized among the kept examples; filtered vs random on the examples both kept, "
            "exact McNemar)",
            ["student", "dropped", "memorized before", "memorized after", "random removal: before", "after",
             "filtered − random", "verdict"],
            [[name, r["dropped"], r["memorized_before"], r["memorized_after"],
              r["random_control"]["memorized_before"], r["random_control"]["memorized_after"], *versus(r)]
             for name, r in risk.items()])


def markdown(tables: list[Table]) -> str:
    parts = []
    for title, header, rows in tables:
        lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def html_tables(tables: list[Table]) -> str:
    def cell(c):
        text = html.escape(str(c))
        return f'<a href="{html.escape(set_href(c.set))}">{text}</a>' if isinstance(c, Link) else text

    def row(cells, tag):
        return "<tr>" + "".join(f"<{tag}>{cell(c)}</{tag}>" for c in cells) + "</tr>"

    return "\n".join(f"<h3>{html.escape(title)}</h3>\n<table>{row(header, 'th')}"
                     + "".join(row(r, "td") for r in rows) + "</table>" for title, header, rows in tables)
