"""`evalmem generate`: the teacher continues each training example's prefix (the hard-label corpus).

Rows: `example_id`, `input_ids` (the example's first PREFIX-LEN tokens + MAX-NEW-TOKENS generated ones)
and `text` (those tokens decoded). Only the prefix is read: examples shorter than PREFIX-LEN are left out.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from evalmem import runner
from evalmem.engines import EngineOptions, EnginePool
from evalmem.runner import open_engine_job
from evalmem.settings import DataSpec, GenerateSettings, OutputSpec


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


def generate_run(job: GenerateSettings, data: DataSpec, output: OutputSpec, options: EngineOptions,
                 pool: EnginePool) -> dict:
    """Generate the corpus over a whole data set into a resumable result directory; return its summary."""
    sampling = job.sampling()
    run = open_engine_job("generate", options=options, pool=pool, mode="decode", job=job, data=data, output=output,
                          settings={"max_new_tokens": job.max_new_tokens, **sampling,
                                    **({"revision": job.revision} if job.revision else {})},
                          need_tokenizer=True, window_tokens=job.prefix_len)

    def work(get_engine, start, stop):
        windows = run.windows(start, stop)
        table, seconds = continue_prefixes(get_engine, windows.example_ids, windows.prefix, job.max_new_tokens,
                                           run.tokenizer, sampling)
        return table, {"n_short": windows.n_short, "seconds": seconds}

    return run.execute(work, summarize)


def summarize(settings: dict, metas: list[dict]) -> dict:
    """summary.json of a generation run (tokens_per_second: new tokens)."""
    new_tokens = settings["max_new_tokens"]
    n = runner.require_examples(settings, metas, settings["prefix_len"])
    return runner.summarize(settings, metas, n, new_tokens, {"model": settings["model"]}, engine=settings["engine"],
                            max_new_tokens=new_tokens, **{k: settings[k] for k in ("temperature", "top_p", "seed")})
