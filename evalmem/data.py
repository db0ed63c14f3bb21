"""Training data: load rows from a local file or the hub, tokenize, cut (prefix, suffix) windows.

`example_id` is the data's `id` column where it has one, else the row index in the input.
A pre-tokenized `input_ids` column is used as-is, so windows equal the trained token windows.
"""

from __future__ import annotations

import codecs
import hashlib
import os
from dataclasses import dataclass

import numpy as np

from evalmem.errors import InputError, first_line
from evalmem.settings import DataSpec

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}


@dataclass
class Source:
    """A loaded data set and how to read tokens and ids from it."""

    rows: object  # a datasets.Dataset
    name: str
    fingerprint: str
    token_column: str | None  # `input_ids` when pre-tokenized
    text_column: str | None
    ids: list

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Windows:
    """Prefix/suffix token windows of one slice of the data; short examples are left out."""

    example_ids: list
    prefix: np.ndarray  # (n, prefix_len) int64
    suffix: np.ndarray  # (n, suffix_len) int64
    n_short: int


def load_source(spec: DataSpec) -> Source:
    """Load the data `spec` names (a .jsonl/.parquet/.txt file or a hub id) and check its columns and ids."""
    data, text_column, limit = spec.path, spec.text_column, spec.limit
    rows = load_rows(data, spec.split, spec.config)
    fingerprint = ("sha256:" + _sha256(data) if os.path.isfile(data)
                   else f"datasets:{data}:{spec.config}:{spec.split}:{rows._fingerprint}")
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    if len(rows) == 0:
        raise InputError(f"{data} has no examples")
    columns = rows.column_names
    if "input_ids" in columns:
        token_column, text_column = "input_ids", None
    elif text_column in columns:
        token_column = None
    else:
        raise InputError(f"{data} has no column {text_column!r} (columns: {', '.join(columns)}); "
                         "pass --text-column")
    check_column_type(data, rows, token_column or text_column)
    ids = rows["id"] if "id" in columns else list(range(len(rows)))
    kinds = {type(i) for i in ids}
    if not (kinds <= {int} or kinds <= {str}):
        raise InputError(f"the 'id' column of {data} mixes {', '.join(sorted(k.__name__ for k in kinds))} values: "
                         "ids must be all integers or all strings")
    if len(set(ids)) != len(ids):
        raise InputError(f"{data} has duplicated values in its 'id' column")
    return Source(rows, data, fingerprint, token_column, text_column, ids)


def check_column_type(data: str, rows, column: str) -> None:
    """Refuse an `input_ids` column that does not hold lists of integers, a text column of non-text, and
    missing values (nulls are bad input, not short examples)."""
    feature = rows.features[column]
    nulls = rows.data.column(column).null_count
    if nulls:
        first = rows.data.column(column).is_null().to_pylist().index(True)
        raise InputError(f"column {column!r} of {data} holds {nulls} null values (first in row {first}): "
                         "every example needs its tokens or text")
    if column == "input_ids":
        dtype = getattr(getattr(feature, "feature", None), "dtype", "")
        if not dtype.startswith(("int", "uint")):
            raise InputError(f"column 'input_ids' of {data} must hold lists of integer token ids, not {feature}")
    elif getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise InputError(f"column {column!r} of {data} holds non-text values ({feature})")


def check_vocabulary(source: Source, vocab_size: int) -> None:
    """Refuse pre-tokenized ids outside the model's vocabulary (checked once, before any model runs)."""
    import pyarrow.compute as pc

    if source.token_column:
        low, high = pc.min_max(pc.list_flatten(source.rows.data.column(source.token_column))).values()
        if low.as_py() is not None and (low.as_py() < 0 or high.as_py() >= vocab_size):
            raise InputError(f"{source.name} has token ids outside the model's vocabulary "
                             f"(0..{vocab_size - 1}): min {low}, max {high}")


def load_rows(data: str, split: str = "train", config: str | None = None):
    """The rows of a local .jsonl/.json/.parquet/.txt file or a hub dataset; a one-line error otherwise."""
    import datasets

    ext = os.path.splitext(data)[1].lower()
    if os.path.isfile(data):
        if ext not in LOCAL_BUILDERS:
            raise InputError(f"unsupported data file {data}: use .jsonl, .json, .parquet or .txt")
        if os.path.getsize(data) == 0:
            raise InputError(f"{data} has no examples (empty file)")
        if ext == ".parquet":
            _check_parquet(data)
        else:
            _check_utf8(data)
        kwargs = {"keep_linebreaks": False} if ext == ".txt" else {}
        datasets.disable_progress_bars()  # a local file converts in seconds; keep the terminal for our bar
        try:
            rows = _call(data, datasets.load_dataset, LOCAL_BUILDERS[ext], data_files=data,
                         split="train", **kwargs)
        finally:
            datasets.enable_progress_bars()
        return rows
    if ext in LOCAL_BUILDERS or data.startswith((".", "/", "~")):
        raise InputError(f"no such data file: {data}")
    return _call(data, datasets.load_dataset, data, config, split=split)


def _call(data, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # datasets raises many types; the user needs one line
        raise InputError(f"cannot load data {data}: {first_line(exc)}") from exc


def _check_parquet(path: str) -> None:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_metadata(path).num_rows
    except Exception as exc:
        raise InputError(f"cannot load data {path}: not a readable Parquet file ({first_line(exc)})") from exc
    if rows == 0:
        raise InputError(f"{path} has no examples (0 rows)")


def _check_utf8(path: str) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise InputError(f"{path} is not valid UTF-8 (byte {offset + exc.start})") from None
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise InputError(f"{path} is not valid UTF-8 (truncated character at its end)") from None


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def token_lists(source: Source, start: int, stop: int, tokenizer=None) -> list[list[int]]:
    """Token ids of rows [start, stop): the `input_ids` column, or the text tokenized without
    special tokens (training windows carry none)."""
    batch = source.rows[start:stop]
    if source.token_column:
        return batch[source.token_column]
    texts = batch[source.text_column]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def cut_windows(tokens: list[list[int]], example_ids: list, prefix_len: int, suffix_len: int) -> Windows:
    """First `prefix_len` tokens of each example and the `suffix_len` that follow."""
    need = prefix_len + suffix_len
    keep = [i for i, t in enumerate(tokens) if len(t) >= need]
    rows = np.array([tokens[i][:need] for i in keep], dtype=np.int64).reshape(len(keep), need)
    return Windows([example_ids[i] for i in keep], rows[:, :prefix_len], rows[:, prefix_len:],
                   len(tokens) - len(keep))
