"""Per-example features of the memorization predictor, computed before distillation:

    teacher_ppl           exp(mean negative log-likelihood of the window's tokens 2..L) under the teacher
    baseline_ppl          the same under the baseline
    kl_teacher_baseline   KL(teacher ‖ baseline) over the full vocabulary, averaged over those positions
    zlib_entropy          byte length of zlib.compress(decoded window text)
    min_k_logprob         Min-K% (Shi et al. 2024): mean teacher log-probability of the k% least likely tokens

and (`evalmem perplexity`) the utility of any number of checkpoints: perplexity over held-out windows.

The window is the same prefix+suffix window `extract` uses (data.py), so features join results on
`example_id`.

With `--teacher-cache DIR` (an `evalmem teacher-cache` of the teacher on the same windows) kl_teacher_baseline is
read from the cache's side: KL over the teacher's top-k tokens and one bucket for the rest of the tokenizer's
vocabulary, at T = 1 (evalmem.teacher_cache.bucketed_kl). That is the KL of the coarsened distributions, at most the
full KL and equal to it at k = vocabulary size; it ranks windows by how far the baseline is from the teacher's
confident tokens and ignores how the two spread the tail. The teacher still runs for its perplexity and Min-K%.

Why torch and not vLLM: every feature needs one teacher-forced forward pass, and the KL needs both
models' FULL next-token distributions at every position, which vLLM returns only as Python objects per
entry (docs/benchmarks.md). Batched torch forward passes of both models over the same batch are the
fast path; the logits of a batch never leave the device.
"""

from __future__ import annotations

import time
import zlib

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from evalmem import runner, scores
from evalmem.data import check_vocabulary, cut_windows, load_source, token_lists
from evalmem.errors import InputError
from evalmem.models import (context_length, device, load_causal_lm, load_tokenizer, model_config, prepack,
                            resolve_dtype, vocab_size)
from evalmem.runner import LazyEngine, open_job
from evalmem.settings import FEATURES, DataSpec, FeatureSettings, OutputSpec
from evalmem.store import write_json
from evalmem.teacher_cache import bucketed_kl, open_cache


def token_scores(logits_t: torch.Tensor, logits_b: torch.Tensor, ids: torch.Tensor, min_k: float,
                 cached: tuple | None = None) -> dict:
    """Features of each row of `ids` (n, L) from both models' logits (n, L, V); position i predicts token i+1.
    Both vocabularies are cut to the smaller one (padded vocabularies differ in size, e.g. across Pythia).
    `cached`: the teacher cache's (ids, log-probabilities, tail) of these rows, the teacher's side of the KL."""
    vocab = min(logits_t.shape[-1], logits_b.shape[-1])
    lp_t = F.log_softmax(logits_t[:, :-1, :vocab].float(), dim=-1)
    lp_b = F.log_softmax(logits_b[:, :-1, :vocab].float(), dim=-1)
    target = ids[:, 1:, None]
    tok_t = lp_t.gather(-1, target).squeeze(-1)
    tok_b = lp_b.gather(-1, target).squeeze(-1)
    if cached is None:
        kl = F.kl_div(lp_b, lp_t, log_target=True, reduction="none").sum(-1).mean(-1)
    else:  # over the tokenizer's vocabulary, the cache's
        kl = bucketed_kl(logits_b[:, :-1, :cached[3]], *cached[:3]).mean(-1)
    tok_t, tok_b = tok_t.cpu().numpy(), tok_b.cpu().numpy()
    return {"teacher_ppl": np.exp(scores.loss(tok_t)), "baseline_ppl": np.exp(scores.loss(tok_b)),
            "kl_teacher_baseline": kl.cpu().numpy(), "min_k_logprob": scores.min_k(tok_t, min_k)}


def zlib_entropy(texts: list[str]) -> np.ndarray:
    return np.array([len(zlib.compress(t.encode("utf-8"))) for t in texts], dtype=np.int64)


@torch.inference_mode()
def score(teacher, baseline, windows: np.ndarray, tokenizer, batch_size: int, min_k: float,
          cache=None) -> dict[str, np.ndarray]:
    """All features of the token windows (n, L), in batches; `cache`: a TeacherCache holding them."""
    on = next(teacher.parameters()).device
    parts = []
    for i in range(0, len(windows), batch_size):
        ids = torch.from_numpy(windows[i:i + batch_size]).to(on)
        cached = (*cache.lookup(ids), cache.vocab_size) if cache else None
        values = token_scores(teacher(input_ids=ids).logits, baseline(input_ids=ids).logits, ids, min_k, cached)
        parts.append({k: v.astype(np.float64) for k, v in values.items()})
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {k: np.zeros(0) for k in FEATURES}
    out["zlib_entropy"] = zlib_entropy(tokenizer.batch_decode(windows.tolist()))
    return {k: out[k] for k in FEATURES}


