"""Extraction metrics from (generated, true suffix) token pairs, and one shard's extraction in one of
the modes below (`evalmem.screen` explains why screen and verify agree with decoding)."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
from rapidfuzz.distance import Levenshtein

from evalmem import runner
from evalmem.data import Windows
from evalmem.profile import MEMBERSHIP, discoverable_count, membership, screen_rows
from evalmem.engines import EngineOptions, EnginePool
from evalmem.errors import InputError
from evalmem.runner import open_engine_job
from evalmem.settings import DataSpec, ExtractSettings, OutputSpec, longest_prefix

APPROX_THRESHOLD = 0.1  # "approximate" memorization: normalized edit distance within 10%
NOT_DECODED = {"token_accuracy": pa.float64(), "edit_distance": pa.float64(), "approx_match": pa.bool_(),
               "generated_ids": pa.list_(pa.int32())}  # need generated text: null in screen and verify;
# auto: null where a row was not fully decoded (it cannot match approximately: approx_match is False)
COLUMN_TYPES = {**NOT_DECODED, "suffix_logprobs": pa.list_(pa.float32()), "extraction_logprob": pa.float64(),
                **{name: pa.float64() for name in MEMBERSHIP}}


def match_lengths(generated: np.ndarray, suffix: np.ndarray) -> np.ndarray:
    """Length of the longest common prefix of each generated row and its true suffix."""
    mismatch = generated != suffix
    return np.where(mismatch.any(axis=1), mismatch.argmax(axis=1), suffix.shape[1])


def edit_distances(generated: np.ndarray, suffix: np.ndarray) -> np.ndarray:
    """Token-level Levenshtein distance divided by the suffix length (0 = identical, 1 = disjoint)."""
    return np.array([Levenshtein.normalized_distance(g.tolist(), s.tolist()) for g, s in zip(generated, suffix)],
                    dtype=np.float64)


def metrics(generated: np.ndarray, suffix: np.ndarray) -> dict[str, np.ndarray]:
    """Per-example exact match, match length, token accuracy, edit distance and approximate match."""
    match_len = match_lengths(generated, suffix)
    distance = edit_distances(generated, suffix)
    return {
        "exact_match": match_len == suffix.shape[1],
        "match_len": match_len.astype(np.int32),
        "token_accuracy": (generated == suffix).mean(axis=1),
        "edit_distance": distance,
        "approx_match": distance <= APPROX_THRESHOLD,
    }


def extract(get_engine, windows: Windows, mode: str = "decode", screen=None) -> tuple[pa.Table, float]:
    """Extraction of every window in `mode`; the result rows and the seconds taken. `get_engine()` returns the
    engine (built on first use: an empty shard needs none; run_shards takes that off); `screen(engine, windows)`
    makes the rows of --mode screen (`evalmem.profile`)."""
    start = time.perf_counter()
    n, suffix_len = windows.suffix.shape
    if mode == "screen":
        columns = screen(get_engine, windows)
        columns |= {name: pa.nulls(len(columns["example_id"]), kind) for name, kind in NOT_DECODED.items()}
    elif mode == "decode":
        generated = get_engine().generate(windows.prefix.tolist(), suffix_len) if n else []
        generated = np.array(generated, dtype=np.int64).reshape(n, suffix_len)
        columns = {**metrics(generated, windows.suffix), "generated_ids": list(generated.astype(np.int32))}
    else:
        columns = _scored_columns(get_engine, windows, mode)
    seconds = time.perf_counter() - start
    if mode != "screen":
        columns = {"example_id": windows.example_ids, "prefix_len": np.full(n, windows.prefix.shape[1], np.int32),
                   **columns, "suffix_ids": list(windows.suffix.astype(np.int32)),
                   "prefix_ids": list(windows.prefix.astype(np.int32))}
    return pa.table({k: v if isinstance(v, pa.Array) else pa.array(v, COLUMN_TYPES.get(k))
                     for k, v in columns.items()}), seconds


def _scored_columns(get_engine, windows: Windows, mode: str) -> dict:
    """verify / auto columns: exact_match, match_len, near_tie; the columns that need generated text are nulls
    (auto: only in rows that cannot match approximately)."""
    n, suffix_len = windows.suffix.shape
    kwargs = {"max_distance": APPROX_THRESHOLD * suffix_len} if mode == "auto" else {}
    if n:  # the registry guarantees the engine runs `mode` (evalmem.engines.engine_for)
        scored = getattr(get_engine(), mode)(windows.prefix, windows.suffix, **kwargs)
    else:
        scored = {"match_len": np.zeros(0, np.int64), "near_tie": np.zeros(0, bool),
                  "generated": np.zeros((0, suffix_len), np.int64)}
    columns = {"exact_match": scored["match_len"] == suffix_len, "match_len": scored["match_len"].astype(np.int32),
               **{name: pa.nulls(n, type_) for name, type_ in NOT_DECODED.items()},
               "near_tie": scored["near_tie"].astype(bool), "suffix_logprobs": pa.nulls(n, pa.list_(pa.float32()))}
    return columns | (_decoded_columns(scored["generated"], windows.suffix) if mode == "auto" else {})


def _decoded_columns(generated: np.ndarray, suffix: np.ndarray) -> dict:
    """auto's text columns: metrics where a row was fully decoded (no -1), else nulls and approx_match False."""
    done = (generated >= 0).all(axis=1)
    values = metrics(generated[done], suffix[done])
    columns = {}
    for name in ("token_accuracy", "edit_distance", "approx_match"):
        full = np.zeros(len(done), values[name].dtype)
        full[done] = values[name]
        columns[name] = pa.array(full, NOT_DECODED[name], mask=None if name == "approx_match" else ~done)
    columns["generated_ids"] = pa.array([list(g) if d else None for g, d in zip(generated.astype(np.int32), done)],
                                        NOT_DECODED["generated_ids"])
    return columns


