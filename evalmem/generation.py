"""`evalmem generate`: the teacher continues each training example's prefix (the hard-label corpus).

Rows: `example_id`, `input_ids` (the example's first PREFIX-LEN tokens + MAX-NEW-TOKENS generated ones)
and `text` (those tokens decoded). Examples with fewer than PREFIX-LEN + MAX-NEW-TOKENS tokens are left
out, as in `extract`: they are not full training windows.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from evalmem import runner
from evalmem.errors import InputError
from evalmem.runner import open_engine_job


def continue_prefixes(get_engine, example_ids: list, prefix: np.ndarray, max_new_tokens: int, tokenizer,
                      sampling: dict) -> tuple[pa.Table, float]:
    """Generate from every prefix; the corpus rows and the seconds taken (`get_engine()` builds the engine on
    first use; run_shards takes that off)."""
    start = time.perf_counter()
    generated = get_engine().generate(prefix.tolist(), max_new_tokens, **sampling) if len(prefix) else []
    seconds = time.perf_counter() - start
    rows = np.concatenate([prefix, np.array(generated, dtype=np.int64).reshape(len(prefix), max_new_tokens)], axis=1)
    table = pa.table({"example_id": pa.array(example_ids),
                      "input_ids": pa.array(list(rows.astype(np.int32))),
                      "text": pa.array(tokenizer.batch_decode(rows.tolist()) if len(rows) else [], pa.string())})
    return table, seconds


def generate_run(*, max_new_tokens, temperature, top_p, seed, **job_options) -> dict:
    """Generate the corpus over a whole data set into a resumable result directory; return its summary."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise InputError(f"--temperature must be >= 0 and --top-p in (0, 1], got {temperature} and {top_p}")
    sampling = {"temperature": temperature, "top_p": top_p, "seed": seed}
    job = open_engine_job("generate", new_tokens=max_new_tokens, new_tokens_option="--max-new-tokens",
                          settings=sampling, need_tokenizer=True, **job_options)

    def work(get_engine, start, stop):
        windows = job.windows(start, stop)
        table, seconds = continue_prefixes(get_engine, windows.example_ids, windows.prefix, max_new_tokens,
                                           job.tokenizer, sampling)
        return table, {"n_short": windows.n_short, "seconds": seconds}

    return job.execute(work, summarize)


def summarize(settings: dict, metas: list[dict]) -> dict:
    """summary.json of a generation run."""
    new_tokens = settings["max_new_tokens"]
    summary = runner.summarize(settings, metas, new_tokens, {"model": settings["model"]}, engine=settings["engine"],
                               max_new_tokens=new_tokens,
                               **{k: settings[k] for k in ("temperature", "top_p", "seed")})
    summary["new_tokens_per_second"] = summary["n_examples"] * new_tokens / summary["seconds"] \
        if summary["seconds"] else None
    return summary
