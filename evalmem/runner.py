"""What the model-running commands (extract, generate, features) share: the checks before any model loads, the
job, and the sharded run loop that writes each shard as it finishes."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

from evalmem.data import Source, Windows, check_vocabulary, cut_windows, load_source, token_lists
from evalmem.errors import InputError
from evalmem.models import (ModelSpec, context_length, load_tokenizer, model_config, model_fingerprints, model_spec,
                            resolve_dtype, vocab_size)
from evalmem.settings import DataSpec, OutputSpec
from evalmem.store import RunDir


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


def check_context(config, prefix_len: int, new_tokens: int, new_tokens_flag: str) -> int:
    """prefix + new tokens against the model's context; return their sum."""
    context = context_length(config)
    if context is not None and prefix_len + new_tokens > context:
        raise InputError(f"--prefix-len + {new_tokens_flag} = {prefix_len + new_tokens} tokens exceeds the model's "
                         f"context of {context} tokens")
    return prefix_len + new_tokens


@dataclass
class Job:
    """A model-running command over a data set, checked and with its run directory opened."""

    command: str
    source: Source
    tokenizer: object
    run: RunDir
    prefix_len: int
    new_tokens: int
    window_tokens: int  # tokens an example needs (generate: the prefix; the others: prefix + new tokens)
    shard_size: int
    dtype: str
    part: tuple[int, int] | None = None
    engine: LazyEngine | None = None

    @property
    def seq_len(self) -> int:
        return self.prefix_len + self.new_tokens

    def windows(self, start: int, stop: int) -> Windows:
        """The prefix and the tokens after it (up to `window_tokens`) of rows [start, stop)."""
        tokens = token_lists(self.source, start, stop, self.tokenizer)
        return cut_windows(tokens, self.source.ids[start:stop], self.prefix_len, self.window_tokens - self.prefix_len)

    def execute(self, work: Callable, summarize: Callable) -> dict:
        """Run `work(engine, start, stop) -> (table, meta)` on every shard of this part not yet done, then, if
        every part's shards are there, write the results with `summarize(settings, metas)`; a complete run whose
        shards are intact is not redone."""
        if self.run.is_complete():
            return self.run.read_summary()
        metas = run_shards(self, work)
        return finish(self.run, metas, summarize, self.part)


def open_job(command: str, *, models: dict[str, str | ModelSpec], data: DataSpec, output: OutputSpec, job,
             settings: dict, dtype: str = "auto", need_tokenizer: bool = False, results: str = "results.parquet",
             window_tokens: int | None = None) -> Job:
    """Check the models (`{role: name or spec}`; the first one's tokenizer and dtype are the defaults; an adapter's
    base and fingerprint are settings too), the job's lengths
    (`job.prefix_len`, `job.new_tokens`) and the data before any model loads, and open the result directory with
    the run's settings (`settings`: the command's own; the part computed is not one: all parts share them)."""
    specs = {role: model_spec(name) for role, name in models.items()}
    configs = {role: model_config(spec) for role, spec in specs.items()}
    for config in configs.values():
        check_context(config, job.prefix_len, job.new_tokens, job.new_tokens_flag)
    source = load_source(data)
    first = next(iter(models))
    tok = load_tokenizer(data.tokenizer or specs[first]) if need_tokenizer or source.token_column is None else None
    check_vocabulary(source, min(vocab_size(c) for c in configs.values()))
    dtype = resolve_dtype(configs[first], dtype)
    fingerprints = {f"{role}_{key}": value for role, spec in specs.items()
                    for key, value in model_fingerprints(spec).items()}
    run = RunDir(output.out, {"command": command, **{role: spec.name for role, spec in specs.items()},
                              **fingerprints,
                              "data": data.path, "data_fingerprint": source.fingerprint, "split": data.split,
                              "config": data.config, "text_column": source.text_column, "tokenizer": data.tokenizer,
                              "limit": data.limit, "prefix_len": job.prefix_len, "shard_size": output.shard_size,
                              "dtype": dtype, **settings}, results)
    run.open()
    return Job(command, source, tok, run, job.prefix_len, job.new_tokens,
               window_tokens or job.prefix_len + job.new_tokens, output.shard_size, dtype, output.part)


def part_shards(count: int, part: tuple[int, int] | None) -> list[int]:
    """The shard indices that part (I, N) computes: every N-th, from I - 1."""
    return list(range(count)) if part is None else list(range(part[0] - 1, count, part[1]))


