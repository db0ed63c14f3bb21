"""`extract --mode screen`: every memorization measure of each example from one teacher-forced pass.

Each example is cut to the longest prefix plus the suffix (the window). From prefix length k the greedy suffix
of L tokens is exact iff window positions k..k+L-1 are all arg-max under teacher forcing, so one pass gives, for
every k of `--prefix-len`, one row with `prefix_len` k and:

    exact_match, match_len, near_tie   as decoding from the first k tokens would give them
    suffix_logprobs                    log p of each of the L true tokens after the first k
    extraction_logprob                 log-probability that sampling (temperature T, top-k K) emits those L
                                       tokens: the sum of log softmax(logits / T) over the top-k, renormalised

and, per example (the same in its rows), the membership scores over the window (every token after the first,
predicted from those before it): `loss` (mean NLL), `zlib_ratio` (loss / zlib length in bytes of the decoded
window, special tokens stripped; Carlini et al. 2021), `min_k` (Min-K%: the mean of the lowest
max(1, floor(k n)) token log-probs), `min_k_pp` (Min-K%++: the same over (log p - mu) / sigma, mu and sigma^2 the
mean and variance of log p under the model's own distribution at each position; MIMIR reports minus it), and
with `--reference` `ref_loss_diff` (loss minus the reference model's loss). Higher min_k, min_k_pp and lower
loss, zlib_ratio, ref_loss_diff are more member-like.
"""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa

from evalmem import scores

MEMBERSHIP = ("loss", "zlib_ratio", "min_k", "min_k_pp", "ref_loss_diff")


def membership(stats: dict, texts: list[str], min_k: float, reference_logp: np.ndarray | None) -> dict:
    """The per-example membership scores from the per-position statistics of the whole window."""
    loss = scores.loss(stats["logp"])
    zlib_len = np.array([len(zlib.compress(t.encode("utf-8"))) for t in texts], dtype=np.float64)
    out = {"loss": loss, "zlib_ratio": loss / np.maximum(zlib_len, 1),
           "min_k": scores.min_k(stats["logp"], min_k),
           "min_k_pp": scores.min_k_pp(stats["logp"], stats["mu"], stats["sigma2"], min_k)}
    out["ref_loss_diff"] = None if reference_logp is None else loss - scores.loss(reference_logp)
    return out


def per_length(stats: dict, windows: np.ndarray, k: int, suffix_len: int, tolerance: float) -> dict:
    """The rows of prefix length k (one per example)."""
    cols = slice(k - 1, k - 1 + suffix_len)
    match_len = scores.match_len(stats["hit"], k, suffix_len)
    decides = np.arange(suffix_len)[None] <= match_len[:, None]
    return {"prefix_len": np.full(len(windows), k, np.int32), "exact_match": match_len == suffix_len,
            "match_len": match_len.astype(np.int32),
            "near_tie": ((stats["gap"][:, cols] < tolerance) & decides).any(1),
            "suffix_logprobs": list(stats["logp"][:, cols].astype(np.float32)),
            "extraction_logprob": scores.extraction_logprob(stats["sample_logp"], k, suffix_len),
            "prefix_ids": list(windows[:, :k].astype(np.int32)),
            "suffix_ids": list(windows[:, k:k + suffix_len].astype(np.int32))}


def screen_rows(stats: dict, windows: np.ndarray, example_ids: list, prefix_lens, suffix_len: int,
                tolerance: float, member: dict) -> dict[str, list | np.ndarray]:
    """Columns of one row per (example, prefix length), examples in order, lengths increasing within each."""
    parts = [per_length(stats, windows, k, suffix_len, tolerance) for k in prefix_lens]
    order = np.arange(len(windows) * len(parts)).reshape(len(parts), -1).T.reshape(-1)  # example-major
    columns = {"example_id": [example_ids[i] for i in np.repeat(np.arange(len(windows)), len(parts))]}
    for name in parts[0]:
        joined = [row for part in parts for row in part[name]]
        columns[name] = [joined[i] for i in order]
    for name, values in member.items():
        columns[name] = pa.nulls(len(order), pa.float64()) if values is None else np.repeat(values, len(parts))
    return columns


def discoverable_count(table: pa.Table, n: int, p: float) -> int:
    """Rows whose suffix n samples would emit at least once with probability >= p."""
    logprob = table["extraction_logprob"].to_numpy(zero_copy_only=False)
    return int(scores.discoverable(logprob, n, p)[1].sum()) if len(logprob) else 0
