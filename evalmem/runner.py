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
    """Builds the engine (`load()`) on first use, so that bad data is reported before a model is loaded."""

    def __init__(self, load: Callable):
        self.load, self.engine, self.startup = load, None, 0.0

    def __call__(self):
        if self.engine is None:
            start = time.perf_counter()
            self.engine = self.load()
            self.startup = time.perf_counter() - start
        return self.engine


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """`--shard I/N` as (I, N) with 1 <= I <= N; None (no option) means the whole run."""
    if value is None:
        return None
    i, _, n = value.partition("/")
    try:
        part = int(i), int(n)
    except ValueError:
        part = 0, 0
    if not 1 <= part[0] <= part[1]:
        raise InputError(f"--shard must be I/N with 1 <= I <= N (part I of N parts), got {value!r}")
    return part


def part_shards(count: int, part: tuple[int, int] | None) -> list[int]:
    """The shard indices that part (I, N) computes: every N-th, from I - 1."""
    return list(range(count)) if part is None else list(range(part[0] - 1, count, part[1]))


def run_shards(run: RunDir, n_rows: int, shard_size: int, engine: LazyEngine, work: Callable, desc: str,
               part: tuple[int, int] | None = None) -> list[dict | None]:
    """Run `work(engine, start, stop) -> (table, meta)` on every shard of `part` not yet done, writing each
    as it finishes (with the engine start-up it caused); return the metadata of every shard of the run
    (None where another part has not written it)."""
    from tqdm.auto import tqdm

    count = math.ceil(n_rows / shard_size)
    metas = [run.shard_meta(i) for i in range(count)]
    mine = part_shards(count, part)
    todo = [i for i in mine if metas[i] is None]
    span = {i: (i * shard_size, min((i + 1) * shard_size, n_rows)) for i in mine}
    done = sum(hi - lo for i, (lo, hi) in span.items() if metas[i])
    label = f"{desc} {part[0]}/{part[1]}" if part else desc
    with tqdm(total=sum(hi - lo for lo, hi in span.values()), initial=done, desc=label, unit="ex",
              dynamic_ncols=True, disable=None if todo else True) as bar:  # None: only on a terminal
        for i in todo:
            lo, hi = span[i]
            before = engine.startup
            table, meta = work(engine, lo, hi)
            startup = engine.startup - before  # the engine built during this shard: not the shard's work
            meta = {**meta, "seconds": meta["seconds"] - startup, "start": lo, "stop": hi, "n_input_rows": n_rows,
                    "startup_seconds": startup, "part": f"{part[0]}/{part[1]}" if part else None,
                    "engine_info": getattr(engine.engine, "info", {})}  # e.g. the server's URL and version
            run.write_shard(i, table, meta)
            metas[i] = {**meta, "n_rows": table.num_rows}
            bar.update(hi - lo)
    return metas


def missing_parts(missing: list[int], metas: list[dict | None]) -> list[str]:
    """The parts I/N that compute the `missing` shard indices, where the present shards agree on N."""
    counts = {int(m["part"].split("/")[1]) for m in metas if m and m.get("part")}
    if len(counts) != 1:
        return []
    n = counts.pop()
    return [f"{i}/{n}" for i in sorted({j % n + 1 for j in missing})]


def finish(run: RunDir, metas: list[dict | None], summarize: Callable, part: tuple[int, int] | None) -> dict:
    """Write the run's results if every shard is there (rereading those other parts wrote meanwhile);
    otherwise return what is missing."""
    metas = [meta or run.shard_meta(i) for i, meta in enumerate(metas)]
    missing = [i for i, meta in enumerate(metas) if meta is None]
    if not missing:
        return run.finalize(len(metas), summarize(run.settings, metas))
    return {"complete": False, "part": f"{part[0]}/{part[1]}" if part else None, "out": str(run.path),
            "n_shards": len(metas), "missing_shards": missing, "missing_parts": missing_parts(missing, metas),
            "note": "the part that finishes last writes the results; parts computed into other directories "
                    "are combined with `evalmem merge OUT PART_DIR...`"}


