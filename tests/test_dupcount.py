"""Tests of dupcount against a brute-force count; small random data with planted repeats."""

import numpy as np
import pyarrow as pa
import pytest

from evalmem.dupcount import P, _lookup, duplicate_counts, duplicate_counts_flat, flatten_rows, ngram_counts


def brute(rows, prefix_len, suffix_len):
    """The definitions, literally: scan every row at every offset."""
    rows = [list(map(int, r)) for r in rows]
    grams = {}
    for r in rows:
        for n in (suffix_len, prefix_len + suffix_len):
            for i in range(len(r) - n + 1):
                key = tuple(r[i:i + n])
                grams[key] = grams.get(key, 0) + 1
    ex = [i for i, r in enumerate(rows) if len(r) >= prefix_len + suffix_len]
    suf = [grams[tuple(rows[i][prefix_len:prefix_len + suffix_len])] for i in ex]
    win = [grams[tuple(rows[i][:prefix_len + suffix_len])] for i in ex]
    return np.array(ex), np.array(suf), np.array(win)


def check(rows, prefix_len, suffix_len, **kw):
    got = duplicate_counts(rows, prefix_len, suffix_len, **kw)
    ex, suf, win = brute(rows, prefix_len, suffix_len)
    np.testing.assert_array_equal(got["example_rows"], ex)
    np.testing.assert_array_equal(got["suffix_count"], suf)
    np.testing.assert_array_equal(got["window_count"], win)
    for key in ("example_rows", "suffix_count", "window_count"):
        assert got[key].dtype == np.int64
    return got


def test_planted_cases():
    rng = np.random.default_rng(1)
    rand = lambda k: list(rng.integers(100, 1000, k))  # noqa: E731 (ids disjoint from planted ones)
    a = rand(6) + [1, 2, 3, 4] + rand(3)  # example: prefix 6 tokens, suffix [1, 2, 3, 4]
    b = rand(2) + [1, 2, 3, 4] + rand(1) + [1, 2, 3, 4]  # the suffix twice at other offsets
    c = [1, 2, 3]  # too short to be an example; only part of the suffix
    d = rand(5) + [1, 2]  # the suffix split over a row boundary: d ends with 1, 2 ...
    e = [3, 4] + rand(6)  # ... and e starts with 3, 4: must NOT count
    period = [7, 8] * 8  # periodic: suffix [7, 8, 7, 8] occurs at overlapping offsets 0, 2, 4, ...
    f = a[:10]  # the window of `a` repeated exactly (a row of exactly one window)
    g = [1, 2, 3, 4] + rand(6)  # `a`'s suffix is `g`'s prefix part
    rows = [a, b, c, d, e, period, f, g]
    got = check(rows, 6, 4)
    np.testing.assert_array_equal(got["example_rows"], [0, 1, 5, 6, 7])
    assert got["suffix_count"][0] == 5  # a, b twice, f, g
    assert got["window_count"][0] == 2  # a and f
    assert got["suffix_count"][2] == 7  # [7, 8, 7, 8] at offsets 0, 2, ..., 12 of `period`
    assert got["window_count"][2] == 4  # 10 tokens of period 2 at offsets 0, 2, 4, 6


def test_short_rows_count_in_stream():
    # Row 1 is too short to be an example, yet holds the suffix of row 0 (and row 0 its own).
    got = check([[5, 6, 1, 2], [1, 2], [], [1]], 2, 2)
    np.testing.assert_array_equal(got["example_rows"], [0])
    assert got["suffix_count"][0] == 2 and got["window_count"][0] == 1


def test_tokens_past_the_window_count():
    got = check([[1, 2, 9, 9, 9, 1, 2]], 1, 1)  # suffix [2] again past the window
    assert got["suffix_count"][0] == 2


@pytest.mark.parametrize("seed", range(8))
def test_random_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    vocab = int(rng.choice([2, 3, 5, 50]))  # tiny vocabularies force many natural repeats
    prefix_len, suffix_len = int(rng.integers(1, 7)), int(rng.integers(1, 9))
    rows = [list(rng.integers(0, vocab, int(rng.integers(0, 25)))) for _ in range(40)]
    for _ in range(15):  # plant copies of random spans of some rows into others
        src, dst = rng.integers(0, len(rows), 2)
        if len(rows[src]) >= 2:
            i, j = sorted(rng.integers(0, len(rows[src]) + 1, 2))
            k = int(rng.integers(0, len(rows[dst]) + 1))
            rows[dst] = rows[dst][:k] + rows[src][i:j] + rows[dst][k:]
    rows.append(list(rng.integers(0, vocab, prefix_len + suffix_len)))  # at least one example
    check(rows, prefix_len, suffix_len, seed=seed, chunk_tokens=int(rng.choice([1, 7, 64, 1 << 20])))


