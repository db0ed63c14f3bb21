"""What `compare` and `report` write: tables (Markdown and HTML from the same rows), matplotlib PNG
figures, and one self-contained HTML page with the figures embedded as base64."""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

from evalmem.analysis import compare, join, load_counts, token_accuracies
from evalmem.errors import InputError, first_line
from evalmem.figures import (draw_coefficients, draw_copies, draw_overlap, draw_profile, draw_rates, draw_students,
                             draw_token_accuracy, png)
from evalmem.store import make_dir, write_atomic, write_json
from evalmem.tables import compare_tables, html_tables, markdown, predict_tables, summary_tables, utility_table

def write_compare(out: str | Path, runs, counts: str | None = None) -> dict:
    """`evalmem compare`: join the runs and write compare.json, compare.md, sets.json and PNG figures."""
    out = make_dir(out)
    joined = join(runs)
    result, ids = compare(joined, load_counts(counts, joined) if counts else None)
    figures = {"rates.png": draw_rates(result), "overlap.png": draw_overlap(result),
               "token_accuracy.png": draw_token_accuracy(token_accuracies(joined))}
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


def write_report(compare_dir: str | Path, predict_dir: str | Path | None, out: str | Path,
                 utility: str | Path | None = None, risk_filter: str | Path | None = None) -> dict:
    """`evalmem report`: one self-contained HTML page from a compare (and optionally a predict) directory,
    a perplexity file and a risk-filter file, ending with the paper-shaped summary."""
    compare_dir = Path(compare_dir)
    result, pred, util, risk = load_inputs(compare_dir, predict_dir, utility, risk_filter)
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
    summary = summary_tables(result, pred, util, risk)
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