def summarize(settings: dict, metas: list[dict], new_tokens: int, head: dict, **fields) -> dict:
    """A run's summary from its settings and shard metadata: `head`, the fields every summary has, then
    `fields`; refuses a run where no example was long enough."""
    n = sum(m["n_rows"] for m in metas)
    if n == 0:
        raise InputError(f"no example of {settings['data']} has {settings['prefix_len'] + new_tokens} tokens; "
                         f"{settings['command']} has nothing to do")
    seconds = sum(m["seconds"] for m in metas)
    return {**head, "data": settings["data"], "split": settings["split"], "n_examples": n,
            "n_skipped_short": sum(m["n_short"] for m in metas), "n_input_rows": metas[0]["n_input_rows"],
            "prefix_len": settings["prefix_len"], "dtype": settings["dtype"],
            **next((m["engine_info"] for m in metas if m.get("engine_info")), {}), **fields,
            "seconds": round(seconds, 3), "startup_seconds": round(sum(m["startup_seconds"] for m in metas), 3),
            "examples_per_second": n / seconds if seconds else None}


@dataclass
class Job:
    """A model-running command over a data set (extract, generate, features), checked and with its run opened."""

    command: str
    source: Source
    tokenizer: object
    run: RunDir
    prefix_len: int
    new_tokens: int
    shard_size: int
    seq_len: int
    dtype: str
    part: tuple[int, int] | None = None
    engine: LazyEngine | None = None

    def windows(self, start: int, stop: int) -> Windows:
        """Prefix and following `new_tokens` of rows [start, stop)."""
        tokens = token_lists(self.source, start, stop, self.tokenizer)
        return cut_windows(tokens, self.source.ids[start:stop], self.prefix_len, self.new_tokens)

    def execute(self, work: Callable, summarize: Callable) -> dict:
        """Run `work` on every shard of this part not yet done, then, if every part's shards are there, write
        the results with `summarize(settings, metas)`; a complete run is not redone."""
        if self.run.is_complete():
            return self.run.read_summary()
        metas = run_shards(self.run, len(self.source), self.shard_size, self.engine, work, self.command, self.part)
        return finish(self.run, metas, summarize, self.part)


def open_job(command: str, *, models: dict[str, str], data, split, data_config, text_column, tokenizer, limit,
             prefix_len, new_tokens: int, new_tokens_option: str, shard_size, out, dtype, settings: dict,
             shard: str | None = None, need_tokenizer=False, results: str = "results.parquet") -> Job:
    """Check `--shard`, the models (`{role: name}`, the first one's tokenizer and dtype are the defaults),
    lengths and data before any model loads, and open the result directory with the job's settings
    (`settings` adds the command's own; the part computed is not one: all parts share them). The caller
    sets `job.engine`."""
    part = parse_shard(shard)
    configs = {role: model_config(name) for role, name in models.items()}
    seq_len = max(check_lengths(c, prefix_len, new_tokens, new_tokens_option) for c in configs.values())
    source = load_source(data, split, data_config, text_column, limit)
    first = next(iter(models))
    tok = load_tokenizer(tokenizer or models[first]) if need_tokenizer or source.token_column is None else None
    check_vocabulary(source, min(c.get_text_config().vocab_size for c in configs.values()))
    dtype = resolve_dtype(configs[first], dtype)
    run = RunDir(out, {"command": command, **models,
                       **{f"{role}_fingerprint": model_fingerprint(models[role], c) for role, c in configs.items()},
                       "data": data, "data_fingerprint": source.fingerprint, "split": split, "config": data_config,
                       "text_column": source.text_column, "tokenizer": tokenizer, "limit": limit,
                       "prefix_len": prefix_len, new_tokens_option[2:].replace("-", "_"): new_tokens,
                       "shard_size": shard_size, "dtype": dtype, **settings}, results)
    run.open()
    return Job(command, source, tok, run, prefix_len, new_tokens, shard_size, seq_len, dtype, part)


def open_engine_job(command: str, *, model, engine, tensor_parallel_size, max_model_len, kv_cache_gb, max_num_seqs,
                    batch_size, settings: dict, base_url=None, api_key=None, concurrency=64, request_timeout=600.0,
                    **job_options) -> Job:
    """`open_job` for a command that runs one model in an engine (extract, generate). The server engine's
    options are not settings: a run resumes against any server that serves the same model."""
    job = open_job(command, models={"model": model}, settings={"engine": engine, **settings}, **job_options)
    options = engine_options(model, job.dtype, job.seq_len, tensor_parallel_size, max_model_len, kv_cache_gb,
                             max_num_seqs, batch_size, base_url=base_url, api_key=api_key, concurrency=concurrency,
                             request_timeout=request_timeout)
    job.engine = LazyEngine(lambda: load_engine(engine, options))
    return job