def shard_stats(table: pa.Table, extraction: tuple[int, float] | None = None) -> dict:
    """Sums per prefix length from which the run's summary is computed without rereading the rows;
    `extraction`: (n, p) of (n, p)-discoverable extraction (screen)."""
    stats = {}
    for k in sorted(set(table["prefix_len"].to_pylist())):
        part = table.filter(pa.compute.equal(table["prefix_len"], k))
        stats[str(k)] = {"n": part.num_rows, "exact": _sum(part, "exact_match"), "approx": _sum(part, "approx_match"),
                         "token_accuracy": float(pa.compute.sum(part["token_accuracy"]).as_py() or 0.0),
                         "match_len": _sum(part, "match_len"), "near_ties": _sum(part, "near_tie"),
                         "decoded": part.num_rows - part["generated_ids"].null_count,
                         "discoverable": discoverable_count(part, *extraction) if extraction else None}
    return stats


def _sum(table: pa.Table, column: str) -> int:
    return int(pa.compute.sum(table[column]).as_py() or 0) if column in table.column_names else 0


def screen_builder(run, job: ExtractSettings, dtype: str):
    """The rows of --mode screen (`evalmem.profile`) for this job: the engine's one pass, membership scores with
    the tokenizer and the reference model (loaded once, on first use)."""
    from evalmem.models import load_causal_lm, prepack
    from evalmem.screen import near_tie_tolerance

    screen = job.screen_settings()
    reference = None
    if screen["reference"]:
        reference = runner.LazyEngine(lambda: prepack(load_causal_lm(screen["reference"], dtype)))

    def build(get_engine, windows: Windows) -> dict:
        full = np.concatenate([windows.prefix, windows.suffix], axis=1)
        if not len(full):
            return screen_rows(empty_stats(full), full, [], job.prefix_lens, job.suffix_len, 1e-3,
                               dict.fromkeys(MEMBERSHIP))
        engine = get_engine()
        stats = engine.screen(full, screen["temperature"], screen["top_k"])
        ref = reference_logp(reference(), full, engine.batch_size) if reference else None
        texts = run.tokenizer.batch_decode(full.tolist(), skip_special_tokens=True)
        tolerance = near_tie_tolerance(next(engine.model.parameters()).dtype)
        return screen_rows(stats, full, windows.example_ids, job.prefix_lens, job.suffix_len, tolerance,
                           membership(stats, texts, screen["min_k"], ref))

    return build


