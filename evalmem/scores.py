"""Every memorization measure of token windows from ONE teacher-forced pass, without the full logits.

For windows (n, W), column j of every per-position array (n, W - 1) is about window token j + 1,
predicted from tokens 0..j. With logits l (the model's, in float32) at that position and the true token y:

    hit          y is the arg-max of l (exact ties: the lowest index wins, as torch.argmax)
    gap          |l_y - max_{v != y} l_v|: the decisive margin of that arg-max (evalmem.screen.decide);
                 a gap under screen.near_tie_tolerance(dtype) marks a near tie
    logp         log p_y, p = softmax(l)
    mu, sigma2   mean and variance of log p under p: mu = sum_v p_v log p_v,
                 sigma2 = sum_v p_v (log p_v)^2 - mu^2 (Min-K%++, Zhang et al. 2024; MIMIR's formula)
    sample_logp  log-probability that sampling at temperature T with top-k K draws y:
                 l_y / T - logsumexp_{v in S} l_v / T over S = {v : l_v >= the K-th largest logit}
                 (K = 0: the whole vocabulary); -inf when y is not in S. Ties at the K-th value are all
                 kept, as transformers' TopKLogitsWarper and vLLM's sampler do

Window-level reducers (numpy, on those arrays): `match_len` at any prefix length k (from prefix k the
greedy suffix is exact for as many tokens as columns k-1, k, ... are leading hits), `loss` (mean NLL),
`min_k` (mean of the lowest max(1, floor(frac * n)) log p), `min_k_pp` (the same over
z = (logp - mu) / sqrt(sigma2); MIMIR reports minus this and takes floor(frac * n) without the max),
`extraction_logprob` (sum of sample_logp over the suffix) and `discoverable`
((n, p)-discoverable: 1 - (1 - exp(z))^n >= p, Hayes et al. 2024, in log space).

How: the model body gives the final hidden states (n, W, d); the lm_head is applied to `rows` positions
times `vocab_chunk` vocabulary entries at a time, and each logits block (float32) updates
running per-position statistics (online logsumexp): the max m, s = sum e^(l-m), A = sum e^(l-m) (l-m),
B = sum e^(l-m) (l-m)^2 (rescaled when m grows), the true logit, the best other logit and its index,
and the top-K logits with the count of ties dropped at the K-th. At the end
logp = l_y - m - log s, mu = A/s - log s, sigma2 = B/s - (A/s)^2. The pass over each block that
computes the max and the three sums is compiled by torch.compile (inductor: one C++ loop over the block
instead of ~8 eager passes); EVALMEM_COMPILE=0, or a failed compilation, runs it eager.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Whole-vocabulary rows of 512 positions per block: fewer, longer ops beat cache-sized blocks (docs/benchmarks.md).
ROWS = 512
VOCAB_CHUNK = 65536
COMPILE = os.environ.get("EVALMEM_COMPILE", "1") != "0"  # inductor for the per-block pass
COMPILE_FROM = 16384  # vocabulary entries per block from which the block pass is compiled
FIELDS = ("hit", "gap", "logp", "mu", "sigma2", "sample_logp")


# ---------------------------------------------------------------- the model side

def head_of(model):
    """(weight (V, d), bias or None, transform of float32 logits) of a causal LM's output layer.
    Knows final-logit softcapping (Gemma 2/3), logit_scale (Cohere) and logits_scaling (Granite); any
    other head is caught by `check_head`."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"unsupported output layer {type(head).__name__}: need an nn.Linear lm_head")
    config = model.config.get_text_config()
    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None) or 1.0
    scale /= getattr(config, "logits_scaling", None) or 1.0

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if scale != 1.0:
            logits = logits.mul_(scale)
        if cap:
            logits = logits.div_(cap).tanh_().mul_(cap)
        return logits

    return head.weight, head.bias, transform


def hidden_states(model, ids: torch.Tensor) -> torch.Tensor:
    """Final hidden states (n, W, d) of the body, the lm_head's input."""
    return model.get_decoder()(input_ids=ids).last_hidden_state


