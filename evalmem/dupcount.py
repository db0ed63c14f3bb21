"""Duplicate counts: how often each example's suffix and window occur in the training data.

Definitions (a contract other code reads):
- The training data is a list of token rows (documents); the token stream is ALL of them,
  rows too short to be examples and tokens past an example's window included.
- An *example* is a row of at least `prefix_len + suffix_len` tokens: its first `prefix_len`
  tokens are the prefix, the next `suffix_len` the suffix.
- `suffix_count`: occurrences of the example's suffix (`suffix_len` tokens) in the stream, in
  every row at every offset, overlapping occurrences included, never across two rows; the
  example itself counts once, so the minimum is 1. `window_count`: the same for prefix + suffix.

`evalmem dupcount` writes them per example (OUT/counts.parquet); compare and the report break memorization down
by `suffix_count` bucket (1, 2-3, 4-7, 8-15, 16+), and the predictor can take them as features.

Method: for an n-gram length n, every stream position where an n-gram fits inside its row gets
a 128-bit key made of four independent hashes modulo the prime P = 2**32 - 5, computed with
O(tokens * log n) vectorised numpy work, in chunks; memory: the tokens plus 16 bytes per key.
A "tree" hash doubles the block length level by level, h_2m(i) = h_m(i) * K_l + h_m(i + m)
mod P, with a random key K_l per level; n is split into its binary blocks (50 = 32 + 16 + 2)
joined by Horner's rule with one more key C. The examples' keys (the queries) are looked up
among all stream keys, which gives the counts.

Collisions. Read as a polynomial in the random keys over the field Z_P, one hash of an n-gram
gives each token position its own monomial (a set of level keys times a power of C) of degree
at most d = floor(log2 n) + popcount(n) - 1, with the token id (< P) as coefficient. Two
different n-grams thus differ by a nonzero polynomial of degree <= d, which vanishes with
probability <= d / P over the keys (Schwartz-Zippel); four independent hashes: <= (d / P)**4.
For every n <= 256, d <= 14, so <= 1.2e-34 per pair. A count can only be wrong if some query
collides with some stream n-gram: with 1M queries and 256M stream positions the chance that
any count is wrong is <= 1e6 * 2.56e8 * 1.2e-34 = 3e-20. Distinct queries whose first 64 bits
collide are detected and the keys redrawn (a Las Vegas step), so a lookup needs only the first
64 bits to find its one candidate. The bound is over the key draw: it holds for data not chosen
with knowledge of the keys (pass `seed` only for reproducible runs).
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from evalmem.data import load_source, token_lists
from evalmem.errors import InputError
from evalmem.models import load_tokenizer
from evalmem.settings import DataSpec, check_lengths
from evalmem.store import make_dir, versions, write_atomic, write_json

P = 4_294_967_291  # the largest prime below 2**32: a product of two residues fits in uint64
N_HASHES = 4  # four 32-bit hashes make a 128-bit key (two uint64 words)
CHUNK_TOKENS = 1 << 20  # stream positions hashed at once: arrays of 8 MB stay in cache


def duplicate_counts(rows, prefix_len: int, suffix_len: int, *, seed=None,
                     chunk_tokens: int = CHUNK_TOKENS) -> dict[str, np.ndarray]:
    """Duplicate counts of every example in `rows`.

    `rows`: a sequence of token sequences (lists or 1-D arrays), a 2-D integer array (equal-length
    rows), or a pyarrow (Large/FixedSize)ListArray or ChunkedArray of integer lists.
    Returns `example_rows` (indices of the rows that are examples, ascending) and, per example in
    that order, `suffix_count` and `window_count` (int64). Raises ValueError on bad input.
    """
    tokens, offsets = flatten_rows(rows)
    return duplicate_counts_flat(tokens, offsets, prefix_len, suffix_len, seed=seed,
                                 chunk_tokens=chunk_tokens)


def duplicate_counts_flat(tokens, offsets, prefix_len: int, suffix_len: int, *, seed=None,
                          chunk_tokens: int = CHUNK_TOKENS) -> dict[str, np.ndarray]:
    """`duplicate_counts` on a flat token array; row r is tokens[offsets[r]:offsets[r + 1]].

    This is the form that scales: pyarrow's ListArray gives `values`/`offsets` without copying,
    and tokens may be any integer dtype (int32 keeps 256M tokens at 1 GB).
    """
    _check_len("prefix_len", prefix_len)
    _check_len("suffix_len", suffix_len)
    tokens, offsets = _check_stream(tokens, offsets)
    starts, lengths = offsets[:-1], np.diff(offsets)
    example_rows = np.flatnonzero(lengths >= prefix_len + suffix_len)
    if example_rows.size == 0:
        raise ValueError(f"no row holds prefix_len + suffix_len = {prefix_len + suffix_len} tokens "
                         f"(longest row: {int(lengths.max())}): there are no examples")
    first = starts[example_rows]
    rng = np.random.default_rng(seed)
    return {
        "example_rows": example_rows.astype(np.int64),
        "suffix_count": ngram_counts(tokens, offsets, suffix_len, first + prefix_len,
                                     seed=rng, chunk_tokens=chunk_tokens),
        "window_count": ngram_counts(tokens, offsets, prefix_len + suffix_len, first,
                                     seed=rng, chunk_tokens=chunk_tokens),
    }


def ngram_counts(tokens: np.ndarray, offsets: np.ndarray, n: int, queries: np.ndarray, *,
                 seed=None, chunk_tokens: int = CHUNK_TOKENS) -> np.ndarray:
    """Occurrences in the stream of the n-grams starting at stream positions `queries`.

    Row r is tokens[offsets[r]:offsets[r + 1]]; each query must start an n-gram that fits in
    its row. `seed`: None, an int or a numpy Generator. Returns int64 counts (>= 1).
    """
    _check_len("n", n)
    tokens, offsets = _check_stream(tokens, offsets)
    queries = np.asarray(queries, dtype=np.int64)
    rng = np.random.default_rng(seed)
    row_starts, lengths = offsets[:-1], np.diff(offsets)
    # Index of each fitting n-gram among all fitting ones, in stream order: row base + offset in row.
    base = np.concatenate([[0], np.cumsum(np.maximum(lengths - n + 1, 0))])
    row = np.clip(np.searchsorted(offsets, queries, side="right") - 1, 0, lengths.size - 1)
    at = queries - row_starts[row]
    if np.any(at < 0) or np.any(at > lengths[row] - n):
        raise ValueError(f"a query position does not start an {n}-gram inside its row")
    where = base[row] + at
    for _ in range(3):  # redraw keys in the (negligible) event that two queries share 64 bits
        hi, lo = _stream_keys(tokens, offsets, n, _draw_keys(rng, n), chunk_tokens)
        counts = _lookup(hi[where], lo[where], hi, lo, chunk_tokens)
        if counts is not None:
            return counts
    raise RuntimeError("hash keys collided three times in a row: this should never happen")


def flatten_rows(rows) -> tuple[np.ndarray, np.ndarray]:
    """Token rows in any accepted form -> (flat tokens, int64 offsets of len(rows) + 1)."""
    if type(rows).__module__.startswith("pyarrow"):
        return _flatten_arrow(rows)
    if isinstance(rows, np.ndarray) and rows.ndim == 2:
        length = rows.shape[1]
        return rows.reshape(-1), np.arange(rows.shape[0] + 1, dtype=np.int64) * length
    if isinstance(rows, (str, bytes)) or not hasattr(rows, "__len__"):
        raise ValueError(f"training data must be a sequence of token rows, not {type(rows).__name__}")
    arrays = []
    for i, r in enumerate(rows):
        try:
            a = np.asarray(r)
        except ValueError as exc:  # ragged nesting inside one row
            raise ValueError(f"row {i} is not a flat sequence of token ids") from exc
        if a.ndim != 1:
            raise ValueError(f"row {i} is not a flat sequence of token ids (shape {a.shape})")
        if a.size and a.dtype.kind not in "iu":
            raise ValueError(f"row {i} holds non-integer tokens ({a.dtype}): token ids must be integers")
        arrays.append(a.astype(np.int64, copy=False))
    offsets = np.concatenate([[0], np.cumsum([a.size for a in arrays], dtype=np.int64)])
    tokens = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
    return tokens, offsets


def _flatten_arrow(rows) -> tuple[np.ndarray, np.ndarray]:
    """pyarrow list arrays -> (values, offsets) without copying the values where possible."""
    import pyarrow as pa

    if isinstance(rows, pa.ChunkedArray):
        rows = rows.combine_chunks() if rows.num_chunks else pa.array([], rows.type)
    if not (pa.types.is_list(rows.type) or pa.types.is_large_list(rows.type)
            or pa.types.is_fixed_size_list(rows.type)):
        raise ValueError(f"training data must be a column of token lists, not {rows.type}")
    if rows.null_count:
        raise ValueError(f"{rows.null_count} rows of the training data are null")
    if not pa.types.is_integer(rows.type.value_type):
        raise ValueError(f"token ids must be integers, not {rows.type.value_type}")
    if pa.types.is_fixed_size_list(rows.type):
        values = rows.flatten()  # honours slicing
        offsets = np.arange(len(rows) + 1, dtype=np.int64) * rows.type.list_size
    else:
        offsets = rows.offsets.to_numpy().astype(np.int64)
        values = rows.values.slice(offsets[0], offsets[-1] - offsets[0])
        offsets = offsets - offsets[0]
    if values.null_count:
        raise ValueError(f"the training data has {values.null_count} null token ids")
    return values.to_numpy(zero_copy_only=False), offsets


def _check_len(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_stream(tokens, offsets) -> tuple[np.ndarray, np.ndarray]:
    """Validate a flat stream; returns (tokens as an integer array, int64 offsets)."""
    tokens, offsets = np.asarray(tokens), np.asarray(offsets)
    if offsets.ndim != 1 or offsets.size < 2:
        raise ValueError("no rows: the training data is empty")
    if tokens.ndim != 1 or (tokens.size and tokens.dtype.kind not in "iu"):
        raise ValueError(f"token ids must be a flat array of integers, got {tokens.dtype} "
                         f"of shape {tokens.shape}")
    if offsets.dtype.kind not in "iu":
        raise ValueError(f"row offsets must be integers, got {offsets.dtype}")
    offsets = offsets.astype(np.int64)
    if offsets[0] != 0 or offsets[-1] != tokens.size or np.any(np.diff(offsets) < 0):
        raise ValueError(f"row offsets must rise from 0 to the token count ({tokens.size})")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= P):
        raise ValueError(f"token ids must lie in [0, {P}), got {int(tokens.min())}..{int(tokens.max())}")
    return tokens, offsets


def _draw_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    """Independent uniform keys in Z_P: one row per hash, one key per level plus C."""
    return rng.integers(0, P, size=(N_HASHES, n.bit_length() + 1), dtype=np.uint64)


def _tree_hash(tok: np.ndarray, n: int, keys: np.ndarray) -> np.ndarray:
    """One hash (values < P) of every n-gram of uint64 `tok` (len(tok) - n + 1 of them)."""
    blocks = [1 << b for b in range(n.bit_length() - 1, -1, -1) if n >> b & 1]  # 50 -> 32, 16, 2
    levels, h, size = {1: tok}, tok, 1
    while size < blocks[0]:
        nxt = np.multiply(h[:-size], keys[size.bit_length()])  # left block times this level's key
        nxt += h[size:]  # < P * P: no uint64 overflow
        _mod_p(nxt)
        h, size = nxt, size * 2
        if size in blocks:
            levels[size] = h
    m = tok.size - n + 1
    out, at = levels[blocks[0]][:m].copy(), blocks[0]
    for b in blocks[1:]:  # Horner over the blocks with key C
        out *= keys[0]
        out += levels[b][at:at + m]
        _mod_p(out)
        at += b
    return out


def _mod_p(x: np.ndarray) -> None:
    """x %= P in place, as x - (x // P) * P: numpy divides by a scalar ~4x faster than `%`."""
    q = np.floor_divide(x, np.uint64(P))
    q *= np.uint64(P)
    x -= q


def _stream_keys(tokens, offsets, n, keys, chunk_tokens) -> tuple[np.ndarray, np.ndarray]:
    """128-bit keys (hi, lo uint64) of every n-gram that fits in its row, in stream order."""
    lengths = np.diff(offsets)
    total = int(np.maximum(lengths - n + 1, 0).sum())
    hi, lo = np.empty(total, np.uint64), np.empty(total, np.uint64)
    row_last = offsets[1:] - n  # last start in each row whose n-gram fits
    filled, stop = 0, tokens.size - n + 1
    for c0 in range(0, max(stop, 0), chunk_tokens):
        c1 = min(c0 + chunk_tokens, stop)
        tok = tokens[c0:c1 + n - 1].astype(np.uint64)
        h = [_tree_hash(tok, n, k) for k in keys]
        # Keep the positions whose n-gram fits in its row: last start of the row >= position.
        r0, r1 = np.searchsorted(offsets, [c0, c1 - 1], side="right") - 1
        seg = np.diff(np.clip(offsets[r0:r1 + 2], c0, c1))
        fits = np.repeat(row_last[r0:r1 + 1], seg) >= np.arange(c0, c1)
        k = int(fits.sum())
        for word, (a, b) in ((hi, h[:2]), (lo, h[2:])):  # pack two 32-bit hashes, then gather once
            a <<= np.uint64(32)
            a |= b
            word[filled:filled + k] = a[fits]
        filled += k
    assert filled == total
    return hi, lo


def _lookup(q_hi, q_lo, hi, lo, chunk) -> np.ndarray | None:
    """Count each query key (q_hi, q_lo) among the stream keys; None if two distinct queries
    share q_hi (then the caller redraws keys)."""
    order = np.lexsort((q_lo, q_hi))
    s_hi, s_lo = q_hi[order], q_lo[order]
    new = np.concatenate([[True], (s_hi[1:] != s_hi[:-1]) | (s_lo[1:] != s_lo[:-1])])
    u_hi, u_lo = s_hi[new], s_lo[new]
    if np.any(u_hi[1:] == u_hi[:-1]):
        return None
    inverse = np.empty(order.size, np.int64)
    inverse[order] = np.cumsum(new) - 1
    counts = np.zeros(u_hi.size, np.int64)
    # A table indexed by the top bits of hi rejects most stream keys before the binary search.
    shift = np.uint64(64 - min(max(int(u_hi.size).bit_length() + 4, 16), 28))
    table = np.zeros(1 << (64 - int(shift)), bool)
    table[u_hi >> shift] = True
    for c0 in range(0, hi.size, chunk):
        a, b = hi[c0:c0 + chunk], lo[c0:c0 + chunk]
        maybe = np.flatnonzero(table[a >> shift])
        a, b = a[maybe], b[maybe]
        idx = np.minimum(np.searchsorted(u_hi, a), u_hi.size - 1)
        hit = (u_hi[idx] == a) & (u_lo[idx] == b)  # hi identifies the one candidate query
        counts += np.bincount(idx[hit], minlength=u_hi.size)
    return counts[inverse]



BUCKETS = ((1, 1), (2, 3), (4, 7), (8, 15), (16, None))  # copy-count buckets of compare and the report


def bucket_name(low: int, high: int | None) -> str:
    return str(low) if low == high else f"{low}+" if high is None else f"{low}-{high}"


def buckets(counts: np.ndarray) -> np.ndarray:
    """The bucket name of every count."""
    names = np.empty(len(counts), dtype=object)
    for low, high in BUCKETS:
        names[(counts >= low) & (counts <= (high or np.iinfo(np.int64).max))] = bucket_name(low, high)
    return names


def dupcount_run(data: DataSpec, prefix_len: int, suffix_len: int, out: str) -> dict:
    """`evalmem dupcount`: every example's suffix_count and window_count over the data's whole token stream,
    into OUT/counts.parquet (joins results on example_id) with OUT/summary.json and OUT/manifest.json."""
    check_lengths(prefix_len, suffix_len, "--suffix-len")
    source = load_source(data)
    if source.token_column:
        rows = source.rows.data.column(source.token_column)
    elif data.tokenizer is None:
        raise InputError(f"{data.path} holds text: pass --tokenizer (the model's) to count its tokens")
    else:
        rows = token_lists(source, 0, len(source), load_tokenizer(data.tokenizer))
    start = time.perf_counter()
    try:
        counts = duplicate_counts(rows, prefix_len, suffix_len, seed=0)
    except ValueError as exc:
        raise InputError(f"cannot count duplicates in {data.path}: {exc}") from exc
    seconds = time.perf_counter() - start
    table = pa.table({"example_id": [source.ids[i] for i in counts["example_rows"]],
                      "suffix_count": counts["suffix_count"], "window_count": counts["window_count"]})
    out = make_dir(out)
    settings = {"command": "dupcount", "data": data.path, "data_fingerprint": source.fingerprint,
                "split": data.split, "config": data.config, "text_column": source.text_column,
                "tokenizer": data.tokenizer, "limit": data.limit, "prefix_len": prefix_len, "suffix_len": suffix_len}
    write_json(out / "manifest.json", {"settings": settings, "versions": versions()})
    write_atomic(out / "counts.parquet", lambda tmp: pq.write_table(table, tmp, write_page_checksum=True))
    names, sizes = np.unique(buckets(counts["suffix_count"]), return_counts=True)
    by_bucket = dict(zip(names.tolist(), sizes.tolist()))
    summary = {"data": data.path, "n_examples": table.num_rows, "n_input_rows": len(source),
               "prefix_len": prefix_len, "suffix_len": suffix_len,
               "suffix_count_buckets": {bucket_name(*b): by_bucket.get(bucket_name(*b), 0) for b in BUCKETS},
               "max_suffix_count": int(counts["suffix_count"].max()),
               "max_window_count": int(counts["window_count"].max()), "seconds": round(seconds, 3)}
    write_json(out / "summary.json", summary)  # last: its presence means the counts are complete
    return summary
