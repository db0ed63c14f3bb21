"""Result tables: rows built once, written as Markdown (printed, compare.md) or HTML (the report)."""

from __future__ import annotations

import html

from evalmem.explorer import set_href

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


def compare_tables(result: dict) -> list[Table]:
    """The comparison's tables; each count of examples links to those examples (Link)."""
    tables = [("Memorization per model", ["model", "role", "n", "exact matches", "exact rate", "approx. rate",
                                          "mean token accuracy"],
               [[name, r["role"], r["n"], Link(r["exact_match_count"], f"memorized:{name}"), pct(r["exact_match_rate"]),
                 pct(r["approx_match_rate"]), fmt(r["mean_token_accuracy"])] for name, r in result["runs"].items()])]
    if "sets" in result:
        tables.append(("Teacher and baseline sets", ["set", "examples"],
                       [[k, Link(v, k)] for k, v in result["sets"].items()]))
    if result.get("students"):
        tables.append(("Students", ["student", "memorized", "easy", "inherited", "neither", "easy share",
                                    "inherited share", "neither share", "inheritance rate"],
                       [[name, *(Link(s[k], f"{k}:{name}") for k in ("memorized", "easy", "inherited", "neither")),
                         pct(s["easy_share"]), pct(s["inherited_share"]), pct(s["neither_share"]),
                         pct(s["inheritance_rate"])] for name, s in result["students"].items()]))
    if "hard_vs_soft" in result:
        h = result["hard_vs_soft"]
        tables.append(("Hard vs soft distillation", ["hard inherited", "soft inherited", "ratio"],
                       [[h["hard_inherited"], h["soft_inherited"], fmt(h["ratio"])]]))
    if result.get("by_copies"):
        first = next(iter(result["by_copies"].values()))
        tables.append(("Memorization by copy count of the suffix (memorized / examples)", ["model", *first],
                       [[name, *(f"{c['memorized']} / {c['n']}" for c in cells.values())]
                        for name, cells in result["by_copies"].items()]))
    tables.append(("Pairwise overlap of memorized sets", ["a", "b", "intersection", "Jaccard", "overlap coefficient"],
                   [[o["a"], o["b"], o["intersection"], fmt(o["jaccard"]), fmt(o["overlap_coefficient"])]
                    for o in result["overlaps"]]))
    return tables


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
    ]


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
            easy, share = Link(student["easy"], f"easy:{name}"), student["easy_share"]
        elif run["role"] == "teacher" and "easy" in sets:
            easy, share = Link(sets["easy"], "easy"), sets["easy"] / sets["teacher"] if sets["teacher"] else None
        else:
            easy, share = None, None
        rows.append([name, run["role"], Link(run["exact_match_count"], f"memorized:{name}"),
                     pct(run["exact_match_rate"]), fmt(easy), pct(share),
                     Link(student["inherited"], f"inherited:{name}") if student else fmt(None),
                     fmt(ppl.get(name, {}).get("perplexity"))])
    auc = ms(pred["resampled"]["roc_auc"]) if pred else None
    teacher_only = Link(sets["teacher_only"], "teacher_only") if "teacher_only" in sets else None
    return [("Summary (the paper's table)", ["model", "role", "memorized", "memorization rate", "easy",
                                              "easy share", "inherited (teacher-only)", "held-out perplexity"], rows),
            ("Headline", ["teacher-only examples", "hard/soft inherited ratio", "predictor ROC-AUC"],
             [[fmt(teacher_only), fmt(result.get("hard_vs_soft", {}).get("ratio")), fmt(auc)]])
            ] + ([risk_table(risk)] if risk else [])


def risk_table(risk: dict) -> Table:
    """The risk-filtering experiment: memorized examples among those kept, before and after removing the
    riskiest, against a random removal of the same size."""
    return ("Risk filtering (memorized among the kept examples)",
            ["student", "dropped", "memorized before", "memorized after", "random removal: before", "after"],
            [[name, r["dropped"], r["memorized_before"], r["memorized_after"],
              r["random_control"]["memorized_before"], r["random_control"]["memorized_after"]]
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
