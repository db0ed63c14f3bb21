"""Engines: continuation of token-id prompts behind one small interface.

    engine.generate(prompts, max_new_tokens, temperature=0.0, top_p=1.0, seed=None) -> list[list[int]]

`prompts` is a list of token-id lists; greedy when temperature == 0; never stops early at EOS.
Engines that can also verify (extract --mode verify) have

    engine.verify(prefix (n, P) int array, suffix (n, L) int array) -> {"match_len": (n,), "near_tie": (n,)}

greedy decoding that stops at each example's first mismatch with its suffix (`evalmem.screen`).
Backends: `vllm` (offline `LLM`, the default), `hf` (transformers `generate`, the reference), `server`
(a running vLLM OpenAI-compatible server, `--base-url`) and `ray` (Ray Data with vLLM replicas, for
clusters; the optional extra `ray`).
"""

from __future__ import annotations

import gc
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from evalmem.errors import InputError, first_line

ENGINES = ("vllm", "hf", "server", "ray")


@dataclass(frozen=True)
class EngineOptions:
    """How to load a model; fields a backend does not use are ignored by it."""

    model: str
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    kv_cache_gb: float | None = None
    max_num_seqs: int = 512
    batch_size: int = 256
    seed: int = 0
    base_url: str | None = None  # server only: http://HOST:PORT/v1, the API key, requests in flight, seconds each
    api_key: str | None = None
    concurrency: int = 64
    request_timeout: float = 600.0


class Engine(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], max_new_tokens: int, *, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[list[int]]: ...


def model_config(model: str):
    """The model's transformers config; a one-line error when the model cannot be found or read."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model)
    except Exception as exc:
        raise InputError(f"cannot load model {model}: {first_line(exc)}") from exc


def model_fingerprint(model: str, config=None) -> str:
    """Local folder: a hash of its config and its weight files' names, sizes and times; hub id: its commit."""
    path = Path(model)
    if not path.is_dir():
        return f"hub:{model}@{getattr(config, '_commit_hash', None)}"
    h = hashlib.sha256((path / "config.json").read_bytes() if (path / "config.json").exists() else b"")
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return "sha256:" + h.hexdigest()


def context_length(config) -> int | None:
    """The longest sequence the model accepts, from its config."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


_loaded: dict = {}  # the last engine built, reused while the same model and options are asked for


def load_engine(name: str, options: EngineOptions) -> Engine:
    """Build the engine `name` for `options.model`, or reuse the last one built for the same model
    folder and options (one engine at a time: a new one replaces it); a one-line error if the
    model does not load. A server engine holds no model here: it is built afresh (checking the server
    again) and leaves the cached engine alone."""
    if name == "server":
        return _build(name, options)
    key = (name, options, model_fingerprint(options.model))
    if key not in _loaded:
        _loaded.clear()
        gc.collect()
        _loaded[key] = _build(name, options)
    return _loaded[key]


def _build(name: str, options: EngineOptions) -> Engine:
    if name == "vllm":
        from evalmem.engines.vllm_engine import VLLMEngine as cls
    elif name == "hf":
        from evalmem.engines.hf_engine import HFEngine as cls
    elif name == "server":
        from evalmem.engines.server_engine import ServerEngine as cls
    elif name == "ray":
        from evalmem.engines.ray_engine import RayEngine as cls
    else:
        raise InputError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")
    try:
        return cls(options)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot load model {options.model} with engine {name}: {first_line(exc)}") from exc