@torch.inference_mode()
def check_head(model, length: int = 8) -> None:
    """Refuse a model whose logits are not lm_head(final hidden state) (up to the transforms head_of knows):
    compares both on a short probe."""
    weight, bias, transform = head_of(model)
    ids = torch.arange(1, length + 1, device=weight.device)[None] % weight.shape[0]
    ours = transform(F.linear(hidden_states(model, ids), weight, bias).float())
    theirs = model(input_ids=ids).logits.float()
    tol = 1e-4 if weight.dtype == torch.float32 else 5e-2
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=tol, atol=tol * theirs.abs().max()):
        raise ValueError(f"{type(model).__name__}: logits are not lm_head(last hidden state); unsupported")


@torch.inference_mode()
def position_scores(model, windows, temperature: float = 1.0, top_k: int = 0, start: int = 0, rows: int = ROWS,
                    vocab_chunk: int = VOCAB_CHUNK, check: bool = True) -> dict[str, torch.Tensor]:
    """The per-position tensors (n, W - 1 - start) of FIELDS for token windows (n, W), one forward pass of the
    body; the head only for columns start.. (start = P - 1: the suffix of windows with a P-token prefix)."""
    if check:
        check_head(model)
    weight, bias, transform = head_of(model)
    ids = torch.as_tensor(windows, device=weight.device)
    hidden = hidden_states(model, ids[:, :-1])[:, start:]  # the last token predicts nothing
    n, length = hidden.shape[:2]
    out = head_stats(hidden.reshape(n * length, -1), weight, ids[:, start + 1:].reshape(-1), bias=bias,
                     transform=transform, temperature=temperature, top_k=top_k, rows=rows, vocab_chunk=vocab_chunk)
    return {k: v.reshape(n, length) for k, v in out.items()}


def warm_up(vocab: int) -> None:
    """Compile the block kernels once, in this thread (before worker threads call them), if they will be."""
    if vocab >= COMPILE_FROM:
        head_stats(torch.randn(4, 8), torch.randn(COMPILE_FROM, 8), torch.arange(4))


# ---------------------------------------------------------------- the fused statistics

@dataclass
class _State:
    """Running statistics of `r` positions over the vocabulary blocks seen so far."""
    m: torch.Tensor  # max logit
    s: torch.Tensor  # sum e^(l - m)
    a: torch.Tensor  # sum e^(l - m) (l - m)
    b: torch.Tensor  # sum e^(l - m) (l - m)^2
    z: torch.Tensor  # sum e^((l - m) / T) (temperature only, no top-k)
    true: torch.Tensor  # l_y
    other: torch.Tensor  # max over v != y
    other_at: torch.Tensor  # the lowest index attaining it
    top: torch.Tensor | None = None  # the K largest logits (sorted, descending)
    dropped: torch.Tensor | None = None  # tokens equal to top[:, -1] not in `top`


