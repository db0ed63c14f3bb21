"""Exact match and match length without full decoding, on a transformers model (torch).

Greedy decoding reproduces the suffix exactly iff, under teacher forcing on prefix+suffix, every suffix
token is the arg-max; the first position where it is not is `match_len`. Two ways to use that:

    screen   one batched forward pass over prefix + suffix[:-1]: match_len, exact match and the
             log-probability of every true suffix token (perplexity, Min-K% come free)
    verify   prefill the prefixes, then decode greedily with a KV cache, dropping each row from the
             batch at its first mismatch: prefill + (match_len + 1) steps instead of + suffix_len. Rows
             still matching after a few steps (mostly memorized) are finished by screen, batched across
             all batches: decoded on, a few rows per batch, they cost suffix_len sequential steps each batch
    auto     the same decoding, fed the generated tokens, that drops a row only once it can no longer
             match approximately (edit distance <= max_distance): keeps per row the current row of the
             token Levenshtein matrix between the tokens generated so far and the true suffix. Any
             completion's final distance is at least min_j (D[j] + |j - t|) after t tokens (the best
             alignment passes through some cell (t, j), and the remaining L - t generated and L - j true
             tokens cost at least their length difference); a row is dropped as soon as that bound exceeds
             max_distance. A bound > 0 means a mismatch has been seen, so match_len is final at the drop;
             rows never dropped are fully decoded (at t = L the bound is the distance itself)

Near ties: at each position that decides the result (every matched position and the first mismatch)
the decisive gap is |logit(true token) - max logit of any other token|. A row whose decisive gap falls
below `near_tie_tolerance(dtype)` somewhere is a near tie: another engine, kernel or dtype may round
that arg-max the other way, so its exact_match/match_len could differ from theirs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch

from evalmem import scores

# Chosen margins (not measured bounds): well above fp32 kernel-order noise, about a few units in the
# last place of a logit of magnitude ~10 in half precision.
_TOLERANCE = {torch.float32: 1e-3, torch.float16: 0.05, torch.bfloat16: 0.25}


def near_tie_tolerance(dtype: torch.dtype) -> float:
    """Logit gap under which an arg-max could flip between engines in this dtype."""
    return _TOLERANCE.get(dtype, 1e-3)


def decide(logits: torch.Tensor, true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For logits (..., V) and true tokens (...): whether greedy decoding picks the true token (arg-max,
    the lowest index on exact ties, as torch.argmax), the decisive gap |logit(true) - max logit of the
    other tokens|, and logit(true). One vectorised max over all logits; the top-2 and arg-max only where
    the true token attains the max (few rows outside memorized text)."""
    shape, logits, true = true.shape, logits.float().reshape(-1, logits.shape[-1]), true.reshape(-1)
    true_logit = logits.gather(1, true[:, None]).squeeze(1)
    best = logits.amax(1)
    hit = true_logit >= best
    gap = best - true_logit  # a miss: the arg-max's lead over the true token
    rows = hit.nonzero().squeeze(1)
    if len(rows):
        top2 = logits[rows].topk(2, dim=1).values
        gap[rows] = top2[:, 0] - top2[:, 1]  # a hit: the true token's lead over the runner-up (0 on a tie)
        tied = rows[top2[:, 0] == top2[:, 1]]
        hit[tied] = logits[tied].argmax(1) == true[tied]
    return hit.view(shape), gap.view(shape), true_logit.view(shape)


def _first_miss(hit: torch.Tensor) -> torch.Tensor:
    """Index of the first False in each row of `hit` (n, L); L where there is none."""
    miss = ~hit
    return torch.where(miss.any(1), miss.int().argmax(1), hit.shape[1])