def test_paper_sized_windows():
    # Prefix 50 + suffix 206 = the 256-token window; rows longer than a window, repeats planted.
    rng = np.random.default_rng(11)
    rows = [list(rng.integers(0, 50_000, int(rng.integers(200, 320)))) for _ in range(60)]
    rows[:5] = [list(rng.integers(0, 50_000, 310)) for _ in range(5)]  # examples 0..4 = rows 0..4
    rows[1][10:266] = rows[0][:256]  # row 0's window inside row 1
    rows[2][:256] = rows[0][:256]  # ... and as row 2's own window
    rows[3][100:306] = rows[4][50:256]  # row 4's suffix inside row 3
    got = check(rows, 50, 206, chunk_tokens=1000)
    assert got["window_count"][0] == 3 and got["suffix_count"][0] == 3


def test_extreme_token_ids():
    rows = [np.array([P - 1, 0, P - 1, 0, P - 1], np.uint64), np.array([0, P - 1], np.uint64)]
    got = check(rows, 1, 1)  # ids near P: the hashes' coefficients stay distinct residues
    np.testing.assert_array_equal(got["suffix_count"], [3, 4])
    np.testing.assert_array_equal(got["window_count"], [2, 3])
    with pytest.raises(ValueError, match="must lie in"):
        duplicate_counts([np.array([P, 1], np.uint64)], 1, 1)


def test_lookup_uses_both_words():
    q_hi, q_lo = np.array([5, 9], np.uint64), np.array([1, 2], np.uint64)
    hi = np.array([5, 5, 9, 9, 7], np.uint64)
    lo = np.array([1, 3, 2, 2, 1], np.uint64)  # (5, 3) shares hi with a query but is another key
    np.testing.assert_array_equal(_lookup(q_hi, q_lo, hi, lo, 2), [1, 2])
    assert _lookup(np.array([5, 5], np.uint64), q_lo, hi, lo, 2) is None  # asks for a redraw


def test_chunking_does_not_change_counts():
    rng = np.random.default_rng(5)
    rows = rng.integers(0, 4, size=(30, 20))
    counts = [duplicate_counts(rows, 5, 7, chunk_tokens=c) for c in (1, 13, 599, 600, 1 << 22)]
    for got in counts[1:]:
        for key in got:
            np.testing.assert_array_equal(got[key], counts[0][key])
    check(list(rows), 5, 7)


def test_input_forms_agree():
    rng = np.random.default_rng(3)
    rows = [list(rng.integers(0, 3, int(rng.integers(0, 30)))) for _ in range(25)] + [[0] * 10]
    want = check(rows, 3, 4)
    tokens, offsets = flatten_rows(rows)
    arrow = pa.array(rows, pa.list_(pa.int32()))
    forms = [
        duplicate_counts_flat(tokens.astype(np.int32), offsets, 3, 4),
        duplicate_counts(arrow, 3, 4),
        duplicate_counts(pa.chunked_array([arrow[:10], arrow[10:]]), 3, 4),
        duplicate_counts(pa.array(rows, pa.large_list(pa.uint16())), 3, 4),
        duplicate_counts([np.array(r, np.uint8) for r in rows], 3, 4),
    ]
    for got in forms:
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_arrow_slice_and_fixed_size():
    rows = [[1, 2, 3, 4], [9, 9, 9, 9], [1, 2, 3, 4], [3, 4, 3, 4]]
    sliced = pa.array(rows, pa.list_(pa.int64()))[1:]  # offsets start past 0
    check_rows = rows[1:]
    got = duplicate_counts(sliced, 2, 2)
    _, suf, win = brute(check_rows, 2, 2)
    np.testing.assert_array_equal(got["suffix_count"], suf)
    np.testing.assert_array_equal(got["window_count"], win)
    fixed = pa.array(rows, pa.list_(pa.int64(), 4))[1:]
    got = duplicate_counts(fixed, 2, 2)
    np.testing.assert_array_equal(got["suffix_count"], suf)
    got = duplicate_counts(np.array(rows[1:]), 2, 2)  # a 2-D array: equal-length rows
    np.testing.assert_array_equal(got["window_count"], win)


