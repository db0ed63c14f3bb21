"""The report's example explorer: WHICH text each model memorized.

One row per example that any model memorized or nearly memorized (match_len >= half the suffix), the most
memorized first: its prefix, its true suffix and every model's greedy continuation, the tokens that match the
true suffix highlighted and the first mismatch marked. Filters by the sets of `compare/sets.json`, sorting by a
model's match_len or by predicted risk, 100 rows per page; at most `max_examples` rows are embedded, the rest
counted.

The data travel as JSON in a `<script type="application/json">` (token ids, plus one text piece per token id
used, so that each piece is stored once) and the page builds its DOM with textContent only (assets/explorer.js):
no example text is ever parsed as HTML. Deep links `#explore?set=NAME[&sort=KEY]` (`set_href`) open the
explorer on exactly that set.
"""

from __future__ import annotations

import html
import json
import math
from importlib import resources
from pathlib import Path
from typing import Callable, Mapping, Sequence
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from evalmem.errors import InputError, first_line
from evalmem.store import read_results

COLUMNS = ("example_id", "exact_match", "match_len", "generated_ids", "prefix_ids", "suffix_ids")
Decode = Callable[[list], list]  # token ids -> one text piece per id
PREFIXES = {"easy": "easy, memorized by {}", "inherited": "inherited by {} (teacher-only)",
            "neither": "memorized by {}, not the teacher", "memorized": "memorized by {}"}


def set_href(name: str, sort: str | None = None) -> str:
    """The link that opens the explorer filtered to the set `name` (e.g. `inherited:hard`), optionally sorted
    by `sort` ("risk" or "match_len:MODEL")."""
    return "#explore?set=" + quote(name, safe=":") + (f"&sort={quote(sort, safe=':')}" if sort else "")


def token_pieces(tokenizer) -> Decode:
    """Each token id decoded on its own (a character split over several byte-level tokens shows as U+FFFD)."""
    return lambda ids: tokenizer.batch_decode([[i] for i in ids])


def id_pieces(ids: list) -> list:
    """Token ids shown as themselves, where no tokenizer could be loaded."""
    return [f"\u27e8{i}\u27e9" for i in ids]


def load_decoder(run_dir: str | Path) -> tuple[Decode, str]:
    """The decode function of the tokenizer a run used (its manifest's tokenizer, else its model), and a note
    for the page where there is none."""
    from evalmem.models import load_tokenizer

    try:
        settings = json.loads((Path(run_dir) / "manifest.json").read_text())["settings"]
        return token_pieces(load_tokenizer(settings.get("tokenizer") or settings["model"])), ""
    except (InputError, OSError, ValueError, KeyError, TypeError) as exc:
        return id_pieces, f"No tokenizer could be loaded ({first_line(exc)}): text is shown as token ids."


def load_tables(run_dirs: Mapping[str, str]) -> dict[str, pa.Table]:
    """Each run's COLUMNS from its results.parquet (checked as every command reads results)."""
    return {name: read_results(Path(path) / "results.parquet", COLUMNS) for name, path in run_dirs.items()}


def load_risk(predict_dir: str | Path | None) -> dict | None:
    """example id -> cross-fitted risk, from the predict directory's risk.parquet."""
    path = Path(predict_dir) / "risk.parquet" if predict_dir else None
    if path is None or not path.exists():
        return None
    table = read_results(path, ["example_id", "risk"])
    return {str(k): v for k, v in zip(table["example_id"].to_pylist(), table["risk"].to_pylist())}


def near_ids(table: pa.Table) -> pa.Array:
    """Example ids the model memorized exactly or nearly: match_len >= half the suffix length."""
    half = pc.greater_equal(pc.multiply(table["match_len"], 2), pc.list_value_length(table["suffix_ids"]))
    return table.filter(pc.fill_null(pc.or_kleene(table["exact_match"], half), False))["example_id"]


def ranked(tables: dict[str, pa.Table]) -> list:
    """The candidates' ids, most memorized first: longest match by any model, then the number of models that
    match exactly, then the total match length (only the small columns are read here)."""
    candidates = pa.concat_arrays([near_ids(t).combine_chunks() for t in tables.values()]).unique()
    score: dict = {}
    for t in tables.values():
        sub = t.filter(pc.is_in(t["example_id"], value_set=candidates))
        for i, n, exact in zip(sub["example_id"].to_pylist(), sub["match_len"].to_pylist(),
                               sub["exact_match"].to_pylist()):
            best, hits, total = score.get(i, (0, 0, 0))
            score[i] = (max(best, n or 0), hits + bool(exact), total + (n or 0))
    return sorted(score, key=lambda i: (-score[i][0], -score[i][1], -score[i][2], str(i)))


def rows_by_id(table: pa.Table, ids: list) -> dict:
    """The rows of `table` whose example_id is in `ids`, keyed by str(example_id)."""
    wanted = pa.array(ids, type=table["example_id"].type)
    return {str(r["example_id"]): r for r in table.filter(pc.is_in(table["example_id"], value_set=wanted)).to_pylist()}


