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
from evalmem.engines import EngineOptions, EnginePool
from evalmem.errors import InputError
from evalmem.runner import open_engine_job
from evalmem.settings import DataSpec, ExtractSettings, OutputSpec

APPROX_THRESHOLD = 0.1  # "approximate" memorization: normalized edit distance within 10%
NOT_DECODED = {"token_accuracy": pa.float64(), "edit_distance": pa.float64(), "approx_match": pa.bool_(),
               "generated_ids": pa.list_(pa.int32())}  # need generated text: null in screen and verify;
# auto: null where a row was not fully decoded (it cannot match approximately: approx_match is False)


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


def extract(get_engine, windows: Windows, mode: str = "decode") -> tuple[pa.Table, float]:
    """Extraction of every window in `mode`; the result rows and the seconds taken. `get_engine()`
    returns the engine (built on first use: an empty shard needs none; run_shards takes that off)."""
    start = time.perf_counter()
    n, suffix_len = windows.suffix.shape
    if mode == "decode":
        generated = get_engine().generate(windows.prefix.tolist(), suffix_len) if n else []
        generated = np.array(generated, dtype=np.int64).reshape(n, suffix_len)
        columns = {**metrics(generated, windows.suffix), "generated_ids": list(generated.astype(np.int32))}
    else:
        columns = _scored_columns(get_engine, windows, mode)
    seconds = time.perf_counter() - start
    columns = {"example_id": windows.example_ids, **columns,
               "suffix_ids": list(windows.suffix.astype(np.int32)),
               "prefix_ids": list(windows.prefix.astype(np.int32))}
    return pa.table({k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in columns.items()}), seconds


def _scored_columns(get_engine, windows: Windows, mode: str) -> dict:
    """screen / verify / auto columns: exact_match, match_len, near_tie and (screen) suffix_logprobs; the
    columns that need generated text are nulls (auto: only in rows that cannot match approximately)."""
    n, suffix_len = windows.suffix.shape
    kwargs = {"max_distance": APPROX_THRESHOLD * suffix_len} if mode == "auto" else {}
    if n:  # the registry guarantees the engine runs `mode` (evalmem.engines.engine_for)
        scored = getattr(get_engine(), mode)(windows.prefix, windows.suffix, **kwargs)
    else:
        scored = {"match_len": np.zeros(0, np.int64), "near_tie": np.zeros(0, bool),
                  "generated": np.zeros((0, suffix_len), np.int64)}
    logprobs, list_type = scored.get("suffix_logprobs"), pa.list_(pa.float32())
    columns = {"exact_match": scored["match_len"] == suffix_len, "match_len": scored["match_len"].astype(np.int32),
               **{name: pa.nulls(n, type_) for name, type_ in NOT_DECODED.items()},
               "near_tie": scored["near_tie"].astype(bool),
               "suffix_logprobs": pa.nulls(n, list_type) if logprobs is None
               else pa.array(list(logprobs.astype(np.float32)), list_type)}
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


def shard_stats(table: pa.Table) -> dict:
    """Sums from which the run's summary is computed without rereading the rows."""
    return {"n": table.num_rows,
            "exact": int(pa.compute.sum(table["exact_match"]).as_py() or 0),
            "approx": int(pa.compute.sum(table["approx_match"]).as_py() or 0),
            "token_accuracy": float(pa.compute.sum(table["token_accuracy"]).as_py() or 0.0),
            "match_len": int(pa.compute.sum(table["match_len"]).as_py() or 0),
            "near_ties": int(pa.compute.sum(table["near_tie"]).as_py() or 0) if "near_tie" in table.column_names
            else 0,
            "decoded": table.num_rows - table["generated_ids"].null_count}


def extract_run(job: ExtractSettings, data: DataSpec, output: OutputSpec, options: EngineOptions,
                pool: EnginePool) -> dict:
    """`evalmem extract`: extraction over a whole data set into a resumable result directory, in the engine
    that runs `job.mode` (the one asked for, or the mode's default)."""
    run = open_engine_job("extract", options=options, pool=pool, mode=job.mode, job=job, data=data, output=output,
                          settings={"suffix_len": job.suffix_len, "mode": job.mode})

    def work(get_engine, start, stop):
        windows = run.windows(start, stop)
        if job.strict and windows.n_short:
            raise InputError(f"{windows.n_short} examples in rows {start}..{stop - 1} have fewer than "
                             f"{run.seq_len} tokens (--strict)")
        table, seconds = extract(get_engine, windows, job.mode)
        return table, {"n_short": windows.n_short, "seconds": seconds, "stats": shard_stats(table)}

    return run.execute(work, summarize)


def summarize(settings: dict, metas: list[dict]) -> dict:
    """summary.json of an extraction run."""
    totals = {k: sum(m["stats"].get(k, 0) for m in metas) for k in metas[0]["stats"]}
    n, mode, suffix_len = max(totals["n"], 1), settings["mode"], settings["suffix_len"]
    approx = mode in ("decode", "auto")
    text = {"approx_match_count": totals["approx"] if approx else None,
            "approx_match_rate": totals["approx"] / n if approx else None,
            "mean_token_accuracy": totals["token_accuracy"] / n if mode == "decode" else None}
    if mode != "decode":
        text |= {"null_columns": [c for c in NOT_DECODED if not (approx and c == "approx_match")],
                 "n_near_ties": totals["near_ties"]}
    if mode == "auto":
        text["n_fully_decoded"] = totals["decoded"]
    window = settings["prefix_len"] + suffix_len
    return runner.summarize(
        settings, metas, window, window, {"model": settings["model"]}, engine=settings["engine"],
        suffix_len=suffix_len, mode=mode, exact_match_count=totals["exact"], exact_match_rate=totals["exact"] / n,
        mean_match_len=totals["match_len"] / n, **text)