@torch.inference_mode()
def head_stats(hidden: torch.Tensor, weight: torch.Tensor, true: torch.Tensor, bias: torch.Tensor | None = None,
               transform=None, temperature: float = 1.0, top_k: int = 0, rows: int = ROWS,
               vocab_chunk: int = VOCAB_CHUNK) -> dict[str, torch.Tensor]:
    """FIELDS (float32; hit bool) of positions with hidden states (N, d) and true tokens (N,) under the
    output layer logits = transform(hidden @ weight.T + bias), in blocks of rows x vocab_chunk logits."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    parts = []
    for i in range(0, len(hidden), rows):
        state = None
        for lo in range(0, weight.shape[0], vocab_chunk):
            hi = min(lo + vocab_chunk, weight.shape[0])
            # in the model's dtype, as its own logits; float32 from here on
            logits = F.linear(hidden[i:i + rows], weight[lo:hi], None if bias is None else bias[lo:hi]).float()
            if transform is not None:
                logits = transform(logits)
            state = _update(state, logits, lo, true[i:i + rows], temperature, top_k)
        parts.append(_finish(state, true[i:i + rows], temperature))
    return {k: torch.cat([p[k] for p in parts]) for k in FIELDS}


def _update(st: _State | None, logits: torch.Tensor, lo: int, true: torch.Tensor, temperature: float,
            top_k: int) -> _State:
    """Fold the logits block (r, c) of vocabulary entries lo.. into the running statistics `st`."""
    fast = _fast if logits.shape[1] >= COMPILE_FROM else lambda fn: fn  # compiling pays off on large vocabularies
    best, best_at, m, s, a, b = fast(_block_sums)(logits, torch.full_like(logits[:, 0], -torch.inf) if st is None
                                                  else st.m)
    z = fast(_block_z)(logits, m, 1 / temperature) if temperature != 1.0 and not top_k else torch.zeros_like(m)
    col = (true - lo).clamp(0, logits.shape[1] - 1)
    inside = (true >= lo) & (true < lo + logits.shape[1])
    true_logit = logits.gather(1, col[:, None]).squeeze(1)
    other, other_at = _best_other(logits, best, best_at, col, inside)
    top, dropped = _top(st, logits, top_k) if top_k else (None, None)
    if st is None:
        return _State(m, s, a, b, z, true_logit.where(inside, -torch.inf), other, other_at + lo, top, dropped)
    delta = st.m - m  # <= 0: rescale the sums kept relative to the old max to the new one
    alpha = delta.exp()
    st.b = alpha * (st.b + delta * (2 * st.a + delta * st.s)) + b
    st.a = alpha * (st.a + delta * st.s) + a
    st.s = alpha * st.s + s
    st.z = st.z * (delta / temperature).exp() + z
    st.m, st.true, st.top, st.dropped = m, true_logit.where(inside, st.true), top, dropped
    better = other > st.other  # strict: an earlier block keeps the lower index on ties
    st.other, st.other_at = other.where(better, st.other), (other_at + lo).where(better, st.other_at)
    return st


def _block_sums(logits: torch.Tensor, m_prev: torch.Tensor):
    """The pass over a logits block (r, c) that dominates: its max and first arg-max, the new running max m,
    and sum e^(l-m), sum e^(l-m) (l-m), sum e^(l-m) (l-m)^2 (compiled: one loop instead of ~8 passes)."""
    best, best_at = logits.max(1)  # the first index on ties
    m = torch.maximum(m_prev, best)
    d = logits - m[:, None]
    e = d.exp()
    ed = e * d
    return best, best_at, m, e.sum(1), ed.sum(1), (ed * d).sum(1)


def _block_z(logits: torch.Tensor, m: torch.Tensor, inv_temperature: float) -> torch.Tensor:
    """sum e^((l - m) / T) over a block."""
    return ((logits - m[:, None]) * inv_temperature).exp().sum(1)


_COMPILED: dict = {}


def _fast(fn):
    """fn compiled by inductor (dynamic shapes: one compilation serves every block shape), or fn itself where
    COMPILE is off (EVALMEM_COMPILE=0) or compiling fails (e.g. no C++ compiler)."""
    if not COMPILE:
        return fn
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=True)

    def run(*args):
        global COMPILE
        try:
            return _COMPILED[fn](*args)
        except Exception as exc:  # compilation happens at the first call
            warnings.warn(f"evalmem.scores: torch.compile failed ({type(exc).__name__}: {exc}); running eager")
            COMPILE = False
            return fn(*args)

    return run


def _best_other(logits, best, best_at, col, inside):
    """Per row of the block: the max logit over the tokens other than the true one, and its first index.
    Only rows whose block arg-max is the true token need a second look (few outside memorized text)."""
    rows = (inside & (best_at == col)).nonzero().squeeze(1)
    if not len(rows):
        return best, best_at
    other, other_at = best.clone(), best_at.clone()
    masked = logits[rows].scatter_(1, col[rows, None], -torch.inf)  # a copy: the block stays intact
    other[rows], other_at[rows] = masked.max(1)
    return other, other_at


def _top(st: _State | None, logits: torch.Tensor, k: int):
    """The K largest logits seen so far (with this block) and how many tokens equal to the K-th of them
    were dropped from the list: tokens beyond the list can tie only with a list's last value."""
    block = logits.topk(min(k, logits.shape[1]), dim=1).values
    dropped = (logits == block[:, -1:]).sum(1) - (block == block[:, -1:]).sum(1)
    if st is None:
        return block, dropped
    both = torch.cat([st.top, block], dim=1)
    top = both.topk(min(k, both.shape[1]), dim=1).values
    kth = top[:, -1:]
    dropped = ((both == kth).sum(1) - (top == kth).sum(1) + st.dropped.where(st.top[:, -1:].squeeze(1) == kth[:, 0], 0)
               + dropped.where(block[:, -1] == kth[:, 0], 0))
    return top, dropped


