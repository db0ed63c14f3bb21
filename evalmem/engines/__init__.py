"""Engines: continuation of token-id prompts behind one small interface, chosen through one registry.

    engine.generate(prompts, max_new_tokens, temperature=0.0, top_p=1.0, seed=None) -> list[list[int]]
    engine.verify(prefix (n, P), suffix (n, L)) -> {"match_len": (n,), "near_tie": (n,)}      extract --mode verify
    engine.screen(prefix, suffix) / engine.auto(prefix, suffix, max_distance)                  the torch modes

`generate` greedy-decodes when temperature == 0 and never stops early at EOS; `verify` decodes only up to each
example's first mismatch with its suffix (`evalmem.screen` says why the modes agree with decoding). ENGINES lists
every backend with the extract modes it runs: the command line's choices come from it, a mode's default engine
is the first that runs it, and an engine asked for a mode it does not run is refused.
"""

from __future__ import annotations

import gc
import importlib
from dataclasses import dataclass, field, replace
from typing import Protocol

from evalmem.errors import InputError, first_line
from evalmem.models import DTYPES, ModelSpec, model_fingerprints, model_spec
from evalmem.settings import option


@dataclass(frozen=True)
class EngineInfo:
    implementation: str  # module:class
    modes: tuple[str, ...]  # the extract modes it runs (generate needs decode, which every engine runs)
    help: str
    reusable: bool = True  # kept in an EnginePool between jobs (a server engine holds no model here)


ENGINES = {
    "vllm": EngineInfo("evalmem.engines.vllm_engine:VLLMEngine", ("decode", "verify"), "vLLM offline engine (fast)."),
    "hf": EngineInfo("evalmem.engines.hf_engine:HFEngine", ("decode", "screen", "verify", "auto"),
                     "transformers: the reference, and the torch modes screen and auto."),
    "server": EngineInfo("evalmem.engines.server_engine:ServerEngine", ("decode",),
                         "a running vLLM server (--base-url) that serves --model (--model is also read here for "
                         "the config and tokenizer).", reusable=False),
    "ray": EngineInfo("evalmem.engines.ray_engine:RayEngine", ("decode",),
                      "Ray Data with vLLM replicas on the cluster at RAY_ADDRESS (the extra evalmem[ray]; use a "
                      "large --shard-size)."),
}
CPU_BATCH_SIZE = {"screen": 16, "verify": 64, "auto": 64}  # windows per torch pass: small ones stay in cache


@dataclass(frozen=True)
class EngineOptions:
    """How to run a model; fields an engine does not use are ignored by it. `model` and `seed` come from the job."""

    engine: str | None = field(default=None, metadata=option(
        " ".join(f"{name}: {info.help}" for name, info in ENGINES.items())
        + " [default: the first engine that runs --mode: vllm, or hf for screen and auto]", choices=tuple(ENGINES)))
    base_url: str | None = field(default=None, metadata=option(
        "The server engine's OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1 (not a run setting: resume "
        "against any server of the same model)."))
    api_key: str | None = field(default=None, metadata=option(
        "API key of the server (its --api-key), if it asks for one.", envvar="EVALMEM_API_KEY"))
    concurrency: int = field(default=64, metadata=option(
        "Requests in flight to the server (it batches them; one prompt each).", min=1))
    request_timeout: float = field(default=600.0, metadata=option(
        "Seconds one server request may take before it is retried (with backoff).", min=0, min_open=True))
    dtype: str = field(default="auto", metadata=option(
        "Weights/activations dtype; auto = the dtype the model was saved in.", choices=DTYPES))
    tensor_parallel_size: int = field(default=1, metadata=option("GPUs to shard the model over (vllm).", min=1))
    max_model_len: int | None = field(default=None, metadata=option(
        "Longest sequence the engine plans for [default: the job's prefix + new tokens].", min=1))
    kv_cache_gb: float | None = field(default=None, metadata=option(
        "KV cache size in GiB (vllm) [default: GPU: 90% of GPU memory; CPU: sized to the job].", min=0,
        min_open=True))
    max_num_seqs: int = field(default=512, metadata=option("Sequences the vllm engine batches at once.", min=1))
    batch_size: int | None = field(default=None, metadata=option(
        "Prompts per generate call (hf); windows per forward pass (screen, verify and auto in torch) "
        "[default: 256; on CPU screen 16, verify and auto 64, which keep the activations in cache].", min=1))
    model: ModelSpec | None = None
    seed: int = 0


class Engine(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], max_new_tokens: int, *, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[list[int]]: ...


def engine_for(mode: str, engine: str | None) -> str:
    """The engine that runs `mode`: the one asked for (refused if it cannot) or the first that can."""
    able = [name for name, info in ENGINES.items() if mode in info.modes]
    if engine is None:
        return able[0]
    if mode not in ENGINES[engine].modes:
        raise InputError(f"--mode {mode} does not run on --engine {engine}: use --engine {' or '.join(able)}")
    return engine


def for_job(options: EngineOptions, *, model: str | ModelSpec, mode: str, dtype: str, seq_len: int, seed: int = 0,
            what: str = "prefix + new tokens") -> EngineOptions:
    """The options a job runs with: its model, dtype and seed, the engine for its mode, the context and batch
    defaults; the engine limits are checked against the job here, before any engine starts."""
    from evalmem.models import device

    if options.max_model_len is not None and options.max_model_len < seq_len:
        raise InputError(f"--max-model-len {options.max_model_len} is shorter than the job's {what} = {seq_len} "
                         "tokens: raise it or shorten the job")
    batch = options.batch_size or (CPU_BATCH_SIZE.get(mode, 256) if device() == "cpu" else 256)
    engine, spec = engine_for(mode, options.engine), model_spec(model)
    if spec.revision and engine == "server":
        raise InputError("--revision needs an engine that loads the model itself (vllm, hf, ray): a server serves "
                         "the revision it was started with")
    return replace(options, engine=engine, model=spec, dtype=dtype, seed=seed,
                   max_model_len=options.max_model_len or seq_len, batch_size=batch)


def build(options: EngineOptions) -> Engine:
    """A new engine of `options.engine` for `options.model`; a one-line error if the model does not load."""
    module, _, cls = ENGINES[options.engine].implementation.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)(options)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot load model {options.model} with engine {options.engine}: {first_line(exc)}") from exc


class EnginePool:
    """Keeps the engine built last for the next job in the same process that asks for the same model (same
    weights) and options: an in-process caller running many jobs (tests, benchmarks) starts vLLM once. One engine
    at a time; an engine that holds no model here (server) is built for every job."""

    def __init__(self):
        self.key, self.engine = None, None

    def get(self, options: EngineOptions) -> Engine:
        if not ENGINES[options.engine].reusable:
            return build(options)
        key = (options, tuple(model_fingerprints(options.model).items()))
        if key != self.key:
            self.close()
            self.engine, self.key = build(options), key
        return self.engine

    def close(self) -> None:
        self.key, self.engine = None, None
        gc.collect()
