"""The training windows every trainer reads: the first `window_len` tokens of each example long enough (the same
windows extraction reads from the same data), checked against the models' context and vocabulary."""

from __future__ import annotations

import numpy as np

from evalmem.data import check_vocabulary, cut_windows, load_source, token_lists
from evalmem.errors import InputError
from evalmem.models import context_length, model_config
from evalmem.recipe import Data
from evalmem.settings import DataSpec

TOKENIZE_CHUNK = 10_000  # rows tokenized at once (long documents: only their first window is kept)


def check_context(model: str, window_len: int) -> None:
    """A window must fit in the model's context."""
    context = context_length(model_config(model))
    if context is not None and window_len > context:
        raise InputError(f"data.window_len = {window_len} tokens exceeds the context of {model} "
                         f"({context} tokens)")


def training_windows(data: Data, tokenizer) -> tuple[list, np.ndarray]:
    """The example ids and first `window_len` tokens of every example that has that many; shorter examples are
    left out."""
    source = load_source(DataSpec(data.path, data.split, data.config, data.text_column, limit=data.limit))
    check_vocabulary(source, len(tokenizer))
    tok = tokenizer if source.token_column is None else None
    ids, rows = [], []
    for start in range(0, len(source), TOKENIZE_CHUNK):
        stop = min(start + TOKENIZE_CHUNK, len(source))
        windows = cut_windows(token_lists(source, start, stop, tok), source.ids[start:stop], data.window_len, 0)
        ids.extend(windows.example_ids)
        rows.append(windows.prefix)
    if not ids:
        raise InputError(f"no example of {data.path} has data.window_len = {data.window_len} tokens")
    return ids, np.concatenate(rows)
