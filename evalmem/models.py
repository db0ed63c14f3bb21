"""Models and tokenizers as every command reads them: configs, context length, fingerprints, loading.

A model is a local Hugging Face folder or a hub id. Each loader turns a failure into a one-line error.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from evalmem.errors import InputError, first_line

DTYPES = ("auto", "float32", "bfloat16", "float16")


def model_config(model: str):
    """The model's transformers config; a one-line error when the model cannot be found or read."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model)
    except Exception as exc:
        raise InputError(f"cannot load model {model}: {first_line(exc)}") from exc


def context_length(config) -> int | None:
    """The longest sequence the model accepts, from its config."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def vocab_size(config) -> int:
    return config.get_text_config().vocab_size


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
        raise InputError(f"cannot load a tokenizer from {name} ({first_line(exc).rstrip(':')}); "
                         "pass --tokenizer NAME_OR_FOLDER or give pre-tokenized input_ids") from exc


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_causal_lm(name: str, dtype: str = "auto", to_device: str | None = None, train: bool = False):
    """A causal LM in `dtype` ("auto": as saved), on `to_device` (default: the GPU if there is one),
    in eval mode unless `train`; a one-line error if it does not load."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype="auto" if dtype == "auto" else getattr(torch, dtype))
    except Exception as exc:
        raise InputError(f"cannot load model {name}: {first_line(exc)}") from exc
    model = model.to(to_device or device())
    return model.train() if train else model.eval()