def _finish(st: _State, true: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    """FIELDS from the final running statistics of a block of positions."""
    log_s = st.s.log()
    mean_d = st.a / st.s  # E_p[l - m]
    logp = st.true - st.m - log_s
    hit = (st.true > st.other) | ((st.true == st.other) & (true < st.other_at))
    if st.top is not None:
        kth = st.top[:, -1]
        z = ((st.top - st.m[:, None]) / temperature).exp().sum(1) + st.dropped * ((kth - st.m) / temperature).exp()
        sample = ((st.true - st.m) / temperature - z.log()).where(st.true >= kth, -torch.inf)
    elif temperature != 1.0:
        sample = (st.true - st.m) / temperature - st.z.log()
    else:
        sample = logp
    return {"hit": hit, "gap": (st.true - st.other).abs(), "logp": logp, "mu": mean_d - log_s,
            "sigma2": (st.b / st.s - mean_d * mean_d).clamp_min(0), "sample_logp": sample}


# ---------------------------------------------------------------- window-level reducers (numpy)

def match_len(hit: np.ndarray, prefix_len, suffix_len: int | None = None) -> np.ndarray:
    """Greedy match length of the suffix after the first `prefix_len` tokens (an int, or a list: one
    column each): the leading hits among columns prefix_len-1 .. prefix_len+suffix_len-2 (n, W - 1);
    suffix_len defaults to the rest of the window. It equals suffix_len iff greedy decoding is exact."""
    ks = np.atleast_1d(prefix_len)
    out = np.empty((hit.shape[0], len(ks)), np.int64)
    for j, k in enumerate(ks):
        if k < 1:
            raise ValueError(f"prefix_len must be >= 1, got {k}")
        span = hit[:, k - 1:hit.shape[1] if suffix_len is None else k - 1 + suffix_len]
        miss = ~span
        out[:, j] = np.where(miss.any(1), miss.argmax(1), span.shape[1])
    return out[:, 0] if np.ndim(prefix_len) == 0 else out


def loss(logp: np.ndarray) -> np.ndarray:
    """Mean negative log-likelihood of each row's positions (select columns first for a part)."""
    return -logp.mean(1)


def min_k(logp: np.ndarray, frac: float = 0.2) -> np.ndarray:
    """Min-K% (Shi et al. 2024): mean of the lowest max(1, floor(frac * n)) values of each row."""
    k = max(1, int(frac * logp.shape[1]))
    return np.sort(logp, axis=1)[:, :k].mean(1)


def min_k_pp(logp: np.ndarray, mu: np.ndarray, sigma2: np.ndarray, frac: float = 0.2) -> np.ndarray:
    """Min-K%++ (Zhang et al. 2024): min_k of z = (logp - mu) / sqrt(sigma2). MIMIR's score is minus this."""
    return min_k((logp - mu) / np.sqrt(sigma2), frac)


def extraction_logprob(sample_logp: np.ndarray, prefix_len: int, suffix_len: int | None = None) -> np.ndarray:
    """Log-probability that sampling emits the suffix after the first `prefix_len` tokens."""
    return sample_logp[:, prefix_len - 1:None if suffix_len is None else prefix_len - 1 + suffix_len].sum(1)


def _log1mexp(z: np.ndarray) -> np.ndarray:
    """log(1 - exp(z)) for z <= 0, accurate at both ends (Maechler 2012)."""
    z = np.asarray(z, np.float64)
    with np.errstate(divide="ignore"):
        return np.where(z > -np.log(2), np.log(-np.expm1(z)), np.log1p(-np.exp(z)))


def discoverable(logprob: np.ndarray, n: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    """(n, p)-discoverable extraction (Hayes et al. 2024): the probability 1 - (1 - exp(logprob))^n that at
    least one of n samples emits the suffix, and whether it is >= p (compared in log space:
    n log(1 - p_z) <= log(1 - p), exact for p_z far below float precision)."""
    log_none = n * _log1mexp(logprob)  # log of the chance that no sample emits it
    return -np.expm1(log_none), log_none <= np.log1p(-p)
