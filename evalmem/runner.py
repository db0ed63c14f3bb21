"""What the model-running commands share: validating models and lengths, and the sharded run loop."""

from __future__ import annotations

import math
import time
from typing import Callable

from evalmem.engines import EngineOptions, context_length, load_engine
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
                   kv_cache_gb: float | None, max_num_seqs: int, batch_size: int, seed: int = 0) -> EngineOptions:
    return EngineOptions(model=model, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                         max_model_len=max_model_len or seq_len, kv_cache_gb=kv_cache_gb,
                         max_num_seqs=max_num_seqs, batch_size=batch_size, seed=seed)


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