def reference_logp(model, windows: np.ndarray, batch_size: int) -> np.ndarray:
    from evalmem.screen import profile

    return profile(model, windows, batch_size)["logp"]


def empty_stats(windows: np.ndarray) -> dict:
    from evalmem.scores import FIELDS

    return {name: np.zeros((0, windows.shape[1] - 1), bool if name == "hit" else np.float32) for name in FIELDS}


def extract_run(job: ExtractSettings, data: DataSpec, output: OutputSpec, options: EngineOptions,
                pool: EnginePool) -> dict:
    """`evalmem extract`: extraction over a whole data set into a resumable result directory, in the engine
    that runs `job.mode` (the one asked for, or the mode's default)."""
    lens = job.prefix_lens[0] if len(job.prefix_lens) == 1 else list(job.prefix_lens)
    settings = {"prefix_len": lens, "suffix_len": job.suffix_len, "mode": job.mode,
                **({"revision": job.revision} if job.revision else {})}
    models = {"reference": job.reference} if job.reference else {}
    if job.mode == "screen":
        settings |= job.screen_settings()
    run = open_engine_job("extract", options=options, pool=pool, mode=job.mode, job=job, data=data, output=output,
                          settings=settings, need_tokenizer=job.mode == "screen", extra_models=models)
    screen = screen_builder(run, job, run.dtype) if job.mode == "screen" else None
    extraction = (settings["extraction_n"], settings["extraction_p"]) if job.mode == "screen" else None

    def work(get_engine, start, stop):
        windows = run.windows(start, stop)
        if job.strict and windows.n_short:
            raise InputError(f"{windows.n_short} examples in rows {start}..{stop - 1} have fewer than "
                             f"{run.seq_len} tokens (--strict)")
        table, seconds = extract(get_engine, windows, job.mode, screen)
        return table, {"n_short": windows.n_short, "seconds": seconds, "n_examples": len(windows.example_ids),
                       "stats": shard_stats(table, extraction)}

    return run.execute(work, summarize)


def summarize(settings: dict, metas: list[dict]) -> dict:
    """summary.json of an extraction run: the counts of the longest prefix length, and with several (--mode
    screen) each length's in `profile`."""
    longest = longest_prefix(settings["prefix_len"])
    n = runner.require_examples(settings, metas, longest + settings["suffix_len"])
    filled = [m["stats"] for m in metas if m["stats"]]  # a shard of only short examples has no stats
    lens = sorted(filled[0], key=int)
    totals = {k: {f: sum(st[k][f] or 0 for st in filled) for f in filled[0][k]} for k in lens}
    mode, suffix_len = settings["mode"], settings["suffix_len"]
    approx = mode in ("decode", "auto")
    rows = {k: length_summary(t, mode, settings) for k, t in totals.items()}
    text = {}
    if mode != "decode":
        text |= {"null_columns": [c for c in NOT_DECODED if not (approx and c == "approx_match")],
                 "n_near_ties": totals[lens[-1]]["near_ties"]}
    if mode == "auto":
        text["n_fully_decoded"] = totals[lens[-1]]["decoded"]
    if mode == "screen":
        text["profile"] = [{"prefix_len": int(k), **row} for k, row in rows.items()]
        text["extraction"] = {k: settings[k] for k in ("temperature", "top_k", "extraction_n", "extraction_p")}
    return runner.summarize(settings, metas, n, longest + suffix_len, {"model": settings["model"]},
                            engine=settings["engine"], suffix_len=suffix_len, mode=mode, **rows[lens[-1]], **text)


def length_summary(t: dict, mode: str, settings: dict) -> dict:
    """The summary counts of one prefix length's rows."""
    n, approx = max(t["n"], 1), mode in ("decode", "auto")
    out = {"exact_match_count": t["exact"], "exact_match_rate": t["exact"] / n, "mean_match_len": t["match_len"] / n,
           "approx_match_count": t["approx"] if approx else None, "approx_match_rate": t["approx"] / n if approx
           else None, "mean_token_accuracy": t["token_accuracy"] / n if mode == "decode" else None}
    if mode == "screen":
        out["discoverable_rate"] = t["discoverable"] / n
    return out
