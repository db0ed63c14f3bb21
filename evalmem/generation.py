"""`evalmem generate`: the teacher continues each training example's prefix (the hard-label corpus).

Rows: `example_id`, `input_ids` (the example's first PREFIX-LEN tokens + MAX-NEW-TOKENS generated ones)
and `text` (those tokens decoded). Examples with fewer than PREFIX-LEN + MAX-NEW-TOKENS tokens are left
out, as in `extract`: they are not full training windows.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from evalmem.data import check_vocabulary, cut_windows, load_source, token_lists
from evalmem.engines import model_config, model_fingerprint
from evalmem.errors import InputError
from evalmem.runner import LazyEngine, check_lengths, engine_options, load_tokenizer, resolve_dtype, run_shards
from evalmem.store import RunDir


def continue_prefixes(get_engine, example_ids: list, prefix: np.ndarray, max_new_tokens: int, tokenizer,
                      sampling: dict) -> tuple[pa.Table, float]:
    """Generate from every prefix; the corpus rows and the engine seconds (`get_engine()` builds the
    engine on first use)."""
    start = time.perf_counter()
    generated = get_engine().generate(prefix.tolist(), max_new_tokens, **sampling) if len(prefix) else []
    seconds = time.perf_counter() - start
    rows = np.concatenate([prefix, np.array(generated, dtype=np.int64).reshape(len(prefix), max_new_tokens)], axis=1)
    table = pa.table({"example_id": pa.array(example_ids),
                      "input_ids": pa.array(list(rows.astype(np.int32))),
                      "text": pa.array(tokenizer.batch_decode(rows.tolist()), pa.string())})
    return table, seconds


def generate_run(*, model, data, split, data_config, text_column, tokenizer, limit, prefix_len, max_new_tokens,
                 shard_size, out, temperature, top_p, seed, engine, dtype, tensor_parallel_size, max_model_len,
                 kv_cache_gb, max_num_seqs, batch_size) -> dict:
    """Generate the corpus over a whole data set into a resumable result directory; return its summary."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise InputError(f"--temperature must be >= 0 and --top-p in (0, 1], got {temperature} and {top_p}")
    config = model_config(model)
    seq_len = check_lengths(config, prefix_len, max_new_tokens, "--max-new-tokens")
    source = load_source(data, split, data_config, text_column, limit)
    tok = load_tokenizer(tokenizer or model)
    check_vocabulary(source, config.get_text_config().vocab_size)
    dtype = resolve_dtype(config, dtype)
    sampling = {"temperature": temperature, "top_p": top_p, "seed": seed}
    settings = {"command": "generate", "model": model, "model_fingerprint": model_fingerprint(model, config),
                "data": data, "data_fingerprint": source.fingerprint, "split": split, "config": data_config,
                "text_column": source.text_column, "tokenizer": tokenizer, "limit": limit, "prefix_len": prefix_len,
                "max_new_tokens": max_new_tokens, "shard_size": shard_size, "engine": engine, "dtype": dtype,
                **sampling}
    run = RunDir(out, settings)
    run.open()
    if run.is_complete():
        return run.read_summary()

    def work(get_engine, start, stop):
        windows = cut_windows(token_lists(source, start, stop, tok), source.ids[start:stop], prefix_len,
                              max_new_tokens)
        table, seconds = continue_prefixes(get_engine, windows.example_ids, windows.prefix, max_new_tokens, tok, sampling)
        return table, {"n_short": windows.n_short, "seconds": seconds}

    lazy = LazyEngine(engine, engine_options(model, dtype, seq_len, tensor_parallel_size, max_model_len,
                                             kv_cache_gb, max_num_seqs, batch_size))
    metas = run_shards(run, len(source), shard_size, lazy, work, "generate")
    n = sum(m["n_rows"] for m in metas)
    if n == 0:
        raise InputError(f"no example of {data} has {seq_len} tokens (prefix + new tokens); nothing to generate")
    seconds = sum(m["seconds"] for m in metas)
    summary = {"model": model, "data": data, "split": split, "n_examples": n,
               "n_skipped_short": sum(m["n_short"] for m in metas), "n_input_rows": len(source),
               "prefix_len": prefix_len, "max_new_tokens": max_new_tokens, "engine": engine, "dtype": dtype,
               **sampling, "seconds": round(seconds, 3), "startup_seconds": round(lazy.startup, 3),
               "new_tokens_per_second": n * max_new_tokens / seconds if seconds else None}
    return run.finalize(len(metas), summary)