def screen(model, prefix: np.ndarray, suffix: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Teacher-forced screen of windows prefix (n, P) + suffix (n, L): match_len, near_tie and
    suffix_logprobs (n, L), in batches of `batch_size` (the model's head only over the suffix positions)."""
    scores.check_head(model)
    return _over_batches(model, _screen_batch, prefix, suffix, batch_size,
                         ("match_len", "near_tie", "suffix_logprobs"))


def _screen_batch(model, prefix: torch.Tensor, true: torch.Tensor, tolerance: float):
    window = torch.cat([prefix, true], dim=1)
    stats = scores.position_scores(model, window, start=prefix.shape[1] - 1, check=False)
    match_len = _first_miss(stats["hit"])
    return match_len, near_ties(stats["gap"], match_len, tolerance), stats["logp"]


def near_ties(gap: torch.Tensor, match_len: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Rows whose deciding positions (every matched one and the first mismatch) include a gap under tolerance."""
    decides = torch.arange(gap.shape[1], device=gap.device)[None] <= match_len[:, None]
    return ((gap < tolerance) & decides).any(1)


def profile(model, windows: np.ndarray, batch_size: int, temperature: float = 1.0, top_k: int = 0
            ) -> dict[str, np.ndarray]:
    """`evalmem.scores.FIELDS` (n, W - 1) of token windows (n, W): one teacher-forced pass each, in batches."""
    scores.check_head(model)

    def batch(model, first, rest, tolerance):
        stats = scores.position_scores(model, torch.cat([first, rest], dim=1), temperature, top_k, check=False)
        return tuple(stats[k] for k in scores.FIELDS)

    return _over_batches(model, batch, windows[:, :1], windows[:, 1:], batch_size, scores.FIELDS)


VERIFY_STEPS = 4  # decoding steps before verify hands the rows still matching to screen


def verify(model, prefix: np.ndarray, suffix: np.ndarray, batch_size: int, steps: int = VERIFY_STEPS
           ) -> dict[str, np.ndarray]:
    """Early-exit greedy decoding of prefix (n, P) against suffix (n, L): match_len and near_tie. Rows still
    matching after `steps` steps are screened, in passes of as many tokens as a prefill's."""
    prefix_len, length = prefix.shape[1], suffix.shape[1]
    steps = min(steps, length)
    out = _over_batches(model, partial(_verify_batch, steps=steps), prefix, suffix, batch_size,
                        ("match_len", "near_tie"))
    rest = np.flatnonzero(out["match_len"] == steps) if steps < length else []
    if len(rest):
        screened = screen(model, prefix[rest], suffix[rest], max(1, batch_size * prefix_len // (prefix_len + length)))
        out["match_len"][rest] = screened["match_len"]
        out["near_tie"][rest] |= screened["near_tie"]
    return out


def _verify_batch(model, prefix: torch.Tensor, true: torch.Tensor, tolerance: float, steps: int):
    n = len(true)
    match_len = torch.zeros(n, dtype=torch.long, device=true.device)
    near_tie = torch.zeros(n, dtype=torch.bool, device=true.device)

    def step(rows, t, logits):
        hit, gap, _ = decide(logits, true[rows, t])
        near_tie[rows] |= gap < tolerance
        match_len[rows] += hit.long()
        return (hit if t < steps - 1 else None), true[rows, t]

    _decode_rows(model, prefix, step)
    return match_len, near_tie


def _decode_rows(model, prefix: torch.Tensor, step) -> None:
    """Greedy decoding of prefix (n, P) with a KV cache that drops the rows it no longer needs: at each step t,
    `step(rows, t, logits)` (rows: the original indices still decoding, logits: their next-token logits) returns
    which of them go on (None: stop) and the tokens they are fed."""
    rows = torch.arange(len(prefix), device=prefix.device)
    out = model(input_ids=prefix, use_cache=True, logits_to_keep=1)
    cache, logits, t = out.past_key_values, out.logits[:, -1], 0
    while True:
        keep, tokens = step(rows, t, logits)
        if keep is None or not keep.any():
            return
        if not keep.all():
            keep = keep.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, tokens = rows[keep], tokens[keep]
        out = model(input_ids=tokens[:, None], past_key_values=cache, use_cache=True)
        cache, logits, t = out.past_key_values, out.logits[:, -1], t + 1


def auto(model, prefix: np.ndarray, suffix: np.ndarray, batch_size: int, max_distance: float
         ) -> dict[str, np.ndarray]:
    """Greedy decoding of prefix (n, P) that stops each row once its edit distance to suffix (n, L) must
    exceed `max_distance` tokens: match_len, near_tie (as verify) and generated (n, L), -1 after a row stopped."""
    return _over_batches(model, partial(_auto_batch, max_distance=max_distance), prefix, suffix, batch_size,
                         ("match_len", "near_tie", "generated"))


def _auto_batch(model, prefix: torch.Tensor, true: torch.Tensor, tolerance: float, max_distance: float):
    n, length = true.shape
    span = torch.arange(length + 1, device=true.device)
    match_len = torch.zeros(n, dtype=torch.long, device=true.device)
    near_tie = torch.zeros(n, dtype=torch.bool, device=true.device)
    matching = torch.ones(n, dtype=torch.bool, device=true.device)
    generated = torch.full((n, length), -1, dtype=torch.long, device=true.device)
    dist = span.repeat(n, 1)  # each row's Levenshtein row against its true suffix

    def step(rows, t, logits):
        token = logits.argmax(-1)
        hit, gap, _ = decide(logits, true[rows, t])
        still = matching[rows]
        near_tie[rows] |= still & (gap < tolerance)  # the positions deciding exact_match and match_len
        match_len[rows] += (still & hit).long()
        matching[rows] = still & hit
        generated[rows, t] = token
        dist[rows] = levenshtein_step(dist[rows], token, true[rows], t + 1)
        keep = (dist[rows] + (span - t - 1).abs()).min(1).values <= max_distance
        return (keep if t < length - 1 else None), token

    _decode_rows(model, prefix, step)
    return match_len, near_tie, generated


def levenshtein_step(dist: torch.Tensor, token: torch.Tensor, true: torch.Tensor, t: int) -> torch.Tensor:
    """The next row of the token Levenshtein matrix: `dist` (n, L + 1) holds the distances between the
    t - 1 tokens generated before `token` (n,) and every prefix of `true` (n, L); returns those for t tokens.
    D_t[j] = min(D_{t-1}[j-1] + (token != true[j-1]), D_{t-1}[j] + 1, D_t[j-1] + 1); the last term's chain
    along j is a running minimum: D_t[j] = j + min_{k <= j} (c[k] - k) over the first two terms c."""
    first = torch.full_like(dist[:, :1], t)
    c = torch.cat([first, torch.minimum(dist[:, :-1] + (true != token[:, None]), dist[:, 1:] + 1)], dim=1)
    span = torch.arange(dist.shape[1], device=dist.device)
    return span + torch.cummin(c - span, dim=1).values


def _over_batches(model, batch_fn, prefix: np.ndarray, suffix: np.ndarray, batch_size: int,
                  names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """batch_fn(model, prefix, true, tolerance) on every `batch_size` windows of prefix (n, P) and suffix
    (n, L), its tensors gathered into numpy arrays under `names`. On CPU two batches run at once on half the
    threads each: a small model's many short element-wise ops scale better across batches than within one."""
    param = next(model.parameters())
    tolerance = near_tie_tolerance(param.dtype)

    @torch.inference_mode()  # a per-thread mode: set in each worker
    def one(i: int) -> tuple:
        true = torch.from_numpy(suffix[i:i + batch_size]).to(param.device)
        return batch_fn(model, torch.from_numpy(prefix[i:i + batch_size]).to(param.device), true, tolerance)

    workers, threads = (2 if param.device.type == "cpu" and len(prefix) > batch_size else 1), torch.get_num_threads()
    starts = range(0, len(prefix), batch_size)
    scores.warm_up(model.get_output_embeddings().weight.shape[0])  # compile here, not in two worker threads at once
    out = {name: np.zeros((0,)) for name in names}
    torch.set_num_threads(max(1, threads // workers))
    try:
        with ThreadPoolExecutor(workers) as pool:
            for i, part in zip(starts, pool.map(one, starts)):
                _store(out, i, len(prefix), dict(zip(names, part)))
    finally:
        torch.set_num_threads(threads)
    return out


def _store(out: dict[str, np.ndarray], start: int, n: int, part: dict[str, torch.Tensor]) -> None:
    """Copy one batch's tensors into rows start... of `out`'s arrays (made at the first batch, n rows each).
    Copied at once, so that no small tensor outlives its batch: kept, they fragment the heap between the
    batches' large logits."""
    for name, tensor in part.items():
        value = tensor.cpu().numpy()
        if start == 0:
            out[name] = np.empty((n, *value.shape[1:]), value.dtype)
        out[name][start:start + len(value)] = value