def test_ngram_counts_at_any_position():
    tokens, offsets = flatten_rows([[1, 2, 1, 2, 1], [2, 1, 2]])
    got = ngram_counts(tokens, offsets, 2, np.array([0, 1, 5, 6]))  # [1,2], [2,1], [2,1], [1,2]
    np.testing.assert_array_equal(got, [3, 3, 3, 3])
    with pytest.raises(ValueError, match="inside its row"):
        ngram_counts(tokens, offsets, 2, np.array([4]))  # [1] then the row ends


@pytest.mark.parametrize("rows, prefix_len, suffix_len, message", [
    ([], 2, 2, "no rows"),
    (np.zeros((0, 5), np.int64), 2, 2, "no rows"),
    ([[], []], 2, 2, "no examples"),
    ([[1, 2, 3]], 2, 2, "no examples"),
    ([[1.0, 2.0, 3.0, 4.0]], 2, 2, "non-integer"),
    ([[1, 2, 3, 4.5]], 2, 2, "non-integer"),
    ([["a", "b", "c", "d"]], 2, 2, "non-integer"),
    ([[True, False, True, False]], 2, 2, "non-integer"),
    ([[[1, 2], [3]]], 1, 1, "not a flat sequence"),
    ([[[1, 2], [3, 4]]], 1, 1, "not a flat sequence"),
    ([[1, 2, 3, 4]], 0, 2, "prefix_len must be a positive integer"),
    ([[1, 2, 3, 4]], 2, -1, "suffix_len must be a positive integer"),
    ([[1, 2, 3, 4]], 2.0, 2, "prefix_len must be a positive integer"),
    ([[1, 2, 3, 4]], True, 2, "prefix_len must be a positive integer"),
    ([[1, -2, 3, 4]], 2, 2, "must lie in"),
    ("abcd", 2, 2, "sequence of token rows"),
    (pa.array([[1.0, 2.0, 3.0]]), 1, 1, "must be integers"),
    (pa.array([[1, 2, 3], None]), 1, 1, "null"),
    (pa.array([[1, None, 3]]), 1, 1, "null token"),
    (pa.array([1, 2, 3]), 1, 1, "column of token lists"),
])
def test_bad_input(rows, prefix_len, suffix_len, message):
    with pytest.raises(ValueError, match=message) as info:
        duplicate_counts(rows, prefix_len, suffix_len)
    assert "\n" not in str(info.value)


def test_bad_flat_input():
    with pytest.raises(ValueError, match="rise from 0"):
        duplicate_counts_flat(np.arange(6), np.array([0, 4, 3, 6]), 1, 1)
    with pytest.raises(ValueError, match="rise from 0"):
        duplicate_counts_flat(np.arange(6), np.array([0, 7]), 1, 1)
    with pytest.raises(ValueError, match="flat array of integers"):
        duplicate_counts_flat(np.zeros(6), np.array([0, 6]), 1, 1)


def test_dupcount_command_against_brute_force(tmp_path):
    """`evalmem dupcount` on a data file with planted repeats: counts per example_id equal the brute force."""
    import json

    import pyarrow.parquet as pq

    from helpers import invoke_cli, write_jsonl

    rng = np.random.default_rng(5)
    rows = [list(map(int, rng.integers(0, 50, 30))) for _ in range(12)]
    rows[3][10:20] = rows[0][10:20]  # example 0's suffix again, at the same offset
    rows[5] = rows[1][:]  # a whole window twice
    rows.append(rows[2][10:20])  # a short row (no example) holding example 2's suffix
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": f"r{i}", "input_ids": r} for i, r in enumerate(rows)])
    summary = json.loads(invoke_cli("dupcount", "--data", data, "--prefix-len", 10, "--suffix-len", 10,
                                    "--out", tmp_path / "c").stdout)
    table = pq.read_table(tmp_path / "c" / "counts.parquet").to_pydict()
    ex, suf, win = brute(rows, 10, 10)
    assert table["example_id"] == [f"r{i}" for i in ex]
    assert table["suffix_count"] == suf.tolist() and table["window_count"] == win.tolist()
    assert table["suffix_count"][0] >= 2 and table["window_count"][1] == 2 and table["suffix_count"][2] >= 2
    assert summary["n_examples"] == 12 and sum(summary["suffix_count_buckets"].values()) == 12
    result = invoke_cli("dupcount", "--data", write_jsonl(tmp_path / "e.jsonl", [{"input_ids": [1, 2]}]),
                        "--out", tmp_path / "e", code=2)
    assert "no row holds prefix_len + suffix_len = 100 tokens" in result.output