def features_run(job: FeatureSettings, data: DataSpec, output: OutputSpec) -> dict:
    """`evalmem features`: every feature of every window into OUT/features.parquet (sharded, resumable)."""
    cached = {"teacher_cache": job.teacher_cache} if job.teacher_cache else {}
    run = open_job("features", models={"teacher": job.teacher, "baseline": job.baseline}, data=data, output=output,
                   job=job, dtype=job.dtype, settings={"suffix_len": job.suffix_len, "min_k": job.min_k, **cached},
                   need_tokenizer=True, results="features.parquet")
    cache = features_cache(job)
    run.engine = LazyEngine(lambda: tuple(prepack(load_causal_lm(m, run.dtype)) for m in (job.teacher, job.baseline)))

    def work(get_models, start, stop):
        windows = run.windows(start, stop)
        began = time.perf_counter()  # run_shards takes the models' loading (startup) off these seconds
        teacher_model, baseline_model = get_models()
        values = score(teacher_model, baseline_model, np.concatenate([windows.prefix, windows.suffix], axis=1),
                       run.tokenizer, job.batch_size, job.min_k, cache)
        return (pa.table({"example_id": windows.example_ids, **values}),
                {"n_short": windows.n_short, "seconds": time.perf_counter() - began, "device": device()})

    return run.execute(work, summarize)


def features_cache(job: FeatureSettings):
    """The teacher cache of --teacher-cache (None without), checked against the teacher and the window length."""
    if not job.teacher_cache:
        return None
    cache = open_cache(job.teacher_cache, job.teacher)
    window = job.prefix_len + job.suffix_len
    if cache.settings["window_len"] != window:
        raise InputError(f"the teacher cache {job.teacher_cache} holds windows of {cache.settings['window_len']} "
                         f"tokens, not --prefix-len + --suffix-len = {window}")
    return cache


def summarize(settings: dict, metas: list[dict]) -> dict:
    """summary.json of a features run."""
    window = settings["prefix_len"] + settings["suffix_len"]
    n = runner.require_examples(settings, metas, window)
    return runner.summarize(settings, metas, n, window, {k: settings[k] for k in ("teacher", "baseline")},
                            suffix_len=settings["suffix_len"], features=list(FEATURES), min_k=settings["min_k"],
                            device=",".join(sorted({m["device"] for m in metas})))


@torch.inference_mode()
def nll_sum(model, windows: np.ndarray, batch_size: int) -> float:
    """Summed negative log-likelihood of tokens 2..L of every window (n, L) under `model`."""
    on = next(model.parameters()).device
    total = 0.0
    for i in range(0, len(windows), batch_size):
        ids = torch.from_numpy(windows[i:i + batch_size]).to(on)
        logits = model(input_ids=ids).logits[:, :-1].float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum").item()
    return total


def perplexity_run(models: list[tuple[str, str]], data: DataSpec, window_len: int, batch_size: int, dtype: str,
                   out: str) -> dict:
    """`evalmem perplexity`: each model's perplexity over the first `window_len` tokens of every example
    (the utility of a checkpoint on held-out windows); written to the JSON file `out`."""
    names = [name for name, _ in models]
    if len(set(names)) != len(names):
        raise InputError(f"model names must differ, got {', '.join(names)}; name models as NAME=PATH")
    if window_len < 2:
        raise InputError(f"--window-len must be at least 2 tokens, got {window_len}")
    configs = {path: model_config(path) for _, path in models}
    for path, config in configs.items():
        if (context_length(config) or window_len) < window_len:
            raise InputError(f"--window-len {window_len} exceeds the context of {path} "
                             f"({context_length(config)} tokens)")
    source = load_source(data)
    tok = load_tokenizer(data.tokenizer or models[0][1]) if source.token_column is None else None
    check_vocabulary(source, min(vocab_size(c) for c in configs.values()))
    windows = cut_windows(token_lists(source, 0, len(source), tok), source.ids, window_len, 0)
    if not windows.example_ids:
        raise InputError(f"no example of {data.path} has --window-len = {window_len} tokens")
    tokens = windows.prefix.size - len(windows.prefix)
    result = {"data": data.path, "data_fingerprint": source.fingerprint, "window_len": window_len,
              "n_windows": len(windows.example_ids), "n_skipped_short": windows.n_short, "models": {}}
    for name, path in models:
        model = prepack(load_causal_lm(path, resolve_dtype(configs[path], dtype)))
        nll = nll_sum(model, windows.prefix, batch_size) / tokens
        result["models"][name] = {"model": path, "mean_nll": nll, "perplexity": float(np.exp(nll))}
    write_json(out, result)
    return result
