"""What the model-running commands share: validating models and lengths, and the sharded run loop."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

from evalmem.data import Source, Windows, check_vocabulary, cut_windows, load_source, token_lists
from evalmem.engines import EngineOptions, context_length, load_engine, model_config, model_fingerprint
from evalmem.errors import InputError, first_line
from evalmem.store import RunDir

SHARD_SIZE = 2048


def check_lengths(config, prefix_len: int, new_tokens: int, name: str = "--suffix-len") -> int:
    """Validate the window lengths against each other and the model's context; return their sum."""
    if prefix_len <= 0:
        raise InputError(f"--prefix-len must be positive, got {prefix_len}")
    if new_tokens <= 0:
        raise InputError(f"{name} must be positive, got {new_tokens}")
    context = context_length(config)
    if context is not None and prefix_len + new_tokens > context:
        raise InputError(f"--prefix-len + {name} = {prefix_len + new_tokens} tokens exceeds the model's "
                         f"context of {context} tokens")
    return prefix_len + new_tokens


def resolve_dtype(config, dtype: str) -> str:
    """`auto` means the dtype the model was saved in (float32 if it does not say)."""
    if dtype != "auto":
        return dtype
    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return str(saved).removeprefix("torch.") if saved else "float32"


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        raise InputError(f"cannot load tokenizer {name}: {first_line(exc)}") from exc


def engine_options(model: str, dtype: str, seq_len: int, tensor_parallel_size: int, max_model_len: int | None,
                   kv_cache_gb: float | None, max_num_seqs: int, batch_size: int, seed: int = 0,
                   **server) -> EngineOptions:
    """`server`: the server engine's base_url, api_key, concurrency and request_timeout."""
    return EngineOptions(model=model, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                         max_model_len=max_model_len or seq_len, kv_cache_gb=kv_cache_gb,
                         max_num_seqs=max_num_seqs, batch_size=batch_size, seed=seed, **server)


class LazyEngine:
    """Builds the engine on first use, so that bad data is reported before a model is loaded."""

    def __init__(self, name: str, options: EngineOptions):
        self.name, self.options, self.engine, self.startup = name, options, None, 0.0

    def __call__(self):
        if self.engine is None:
            start = time.perf_counter()
            self.engine = load_engine(self.name, self.options)
            self.startup = time.perf_counter() - start
        return self.engine


def run_shards(run: RunDir, n_rows: int, shard_size: int, engine: LazyEngine, work: Callable,
               desc: str) -> list[dict]:
    """Run `work(engine, start, stop) -> (table, meta)` on every shard not yet done, writing each as it
    finishes; return every shard's metadata."""
    from tqdm.auto import tqdm

    count = math.ceil(n_rows / shard_size)
    metas = [run.shard_meta(i) for i in range(count)]
    todo = [i for i, meta in enumerate(metas) if meta is None]
    done = sum(meta["stop"] - meta["start"] for meta in metas if meta)
    with tqdm(total=n_rows, initial=done, desc=desc, unit="ex", dynamic_ncols=True,
              disable=None if todo else True) as bar:  # None: only on a terminal
        for i in todo:
            lo, hi = i * shard_size, min((i + 1) * shard_size, n_rows)
            table, meta = work(engine, lo, hi)
            meta = {**meta, "start": lo, "stop": hi}
            run.write_shard(i, table, meta)
            metas[i] = {**meta, "n_rows": table.num_rows}
            bar.update(hi - lo)
    return metas


@dataclass
class Job:
    """A model-running command over a data set (extract, generate), checked and with its run opened."""

    command: str
    source: Source
    tokenizer: object
    run: RunDir
    engine: LazyEngine
    prefix_len: int
    new_tokens: int
    shard_size: int

    def windows(self, start: int, stop: int) -> Windows:
        """Prefix and following `new_tokens` of rows [start, stop)."""
        tokens = token_lists(self.source, start, stop, self.tokenizer)
        return cut_windows(tokens, self.source.ids[start:stop], self.prefix_len, self.new_tokens)

    def run_shards(self, work: Callable) -> list[dict]:
        return run_shards(self.run, len(self.source), self.shard_size, self.engine, work, self.command)

    def summary(self, metas: list[dict], **fields) -> dict:
        """The fields every summary has, then `fields`; refuses a run where no example was long enough."""
        n = sum(m["n_rows"] for m in metas)
        if n == 0:
            raise InputError(f"no example of {self.source.name} has {self.prefix_len + self.new_tokens} tokens; "
                             f"nothing to {self.command}")
        s = self.run.settings
        seconds = sum(m["seconds"] for m in metas)
        return {"model": s["model"], "data": s["data"], "split": s["split"], "n_examples": n,
                "n_skipped_short": sum(m["n_short"] for m in metas), "n_input_rows": len(self.source),
                "prefix_len": self.prefix_len, "engine": s["engine"], "dtype": s["dtype"],
                **getattr(self.engine.engine, "info", {}), **fields,
                "seconds": round(seconds, 3), "startup_seconds": round(self.engine.startup, 3),
                "examples_per_second": n / seconds if seconds else None}


def open_job(command: str, *, model, data, split, data_config, text_column, tokenizer, limit, prefix_len,
             new_tokens: int, new_tokens_option: str, shard_size, out, engine, dtype, tensor_parallel_size,
             max_model_len, kv_cache_gb, max_num_seqs, batch_size, settings: dict, need_tokenizer=False,
             **server) -> Job:
    """Check the model, lengths and data (before any model loads) and open the result directory with
    the job's settings (`settings` adds the command's own). The server engine's options (`server`) are
    not settings: a run resumes against any server that serves the same model."""
    config = model_config(model)
    seq_len = check_lengths(config, prefix_len, new_tokens, new_tokens_option)
    source = load_source(data, split, data_config, text_column, limit)
    tok = load_tokenizer(tokenizer or model) if need_tokenizer or source.token_column is None else None
    check_vocabulary(source, config.get_text_config().vocab_size)
    dtype = resolve_dtype(config, dtype)
    run = RunDir(out, {"command": command, "model": model, "model_fingerprint": model_fingerprint(model, config),
                       "data": data, "data_fingerprint": source.fingerprint, "split": split, "config": data_config,
                       "text_column": source.text_column, "tokenizer": tokenizer, "limit": limit,
                       "prefix_len": prefix_len, new_tokens_option[2:].replace("-", "_"): new_tokens,
                       "shard_size": shard_size, "engine": engine, "dtype": dtype, **settings})
    run.open()
    lazy = LazyEngine(engine, engine_options(model, dtype, seq_len, tensor_parallel_size, max_model_len,
                                             kv_cache_gb, max_num_seqs, batch_size, **server))
    return Job(command, source, tok, run, lazy, prefix_len, new_tokens, shard_size)
