"""Recipes: one YAML file describes a whole experiment (teacher, baselines, soft and hard students).

    out: runs/NAME              # OUT/teacher, OUT/baseline-seedS, OUT/soft, OUT/hard; the corpus in OUT/corpus
    seed: 0
    prepare: {builder, ...}     # offline recipes: build tokenizer, base models and data (train/prepare.py)
    data:    {path, config, split, text_column, limit, window_len,
              heldout, heldout_config, heldout_split, heldout_limit}   # held-out data: utility (perplexity)
    teacher: {model, epochs, lr, scheduler, warmup_steps, weight_decay, batch_size, grad_accum}
    student: {the same keys; used by the baselines and both students}
    soft:    {temperature, teacher}     # teacher: the fine-tuned teacher [default: OUT/teacher]
    hard:    {prefix_len, corpus}       # corpus: `evalmem generate` output [default: OUT/corpus]
    evaluate: {prefix_len, suffix_len, engine, mode, ...}   # what `evalmem pipeline` measures

Every key has a default below; a key the recipe does not know is refused. `{out}` in a string value
stands for the recipe's `out` (so a recipe can place what it builds inside its output folder).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import yaml

from evalmem.data import check_vocabulary, cut_windows, load_source, token_lists
from evalmem.engines import context_length, model_config
from evalmem.errors import InputError, first_line

TRAINING = {"model": None, "epochs": 4.0, "lr": 5e-5, "scheduler": "cosine", "warmup_steps": 0.0,
            "weight_decay": 0.0, "batch_size": 8, "grad_accum": 1}
DEFAULTS = {
    "out": None,
    "seed": 0,
    "prepare": {"builder": None, "train_windows": 512, "heldout_windows": 128, "vocab_size": 2048,
                "pretrain_tokens": 200_000, "pretrain_lr": 3e-3,
                "teacher": {"hidden": 256, "layers": 4, "heads": 4},
                "student": {"hidden": 128, "layers": 2, "heads": 2}},
    "data": {"path": None, "config": None, "split": "train", "text_column": "text", "limit": None,
             "window_len": 256, "heldout": None, "heldout_config": None, "heldout_split": "train",
             "heldout_limit": None},
    "teacher": TRAINING,
    "student": TRAINING,
    "soft": {"temperature": 2.0, "teacher": None},
    "hard": {"prefix_len": 50, "corpus": None},
    "evaluate": {"prefix_len": 50, "suffix_len": 50, "engine": "vllm", "mode": "decode", "dtype": "auto",
                 "tensor_parallel_size": 1,
                 "baseline_seeds": 3, "predict_student": "soft", "trials": 100, "neg_ratio": 3.0,
                 "test_size": 0.3},
}
REQUIRED = ("out", "data.path")
NULLABLE_TYPES = {"limit": int, "heldout_limit": int}  # keys whose default is None and that are not strings
NON_NEGATIVE = {"seed", "warmup_steps", "weight_decay", "pretrain_tokens"}  # every other number must be positive
TOKENIZE_CHUNK = 10_000  # rows tokenized at once (long documents: only their first window is kept)


def load_recipe(path: str | Path, overrides: dict[str, object] | None = None) -> dict:
    """Read a recipe, apply `section.key` overrides, fill in defaults; unknown keys are an InputError."""
    try:
        given = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read recipe {path}: {first_line(exc)}") from exc
    if not isinstance(given, dict):
        raise InputError(f"recipe {path} is not a mapping of settings")
    recipe = _merge(DEFAULTS, given, str(path), "")
    for key, value in (overrides or {}).items():
        *sections, name = key.split(".")
        value = _get(_merge(DEFAULTS, _nest(sections + [name], value), "--set", ""), key)
        target = recipe
        for section in sections:
            target = target[section]
        target[name] = value
    for key in REQUIRED:
        if _get(recipe, key) is None:
            raise InputError(f"recipe {path} does not set {key}")
    return _place(recipe, str(recipe["out"]))


def _place(section: dict, out: str) -> dict:
    """Replace `{out}` in every string value by the recipe's `out`."""
    return {k: _place(v, out) if isinstance(v, dict) else v.replace("{out}", out) if isinstance(v, str) else v
            for k, v in section.items()}


def _merge(defaults: dict, given: dict, source: str, where: str) -> dict:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise InputError(f"{source}: unknown recipe key {where}{unknown[0]} "
                         f"(known: {', '.join(where + k for k in defaults)})")
    merged = copy.deepcopy(defaults)
    for key, value in given.items():
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise InputError(f"{source}: recipe key {where}{key} must be a mapping")
            value = _merge(defaults[key], value, source, f"{where}{key}.")
        elif value is not None:
            value = _coerce(f"{where}{key}", defaults[key], value, source)
        merged[key] = value
    return merged


def _coerce(key: str, default, value, source: str):
    """`value` as the type of the key's default (YAML reads 5e-5 as a string), range-checked."""
    name = key.rsplit(".", 1)[-1]
    kind = type(default) if default is not None else NULLABLE_TYPES.get(name, str)
    try:
        if kind is int and float(value) != int(float(value)):
            raise ValueError
        value = kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        raise InputError(f"{source}: recipe key {key} must be {kind.__name__}, got {value!r}") from None
    if kind in (int, float) and (value < 0 or (value == 0 and name not in NON_NEGATIVE)):
        sign = "non-negative" if name in NON_NEGATIVE else "positive"
        raise InputError(f"{source}: recipe key {key} must be {sign}, got {value}")
    return value


def _nest(keys: list[str], value) -> dict:
    return {keys[0]: _nest(keys[1:], value) if len(keys) > 1 else value}


def _get(recipe: dict, key: str):
    for part in key.split("."):
        recipe = recipe[part]
    return recipe


def check_context(model: str, window_len: int) -> None:
    """A window must fit in the model's context."""
    context = context_length(model_config(model))
    if context is not None and window_len > context:
        raise InputError(f"data.window_len = {window_len} tokens exceeds the context of {model} "
                         f"({context} tokens)")


def training_windows(data: dict, tokenizer) -> tuple[list, np.ndarray]:
    """The example ids and first `window_len` tokens of every example that has that many
    (the windows extraction later reads from the same data); shorter examples are left out."""
    source = load_source(data["path"], data["split"], data["config"], data["text_column"], data["limit"])
    check_vocabulary(source, len(tokenizer))
    tok = tokenizer if source.token_column is None else None
    ids, rows = [], []
    for start in range(0, len(source), TOKENIZE_CHUNK):
        stop = min(start + TOKENIZE_CHUNK, len(source))
        windows = cut_windows(token_lists(source, start, stop, tok), source.ids[start:stop], data["window_len"], 0)
        ids.extend(windows.example_ids)
        rows.append(windows.prefix)
    if not ids:
        raise InputError(f"no example of {data['path']} has data.window_len = {data['window_len']} tokens")
    return ids, np.concatenate(rows)
