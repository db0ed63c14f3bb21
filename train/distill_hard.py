"""Hard-label distillation: CE training of the student on the teacher's corpus (`evalmem generate`
output: each training window's prefix followed by the teacher's continuation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from evalmem.data import check_column_type, load_rows
from evalmem.errors import InputError
from train.finetune import finetune


def load_corpus(corpus: str | Path):
    """The corpus rows (`example_id`, `input_ids`, ...) from an `evalmem generate` folder or Parquet file."""
    path = Path(corpus)
    if path.is_dir():
        if not (path / "summary.json").exists():
            raise InputError(f"{corpus} is not a finished `evalmem generate` output (no summary.json); "
                             "rerun the generate command to finish it")
        path = path / "results.parquet"
    if not path.is_file():
        raise InputError(f"no such corpus: {corpus}")
    rows = load_rows(str(path))
    missing = {"example_id", "input_ids"} - set(rows.column_names)
    if missing:
        raise InputError(f"corpus {corpus} has no column {sorted(missing)[0]!r}")
    check_column_type(f"corpus {corpus}", rows, "input_ids")
    return rows


def match_corpus(rows, ids: list, windows: np.ndarray, prefix_len: int, vocab_size: int, name: str):
    """The corpus rows of the training windows, in their order, as a Dataset of `input_ids`; an InputError unless
    every training window has exactly one row (the corpus may hold more: e.g. of windows a filter removed), holding
    that window's first `prefix_len` tokens followed by a continuation to the window's length."""
    if not 0 < prefix_len < windows.shape[1]:
        raise InputError(f"hard.prefix_len must be between 1 and the window length - 1, got {prefix_len}")
    position = {example_id: k for k, example_id in enumerate(rows["example_id"])}
    found = [position[i] for i in ids if i in position]
    if len(position) != len(rows) or len(found) != len(ids):
        raise InputError(f"corpus {name} has {len(rows)} rows ({len(rows) - len(position)} duplicated ids) for "
                         f"{len(found)} of the {len(ids)} training windows: generate it from the training data")
    column = rows.data.column("input_ids").take(found).combine_chunks()
    width = windows.shape[1]
    short = np.flatnonzero(pc.list_value_length(column).to_numpy(zero_copy_only=False) != width)
    if len(short):
        raise InputError(f"corpus {name}: the row of example {ids[short[0]]!r} does not have the training "
                         f"window length of {width} tokens (prefix + continuation)")
    tokens = column.flatten().to_numpy(zero_copy_only=False).reshape(len(ids), width)
    wrong = np.flatnonzero((tokens[:, :prefix_len] != windows[:, :prefix_len]).any(axis=1))
    if len(wrong):
        raise InputError(f"corpus {name}: the row of example {ids[wrong[0]]!r} does not start with that training "
                         f"window's first {prefix_len} tokens ({len(wrong)} such rows)")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise InputError(f"corpus {name} holds token ids outside the student's vocabulary (0..{vocab_size - 1})")
    return rows.select(found).select_columns(["input_ids"])


def distill_hard(student: str, rows, ids: list, windows: np.ndarray, out: str | Path, *, prefix_len: int = 50,
                 vocab_size: int, name: str = "corpus", **train) -> Path:
    """Train `student` with CE on the corpus `rows` (`load_corpus`) after checking them against the
    training windows (`ids`, `windows`); `train` holds `training_args`' settings."""
    return finetune(student, match_corpus(rows, ids, windows, prefix_len, vocab_size, name), out, **train)