def run_shards(job: Job, work: Callable) -> list[dict | None]:
    """Run `work` on every shard of the job's part not yet done, writing each as it finishes (with the engine
    start-up it caused taken off its seconds); return the metadata of every shard of the run (None where another
    part has not written it)."""
    from tqdm.auto import tqdm

    n_rows, size, part, run = len(job.source), job.shard_size, job.part, job.run
    count = math.ceil(n_rows / size)
    mine = part_shards(count, part)
    if not mine:
        raise InputError(f"part {part[0]}/{part[1]} has no shard to compute: the run has {count} shards of "
                         f"--shard-size {size}; use fewer parts or a smaller --shard-size")
    metas = [run.shard_meta(i) for i in range(count)]
    todo = [i for i in mine if metas[i] is None]
    span = {i: (i * size, min((i + 1) * size, n_rows)) for i in mine}
    label = f"{job.command} {part[0]}/{part[1]}" if part else job.command
    with tqdm(total=sum(hi - lo for lo, hi in span.values()), desc=label, unit="ex", dynamic_ncols=True,
              initial=sum(hi - lo for i, (lo, hi) in span.items() if metas[i]),
              disable=None if todo else True) as bar:  # None: only on a terminal
        for i in todo:
            lo, hi = span[i]
            before = job.engine.startup
            table, meta = work(job.engine, lo, hi)
            startup = job.engine.startup - before  # the engine built during this shard: not the shard's work
            meta = {**meta, "seconds": meta["seconds"] - startup, "start": lo, "stop": hi, "n_input_rows": n_rows,
                    "startup_seconds": startup, "part": f"{part[0]}/{part[1]}" if part else None,
                    "engine_info": getattr(job.engine.engine, "info", {})}  # e.g. the server's URL and version
            run.write_shard(i, table, meta)
            metas[i] = {**meta, "n_rows": table.num_rows}
            bar.update(hi - lo)
    return metas


def missing_parts(missing: list[int], metas: list[dict | None], part: tuple[int, int] | None = None) -> list[str]:
    """The parts I/N that compute the `missing` shard indices, where N is known (this part's, or the one the
    present shards agree on)."""
    counts = {part[1]} if part else {int(m["part"].split("/")[1]) for m in metas if m and m.get("part")}
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
            "n_shards": len(metas), "missing_shards": missing, "missing_parts": missing_parts(missing, metas, part),
            "note": "the part that finishes last writes the results; parts computed into other directories "
                    "are combined with `evalmem merge OUT PART_DIR...`"}


def require_examples(settings: dict, metas: list[dict], window_tokens: int) -> int:
    """The number of examples the shards hold; refuses a run where none had `window_tokens` tokens."""
    n = sum(m.get("n_examples", m["n_rows"]) for m in metas)  # extract --mode screen: rows per prefix length
    if n == 0:
        raise InputError(f"no example of {settings['data']} has {window_tokens} tokens; "
                         f"{settings['command']} has nothing to do")
    return n


def summarize(settings: dict, metas: list[dict], n: int, tokens_per_example: int, head: dict, **fields) -> dict:
    """A run's summary of its `n` examples (`require_examples`) from its settings and shard metadata: `head`, the
    fields every summary has, then `fields`, and throughput."""
    seconds = sum(m["seconds"] for m in metas)
    return {**head, "data": settings["data"], "split": settings["split"], "n_examples": n,
            "n_skipped_short": sum(m["n_short"] for m in metas), "n_input_rows": metas[0]["n_input_rows"],
            "prefix_len": settings["prefix_len"], "dtype": settings["dtype"],
            **next((m["engine_info"] for m in metas if m.get("engine_info")), {}), **fields,
            "seconds": round(seconds, 3), "startup_seconds": round(sum(m["startup_seconds"] for m in metas), 3),
            "examples_per_second": n / seconds if seconds else None,
            "tokens_per_second": n * tokens_per_example / seconds if seconds else None}


def open_engine_job(command: str, *, options, pool, mode: str, settings: dict, job, seed: int = 0,
                    extra_models: dict[str, str] | None = None, **job_options) -> Job:
    """`open_job` for a command that runs `job.model` (with `job.adapter`) in an engine (extract, generate): the
    engine for `mode` (recorded in the settings), its options checked against the job, built from `pool` on first
    use. The server engine's options are not settings: a run resumes against any server that serves the same
    model."""
    from evalmem.engines import engine_for, for_job

    settings = {"engine": engine_for(mode, options.engine), **settings}
    spec = model_spec(job.model, job.adapter, job.revision)
    opened = open_job(command, models={"model": spec, **(extra_models or {})}, job=job, dtype=options.dtype,
                      settings=settings, **job_options)
    what = f"--prefix-len + {job.new_tokens_flag}"
    resolved = for_job(options, model=spec, mode=mode, dtype=opened.dtype, seq_len=opened.seq_len, seed=seed,
                       what=what)
    opened.engine = LazyEngine(lambda: pool.get(resolved))
    return opened
