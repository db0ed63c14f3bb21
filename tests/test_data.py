"""Data: local files and their checks, ids, tokenization, and the (prefix, suffix) windows."""

import pyarrow as pa
import pytest

from evalmem.data import cut_windows, load_source, token_lists
from evalmem.errors import InputError
from evalmem.settings import DataSpec
from evalmem.tiny import token_windows
from helpers import parquet, write_jsonl


def test_ids_come_from_the_id_column_or_the_row_index(tmp_path):
    with_ids = write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "input_ids": [1, 2]}, {"id": "y", "input_ids": [3]}])
    without = parquet(tmp_path / "b.parquet", {"input_ids": [[1, 2], [3]]})
    assert load_source(DataSpec(str(with_ids))).ids == ["x", "y"]
    source = load_source(DataSpec(str(without), limit=1))
    assert source.ids == [0] and source.token_column == "input_ids" and source.fingerprint.startswith("sha256:")


def test_text_is_tokenized_without_special_tokens(tiny, tmp_path):
    text = tiny.tokenizer.decode(tiny.trained[0])
    source = load_source(DataSpec(str(write_jsonl(tmp_path / "t.jsonl", [{"body": text}])), text_column="body"))
    assert token_lists(source, 0, 1, tiny.tokenizer) == [tiny.tokenizer(text, add_special_tokens=False)["input_ids"]]


@pytest.mark.parametrize("column, value", [("text", None), ("input_ids", None)])
def test_null_values_are_bad_input_not_short_examples(tmp_path, column, value):
    rows = [{column: "x" if column == "text" else [1, 2]}, {column: value}, {column: value}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(InputError, match=rf"column '{column}' of .* holds 2 null values \(first in row 1\)"):
        load_source(DataSpec(str(data)))


def test_windows_cut_prefix_and_suffix_and_count_short_examples():
    tokens = [list(range(10)), list(range(3)), list(range(5, 12))]
    windows = cut_windows(tokens, ["a", "b", "c"], prefix_len=4, suffix_len=3)
    assert windows.example_ids == ["a", "c"] and windows.n_short == 1
    assert windows.prefix.tolist() == [[0, 1, 2, 3], [5, 6, 7, 8]] and windows.suffix.tolist() == [[4, 5, 6],
                                                                                                   [9, 10, 11]]
    prefix_only = cut_windows(tokens, ["a", "b", "c"], prefix_len=3, suffix_len=0)
    assert prefix_only.n_short == 0 and prefix_only.suffix.shape == (3, 0)


def test_token_windows_consecutive_or_evenly_spaced(tiny):
    texts = [f"In the beginning God created the heaven and the earth, {i} times." for i in range(40)]
    stream = [t for ids in tiny.tokenizer(texts, add_special_tokens=False)["input_ids"] for t in ids + [0]]
    consecutive = token_windows(texts, tiny.tokenizer, 20)
    assert consecutive == [stream[i:i + 20] for i in range(0, len(stream) - 19, 20)]
    spaced = token_windows(texts, tiny.tokenizer, 20, count=2 * len(consecutive))  # more than fit: they overlap
    stride = (len(stream) - 20) // (len(spaced) - 1)
    assert stride < 20 and spaced == [stream[i * stride:i * stride + 20] for i in range(len(spaced))]


def test_vocabulary_check_reads_the_flat_ids(tmp_path):
    from evalmem.data import check_vocabulary

    source = load_source(DataSpec(str(parquet(tmp_path / "d.parquet", {"input_ids": pa.array([[0, 5], [7]])}))))
    check_vocabulary(source, 8)
    with pytest.raises(InputError, match=r"outside the model's vocabulary \(0..6\): min 0, max 7"):
        check_vocabulary(source, 7)
