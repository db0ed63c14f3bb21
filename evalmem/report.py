"""What `compare` and `report` write: tables (Markdown and HTML from the same rows), matplotlib PNG
figures, and one self-contained HTML page with the figures embedded as base64."""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from evalmem.analysis import compare, join, token_accuracies
from evalmem.errors import InputError, first_line
from evalmem.store import write_atomic, write_json

Table = tuple[str, list[str], list[list]]  # title, header, rows


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.3g}%"


def compare_tables(result: dict) -> list[Table]:
    tables = [("Memorization per model", ["model", "role", "n", "exact matches", "exact rate", "approx. rate",
                                          "mean token accuracy"],
               [[name, r["role"], r["n"], r["exact_match_count"], pct(r["exact_match_rate"]),
                 pct(r["approx_match_rate"]), fmt(r["mean_token_accuracy"])] for name, r in result["runs"].items()])]
    if "sets" in result:
        tables.append(("Teacher and baseline sets", ["set", "examples"], [[k, v] for k, v in result["sets"].items()]))
    if result.get("students"):
        tables.append(("Students", ["student", "memorized", "easy", "inherited", "neither", "easy share",
                                    "inherited share", "neither share", "inheritance rate"],
                       [[name, s["memorized"], s["easy"], s["inherited"], s["neither"], pct(s["easy_share"]),
                         pct(s["inherited_share"]), pct(s["neither_share"]), pct(s["inheritance_rate"])]
                        for name, s in result["students"].items()]))
    if "hard_vs_soft" in result:
        h = result["hard_vs_soft"]
        tables.append(("Hard vs soft distillation", ["hard inherited", "soft inherited", "ratio"],
                       [[h["hard_inherited"], h["soft_inherited"], fmt(h["ratio"])]]))
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


def summary_tables(result: dict, pred: dict | None, utility: dict | None) -> list[Table]:
    """The paper-shaped summary: each model's memorization rate, the share of its memorized examples that
    are easy, the teacher-only examples it inherited and its held-out perplexity; then the hard/soft
    inheritance ratio and the predictor's AUC."""
    sets, students = result.get("sets", {}), result.get("students", {})
    ppl = (utility or {}).get("models", {})
    rows = []
    for name, run in result["runs"].items():
        student = students.get(name, {})
        easy = student.get("easy_share") if student else \
            (sets["easy"] / sets["teacher"] if run["role"] == "teacher" and sets.get("teacher") else None)
        rows.append([name, run["role"], pct(run["exact_match_rate"]), pct(easy), fmt(student.get("inherited")),
                     fmt(ppl.get(name, {}).get("perplexity"))])
    auc = ms(pred["resampled"]["roc_auc"]) if pred else None
    return [("Summary (the paper's table)", ["model", "role", "memorization rate", "easy share",
                                              "inherited (teacher-only)", "held-out perplexity"], rows),
            ("Headline", ["hard/soft inherited ratio", "predictor ROC-AUC"],
             [[fmt(result.get("hard_vs_soft", {}).get("ratio")), fmt(auc)]])]


def markdown(tables: list[Table]) -> str:
    parts = []
    for title, header, rows in tables:
        lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def html_tables(tables: list[Table]) -> str:
    def row(cells, tag):
        return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"

    return "\n".join(f"<h3>{html.escape(title)}</h3>\n<table>{row(header, 'th')}"
                     + "".join(row(r, "td") for r in rows) + "</table>" for title, header, rows in tables)


