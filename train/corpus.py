"""The offline default's training data: KJV windows with a realistic duplication structure (seeded).

Real pre-training and fine-tuning corpora repeat text, and memorization grows with the number of copies
(Kandpal et al. 2022, Carlini et al. 2023): most windows occur once, a few passages many times with
Zipf-like counts. The copies are of three kinds, interleaved over the count ranks (the recipe's
prepare.duplication.kinds in that order, cyclically; the same for every seed) so that every count range has each
kind:

    exact    the same window every time (boilerplate, licences, navigation text)
    shifted  the same passage in other surroundings: the window starts up to `shift_max` tokens inside the
             passage, or the passage starts up to `shift_max` tokens into the window after unrelated text
             (quotations, syndicated articles); each copy has its own prefix and suffix
    near     2 or 3 variants of the passage, each a few words different (templates, revisions), the
             original the most frequent; the teacher emits the majority wording for every variant's prefix

The rest of the windows are cut from the text once; the KJV's own parallel passages (Kings/Chronicles,
Numbers 7's twelve offerings, refrains) stay in them as natural near copies. Held-out windows come from
text no training window holds. `suffix_counts` counts by brute force how often each window's suffix occurs
in the training token stream (every row, every offset), the measured duplication; `evalmem dupcount` counts it.
"""

from __future__ import annotations

import numpy as np

KINDS = ("exact", "shifted", "near")


def copy_counts(n_passages: int, max_copies: int, exponent: float) -> np.ndarray:
    """Zipf rank-frequency: the passage of rank r = 1, 2, ... is copied max_copies / r**exponent times (>= 2)."""
    return np.maximum(2, np.round(max_copies * np.arange(1, n_passages + 1) ** -exponent)).astype(int)


def word_tokens(tokenizer, stream: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids that are words (a space, then 3+ letters), their frequencies in `stream`, and the ids
    that start a new word (a space or punctuation)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    words = np.array([i for i, p in enumerate(pieces) if p.startswith("Ġ") and p[1:].isalpha() and len(p) > 3])
    starts = np.array([i for i, p in enumerate(pieces) if p.startswith("Ġ") or not p[:1].isalpha()])
    freq = np.bincount(stream, minlength=len(pieces))[words].astype(float)
    return words, freq / freq.sum(), starts


def substitute(window: np.ndarray, n: int, words, weights, starts, rng) -> np.ndarray:
    """A copy of `window` with `n` whole words (one token each) replaced by other words (drawn by frequency)."""
    out = window.copy()
    spots = np.flatnonzero(np.isin(out[:-1], words) & np.isin(out[1:], starts))  # a word, then a new word
    for i in rng.choice(spots, size=min(n, len(spots)), replace=False):
        out[i] = rng.choice(words, p=weights)
    return out


def build_corpus(stream: np.ndarray, tokenizer, dup, *, seed: int, n_train: int, n_heldout: int,
                 window_len: int) -> tuple[list[dict], list[dict], dict]:
    """Training rows, held-out rows (`id`, `input_ids`) cut from the token `stream`, and a JSON-able record of the
    duplication `dup` (recipe section prepare.duplication: passages, max_copies, exponent, shift_max, max_words)."""
    if not dup.kinds or set(dup.kinds) - set(KINDS):
        raise ValueError(f"prepare.duplication.kinds must list {', '.join(KINDS)} (any order), got {list(dup.kinds)}")
    rng = np.random.default_rng(seed)
    span = window_len + dup.shift_max  # each piece of text: a window plus room for shifted copies
    chunks = stream[:len(stream) // span * span].reshape(-1, span)[rng.permutation(len(stream) // span)]
    counts = copy_counts(dup.passages, dup.max_copies, dup.exponent) if dup.passages else np.zeros(0, int)
    n_unique = n_train - counts.sum()
    if n_unique < 0 or n_heldout + dup.passages + n_unique + counts.sum() > len(chunks):
        raise ValueError(f"{dup.passages} passages with {counts.sum()} copies and {n_heldout} held-out windows do "
                         f"not fit {n_train} training windows in the text")
    heldout, passages, unique, contexts = np.split(
        chunks, np.cumsum([n_heldout, dup.passages, n_unique]))  # contexts: text before a shifted copy
    rows = [(f"u{k}", w[:window_len]) for k, w in enumerate(unique)]
    vocabulary, record, contexts = word_tokens(tokenizer, stream), [], iter(contexts)
    for rank, (text, copies) in enumerate(zip(passages, counts)):
        kind = dup.kinds[rank % len(dup.kinds)]
        windows, entry = copies_of(text, int(copies), kind, contexts, vocabulary, dup, window_len, rng)
        rows += [(f"p{rank}c{j}", w) for j, w in enumerate(windows)]
        record.append({"passage": f"p{rank}", "copies": int(copies), "kind": kind, **entry,
                       "ids": [f"p{rank}c{j}" for j in range(copies)]})
    rows = [{"id": rows[k][0], "input_ids": [int(t) for t in rows[k][1]]} for k in rng.permutation(len(rows))]
    held = [{"id": f"h{k}", "input_ids": [int(t) for t in w[:window_len]]} for k, w in enumerate(heldout)]
    settings = {"seed": seed, "n_train": n_train, "n_heldout": n_heldout, "window_len": window_len,
                **{k: getattr(dup, k) for k in ("passages", "max_copies", "exponent", "shift_max", "max_words")},
                "kinds": list(dup.kinds),
                "n_unique": int(n_unique), "n_copies": int(counts.sum())}
    return rows, held, {"settings": settings, "passages": record}


def copies_of(text: np.ndarray, copies: int, kind: str, contexts, vocabulary, dup, window_len: int, rng
              ) -> tuple[list[np.ndarray], dict]:
    """The windows of one passage's `copies` of `kind`, and their offsets and variants."""
    variants = [text[:window_len]] + [substitute(text[:window_len], int(rng.integers(1, dup.max_words + 1)),
                                                 *vocabulary, rng) for _ in range(int(rng.integers(1, 3)))]
    windows, offsets, chosen = [], [], []
    for j in range(copies):
        offset = int(rng.integers(-dup.shift_max, dup.shift_max + 1)) if kind == "shifted" and j > 0 else 0
        variant = (0 if j % 2 == 0 else 1 + (j // 2) % (len(variants) - 1)) if kind == "near" else 0
        if offset >= 0:  # the original for about half of a near passage's copies, the rest over the variants
            windows.append(variants[variant] if offset == 0 else text[offset:offset + window_len])
        else:
            windows.append(np.concatenate([next(contexts)[offset:], text[:window_len + offset]]))
        offsets.append(offset)
        chosen.append(variant)
    return windows, {"offset": offsets, "variant": chosen}