def model_entry(row: dict | None) -> list | None:
    """[match_len, exact, ids generated after the matched ones (None: not decoded)] of one model."""
    if row is None:
        return None  # the model holds no result for this example
    n, gen = int(row["match_len"] or 0), row["generated_ids"]
    # generated[:n] equals suffix[:n] by definition of match_len: only the tail is stored
    return [n, int(bool(row["exact_match"])), None if gen is None else list(gen[n:])]


def risk_value(risk: Mapping | None, key: str):
    value = None if risk is None else risk.get(key)
    return None if value is None or math.isnan(float(value)) else round(float(value), 4)


def build_rows(tables: dict[str, pa.Table], risk: Mapping | None, max_examples: int) -> tuple[list, int]:
    """The embedded rows in rank order (at most max_examples) and the number of candidates left out."""
    order = ranked(tables)
    keep = order[:max_examples]
    found = [rows_by_id(t, keep) for t in tables.values()]
    rows = []
    for key in map(str, keep):
        held = next(f[key] for f in found if key in f)
        rows.append({"id": held["example_id"], "p": list(held["prefix_ids"]), "s": list(held["suffix_ids"]),
                     "m": [model_entry(f.get(key)) for f in found], "r": risk_value(risk, key)})
    return rows, len(order) - len(keep)


def set_label(name: str) -> str:
    prefix, sep, model = name.partition(":")
    return PREFIXES[prefix].format(model) if sep and prefix in PREFIXES else name.replace("_", " ")


def set_entries(sets: Mapping[str, Sequence], rows: list) -> list:
    """Each set (the compare sets first, then per student, then per model): its label, its size and its
    members among the embedded rows."""
    embedded = {str(r["id"]) for r in rows}
    order = {p: k for k, p in enumerate(PREFIXES, 1)}
    names = sorted(sets, key=lambda n: order.get(n.partition(":")[0], 0) if ":" in n else 0)
    return [{"name": n, "label": set_label(n), "n": len(sets[n]), "ids": [i for i in sets[n] if str(i) in embedded]}
            for n in names]


def vocabulary(rows: list, decode: Decode) -> dict:
    """One text piece per token id used by the embedded rows."""
    used = set()
    for r in rows:
        used.update(r["p"], r["s"], *(e[2] for e in r["m"] if e and e[2]))
    ids = sorted(used)
    pieces = list(decode(ids)) if ids else []
    if len(pieces) != len(ids):
        raise InputError(f"the decode function returned {len(pieces)} pieces for {len(ids)} token ids")
    return {str(i): str(p) for i, p in zip(ids, pieces)}


def script_json(value) -> str:
    """JSON that cannot end its <script> element: <, > and & only occur inside strings, as \\u escapes."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def asset(name: str) -> str:
    return resources.files("evalmem").joinpath("assets", name).read_text(encoding="utf-8")


def explorer_section(tables: Mapping[str, pa.Table], decode: Decode, sets: Mapping[str, Sequence] | None = None,
                     risk: Mapping | None = None, max_examples: int = 2000, page_size: int = 100,
                     note: str = "") -> str:
    """The explorer as one `<section id="explore">` (data, CSS and JS inline; no network).

    tables: model name -> its per-example results with COLUMNS; decode: token ids -> one text piece per id;
    sets: set name -> example ids (compare/sets.json); risk: str(example id) -> predicted risk; note: a line
    for the reader (e.g. why the text is shown as token ids)."""
    if not tables:
        raise InputError("the explorer needs the results of at least one model")
    rows, left_out = build_rows(dict(tables), risk, max_examples)
    data = {"models": list(tables), "rows": rows, "left_out": left_out, "page_size": page_size,
            "has_risk": risk is not None, "sets": set_entries(sets or {}, rows), "tok": vocabulary(rows, decode)}
    return (f'<section id="explore" class="evx" aria-label="Example explorer">{MARKUP.format(note=html.escape(note))}'
            f'<script type="application/json" id="evx-data">{script_json(data)}</script>'
            f"<style>{asset('explorer.css')}</style><script>{asset('explorer.js')}</script></section>")


def unavailable(reason: str) -> str:
    """The explorer's place in the page where the runs' results cannot be read."""
    return (f'<section id="explore"><h2>Example explorer</h2><p class="evx-note">The runs\' results could not be '
            f"read ({html.escape(reason)}): no examples to show.</p></section>")


MARKUP = """
<h2>Example explorer</h2>
<p class="evx-help">Examples that any model memorized or nearly memorized (its greedy continuation matches at
least half the suffix), the most memorized first. Key: <span class="evx-k"><span class="evx-m">matched</span>
<span class="evx-x">first mismatch</span> <span class="evx-e">same token later</span>
<span class="evx-nd">not decoded</span></span>; hover a mismatch for the expected token; ↵ is a newline.</p>
<p class="evx-note">{note}</p>
<div class="evx-bar">
<label>Set <select id="evx-set"></select></label>
<label>Sort <select id="evx-sort"></select></label>
<label><input type="checkbox" id="evx-full"> exact in full</label>
<span id="evx-count" role="status" aria-live="polite"></span>
<span class="evx-pager"><button type="button" id="evx-prev">‹ Prev</button>
<span id="evx-page"></span><button type="button" id="evx-next">Next ›</button></span>
</div>
<p id="evx-note" class="evx-note"></p>
<div id="evx-rows"></div>
"""