def png(draw, size=(6.4, 4.0)) -> bytes:
    """Render `draw(ax)` on a new figure (no pyplot state) and return the PNG bytes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    draw(fig.subplots())
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def draw_rates(result):
    def draw(ax):
        names = list(result["runs"])
        x = np.arange(len(names))
        for offset, key, label in ((-0.2, "exact_match_rate", "exact"), (0.2, "approx_match_rate", "approximate")):
            rates = [result["runs"][n][key] for n in names]  # None: not computed (no full decoding)
            ax.bar(x + offset, [np.nan if r is None else 100 * r for r in rates], 0.4, label=label)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel("% of examples memorized")
        ax.set_title("Memorization rate per model")
        ax.legend()
    return draw


def draw_overlap(result):
    """Pairwise overlap of memorized sets: cell counts are intersections, colour is Jaccard."""
    def draw(ax):
        names = list(result["runs"])
        k = len(names)
        count = np.diag([result["runs"][n]["exact_match_count"] for n in names]).astype(float)
        jaccard = np.eye(k)
        for o in result["overlaps"]:
            i, j = names.index(o["a"]), names.index(o["b"])
            count[i, j] = count[j, i] = o["intersection"]
            jaccard[i, j] = jaccard[j, i] = o["jaccard"] or 0.0
        image = ax.imshow(jaccard, vmin=0, vmax=1, cmap="Blues")
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{count[i, j]:.0f}", ha="center", va="center",
                        color="white" if jaccard[i, j] > 0.6 else "black")
        ax.set_xticks(range(k), names, rotation=30, ha="right")
        ax.set_yticks(range(k), names)
        ax.set_title("Memorized-set overlap (counts; colour = Jaccard)")
        ax.figure.colorbar(image, ax=ax, label="Jaccard")
    return draw


def draw_token_accuracy(accuracies: dict[str, np.ndarray]):
    def draw(ax):
        bins = np.linspace(0, 1, 26)
        for name, acc in accuracies.items():
            ax.hist(acc, bins=bins, histtype="step", linewidth=1.5, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("token accuracy of the greedy suffix")
        ax.set_ylabel("examples")
        ax.set_title("Token-accuracy distribution per model")
        ax.legend()
    return draw


def draw_students(result):
    def draw(ax):
        names = list(result["students"])
        left = np.zeros(len(names))
        for part in ("easy", "inherited", "neither"):
            values = np.array([result["students"][n][part] for n in names], dtype=float)
            ax.barh(names, values, left=left, label=part)
            left += values
        ax.set_xlabel("memorized examples")
        ax.set_title("What each student memorized")
        ax.legend()
    return draw


def draw_coefficients(pred):
    def draw(ax):
        names = list(pred["coefficients"])
        ax.barh(names, [pred["coefficients"][n]["mean"] for n in names],
                xerr=[pred["coefficients"][n]["std"] for n in names])
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("standardized coefficient (mean ± std over trials)")
        ax.set_title("Memorization predictor")
    return draw


def write_compare(out: str | Path, runs) -> dict:
    """`evalmem compare`: join the runs and write compare.json, compare.md, sets.json and PNG figures."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write to {out}: {exc.strerror or first_line(exc)}") from exc
    joined = join(runs)
    result, ids = compare(joined)
    figures = {"rates.png": draw_rates(result), "overlap.png": draw_overlap(result),
               "token_accuracy.png": draw_token_accuracy(token_accuracies(joined))}
    if result.get("students"):
        figures["students.png"] = draw_students(result)
    for name, draw in figures.items():
        data = png(draw)
        write_atomic(out / name, lambda tmp: Path(tmp).write_bytes(data))
    result["figures"] = list(figures)
    write_json(out / "sets.json", ids)
    text = markdown(compare_tables(result))
    write_atomic(out / "compare.md", lambda tmp: Path(tmp).write_text(text))
    write_json(out / "compare.json", result)  # last: its presence means the comparison is complete
    return result


def read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"no {path.name} in {path.parent}: pass a directory written by {what}") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {first_line(exc)}") from exc
    if not isinstance(value, dict):
        raise InputError(f"cannot read {path}: not written by {what} (a JSON object expected)")
    return value


def load_inputs(compare_dir, predict_dir=None, utility=None) -> tuple[dict, dict | None, dict | None]:
    """compare.json, predict.json (optional) and the perplexity file (optional)."""
    result = read_json(Path(compare_dir) / "compare.json", "evalmem compare")
    pred = read_json(Path(predict_dir) / "predict.json", "evalmem predict") if predict_dir else None
    return result, pred, read_json(Path(utility), "evalmem perplexity") if utility else None


def write_report(compare_dir: str | Path, predict_dir: str | Path | None, out: str | Path,
                 utility: str | Path | None = None) -> dict:
    """`evalmem report`: one self-contained HTML page from a compare (and optionally a predict) directory
    and a perplexity file, ending with the paper-shaped summary."""
    compare_dir = Path(compare_dir)
    result, pred, util = load_inputs(compare_dir, predict_dir, utility)
    tables = compare_tables(result)
    images = {}
    for name in result.get("figures", []):
        try:
            images[name] = (compare_dir / name).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read figure {compare_dir / name}: {exc.strerror}") from exc
    if pred:
        tables += predict_tables(pred)
        images["coefficients.png"] = png(draw_coefficients(pred))
    if util:
        tables.append(utility_table(util))
    summary = summary_tables(result, pred, util)
    protocol = result.get("protocol", {})
    body = "\n".join([
        "<h1>evalmem memorization report</h1>",
        f"<p>Data: <code>{html.escape(str(result.get('data')))}</code>; {result['n_examples']} examples in "
        f"every run; prefix {protocol.get('prefix_len')} tokens, suffix {protocol.get('suffix_len')} tokens "
        "(greedy decoding must reproduce the suffix exactly). Generated "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
        html_tables(tables),
        *(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
          f'{base64.b64encode(data).decode()}"></figure>' for name, data in images.items()),
        html_tables(summary),
    ])
    page = (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>evalmem report</title><style>{STYLE}"
            f"</style></head><body>\n{body}\n</body></html>\n")
    write_atomic(out, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return {"out": str(out), "tables": len(tables) + len(summary), "figures": list(images),
            "summary": markdown(summary)}


STYLE = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:3px 8px;"
         "text-align:right}th{background:#f3f3f3}img{max-width:100%}")
