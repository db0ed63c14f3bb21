"""What `compare` and `report` write: tables (Markdown and HTML from the same rows), matplotlib PNG
figures, and one self-contained HTML page: the headline (the paper-shaped table, one sentence per finding with
its figure), the other figures, the example explorer and the detail tables; figures embedded as base64, every
count of examples a link to those examples in the explorer."""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

from evalmem.analysis import compare, join, load_counts, token_accuracies
from evalmem.errors import InputError, first_line
from evalmem.explorer import explorer_section, load_decoder, load_risk, load_tables, unavailable
from evalmem.figures import (ALT, draw_coefficients, draw_copies, draw_overlap, draw_pr, draw_profile, draw_rates,
                             draw_roc, draw_series, draw_series_teacher_only, draw_students, draw_token_accuracy, png)
from evalmem.findings import findings, mode_note
from evalmem.settings import ReportSettings
from evalmem.store import make_dir, write_atomic, write_json
from evalmem.tables import (compare_tables, html_tables, markdown, predict_tables, summary_tables,
                            utility_table)

def write_compare(out: str | Path, runs, counts: str | None = None) -> dict:
    """`evalmem compare`: join the runs and write compare.json, compare.md, sets.json and PNG figures."""
    out = make_dir(out)
    joined = join(runs)
    result, ids = compare(joined, load_counts(counts, joined) if counts else None)
    figures = {"rates.png": draw_rates(result)} if result["runs"] else {}
    if len(result["runs"]) > 1:
        figures["overlap.png"] = draw_overlap(result)
    accuracies = token_accuracies([r for r in joined if r.role != "series"])
    if accuracies:  # only runs that decoded every suffix have token accuracies
        figures["token_accuracy.png"] = draw_token_accuracy(accuracies)
    if result.get("series"):
        figures["training.png"] = draw_series(result["series"])
        with_teacher_only = {n: s for n, s in result["series"].items() if "teacher_only" in s[0]}
        if with_teacher_only:
            figures["training_teacher_only.png"] = draw_series_teacher_only(with_teacher_only)
    if result.get("students"):
        figures["students.png"] = draw_students(result)
    if result.get("by_copies"):
        figures["copies.png"] = draw_copies(result["by_copies"])
    profiles = {r.name: r.profile for r in joined if r.profile}
    if profiles:
        result["profiles"] = profiles
        figures["profile.png"] = draw_profile(profiles)
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


def load_inputs(compare_dir, predict_dir=None, utility=None, risk_filter=None) -> tuple:
    """compare.json, and (each optional) predict.json, the perplexity file and the risk-filter file."""
    result = read_json(Path(compare_dir) / "compare.json", "evalmem compare")
    pred = read_json(Path(predict_dir) / "predict.json", "evalmem predict") if predict_dir else None
    return (result, pred, read_json(Path(utility), "evalmem perplexity") if utility else None,
            read_json(Path(risk_filter), "evalmem filter-effect") if risk_filter else None)


def figures(compare_dir: Path, result: dict, pred: dict | None) -> dict[str, bytes]:
    """compare's figures (read from its directory) and the predictor's (drawn here), by file name."""
    images = {}
    for name in result.get("figures", []):
        try:
            images[name] = (compare_dir / name).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read figure {compare_dir / name}: {exc.strerror}") from exc
    if pred:
        if "roc" in pred:
            images["roc.png"], images["pr.png"] = png(draw_roc(pred)), png(draw_pr(pred))
        images["coefficients.png"] = png(draw_coefficients(pred))
    return images


def image(name: str, data: bytes) -> str:
    alt = html.escape(ALT.get(name, name), quote=True)
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{base64.b64encode(data).decode()}"></figure>'



def headline(result: dict, pred: dict | None, util: dict | None, risk: dict | None, images: dict
             ) -> tuple[str, list]:
    """The paper-shaped tables, then each finding with its figure; returns the HTML and the figures it used."""
    used, cards = [], []
    for sentence, name in findings(result, pred, util, risk):
        figure = image(name, images[name]) if name in images else ""
        used += [name] if figure else []
        cards.append(f'<div class="finding"><p>{sentence}</p>{figure}</div>')
    return (f'<section id="headline">{html_tables(summary_tables(result, pred, util, risk))}'
            f'<div class="findings">{"".join(cards)}</div></section>'), used


def explorer(result: dict, sets: dict, predict_dir, settings: ReportSettings) -> str:
    """The example explorer over every run's results, text decoded with the teacher's tokenizer."""
    dirs = {name: run["dir"] for name, run in result["runs"].items()}
    try:
        tables = load_tables(dirs)
    except InputError as exc:
        return unavailable(str(exc))
    teacher = next((n for n, r in result["runs"].items() if r["role"] == "teacher"), next(iter(dirs)))
    decode, note = load_decoder(dirs[teacher])
    return explorer_section(tables, decode, sets, load_risk(predict_dir), settings.max_examples, note=note)


def write_report(compare_dir: str | Path, predict_dir: str | Path | None, out: str | Path,
                 utility: str | Path | None = None, risk_filter: str | Path | None = None,
                 settings: ReportSettings = ReportSettings()) -> dict:
    """`evalmem report`: one self-contained HTML page from a compare (and optionally a predict) directory,
    a perplexity file and a risk-filter file, beginning with the paper-shaped summary."""
    compare_dir = Path(compare_dir)
    result, pred, util, risk = load_inputs(compare_dir, predict_dir, utility, risk_filter)
    sets = read_json(compare_dir / "sets.json", "evalmem compare")
    images = figures(compare_dir, result, pred)
    top, used = headline(result, pred, util, risk, images)
    details = compare_tables(result) + (predict_tables(pred) if pred else []) + ([utility_table(util)] if util else [])
    protocol = result.get("protocol", {})
    body = "\n".join([
        "<h1>evalmem memorization report</h1>",
        f"<p>Data: <code>{html.escape(str(result.get('data')))}</code>; {result['n_examples']} examples in "
        f"every run; prefix {protocol.get('prefix_len')} tokens, suffix {protocol.get('suffix_len')} tokens "
        "(greedy decoding must reproduce the suffix exactly). Generated "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>" + mode_note(result),
        '<nav><a href="#headline">Headline</a> · <a href="#figures">Figures</a> · <a href="#explore">Examples</a>'
        ' · <a href="#details">Details</a></nav>',
        top,
        '<section id="figures"><h2>Figures</h2><div class="figures">',
        *(image(name, data) for name, data in images.items() if name not in used),
        "</div></section>",
        explorer(result, sets, predict_dir, settings),
        f'<section id="details"><h2>Details</h2>{html_tables(details)}</section>',
    ])
    page = (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>evalmem report</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")
    write_atomic(out, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    summary = summary_tables(result, pred, util, risk)
    return {"out": str(out), "tables": len(details) + len(summary), "figures": list(images),
            "summary": markdown(summary)}


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}"
         "h1{margin-bottom:.2em}nav{margin:.4em 0 1em;font-size:.95em}"
         "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:3px 8px;"
         "text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}img{max-width:100%}"
         "a{color:#0645ad}figure{margin:0}.note{color:#555;font-size:.95em}"
         ".findings{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:1em}"
         ".finding{border:1px solid #d6d9de;border-radius:4px;padding:.5em .8em}.finding p{margin:.2em 0 .5em;"
         "line-height:1.45}.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:1em}")
