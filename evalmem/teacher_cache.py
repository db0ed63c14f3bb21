"""The teacher-logit cache: per training window and position, the teacher's top-k log-probabilities at T = 1, their
token ids and the log of the remaining (tail) mass, computed once so that soft KD reads them instead of running the
teacher (`evalmem teacher-cache`, `evalmem-train distill-soft --teacher-cache DIR`).

    DIR/results.parquet   one row per window: example_id, window_key (a hash of the window's tokens, what the
                          trainer looks a window up by), topk_ids and topk_logprobs ((L-1) x k, position-major,
                          most likely first), tail_logmass (L-1); position i predicts token i+1
    DIR/manifest.json     the store's: teacher and its fingerprint, data and its fingerprint, window_len, k

Sharded, checksummed and resumable like every result directory (evalmem.store). Computed with a batched torch
forward pass: faster here than vLLM's `prompt_logprobs`, which returns Python objects per entry
(scripts/bench_teacher_cache.py, docs/benchmarks.md).

The distillation loss over the cache (`bucketed_kl`): the teacher's distribution over k + 1 outcomes (its top-k
tokens and one tail bucket) against the student's over the same outcomes. With temperature T the teacher's
top-k entries are logp / T; the tail bucket's tempered mass assumes the tail's V - k tokens share its mass m
equally: log((V - k) * (m / (V - k))^(1/T)), an upper bound on the true tempered tail mass for T > 1 (power
mean). Everything is then normalized jointly. Exact at T = 1 (a coarsening of the full distribution, so the KL
is at most the full KL: data processing) and at k = V (no tail).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from evalmem import runner
from evalmem.errors import InputError
from evalmem.models import device, load_causal_lm, model_fingerprints, prepack
from evalmem.runner import LazyEngine, open_job
from evalmem.settings import DataSpec, OutputSpec, TeacherCacheSettings
from evalmem.store import read_verified


def window_key(window) -> str:
    """What identifies a window's tokens: the trainer finds a window's cached rows by it, whatever its row."""
    return hashlib.sha256(np.asarray(window, dtype=np.int64).tobytes()).hexdigest()[:32]


def top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, log-probabilities) of the k most likely tokens (..., k) and the tail's log-mass (...) of `logits`
    (..., V) at T = 1; the tail's log-mass is -inf when k = V."""
    logp = F.log_softmax(logits.float(), dim=-1)
    values, ids = logp.topk(k, dim=-1)
    return ids, values, rest_logmass(logp, ids)


def rest_logmass(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the mass of the entries of `logp` not in `ids`, summed in log space (stable where it is tiny)."""
    return logp.scatter(-1, ids, float("-inf")).logsumexp(-1)


def teacher_buckets(logp: torch.Tensor, tail: torch.Tensor, vocab: int, temperature: float):
    """The teacher's tempered log-probabilities of its top-k tokens (..., k) and of the tail bucket (...), from
    the T = 1 cache; the tail's tokens assumed equally likely (module docstring)."""
    k = logp.shape[-1]
    top = logp / temperature
    if k == vocab:
        return top - top.logsumexp(-1, keepdim=True), None
    spread = math.log(vocab - k)
    bucket = spread + (tail - spread) / temperature
    z = torch.cat([top, bucket[..., None]], dim=-1).logsumexp(-1, keepdim=True)
    return top - z, bucket - z[..., 0]


def bucketed_kl(student_logits: torch.Tensor, ids: torch.Tensor, logp: torch.Tensor, tail: torch.Tensor,
                temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher ‖ student) per position (...) over the teacher's top-k tokens and one tail bucket, both
    softmaxes at `temperature`; `student_logits` (..., V) over the cache's vocabulary."""
    vocab = student_logits.shape[-1]
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    q_top, q_tail = teacher_buckets(logp, tail, vocab, temperature)
    kl = (q_top.exp() * (q_top - student.gather(-1, ids))).sum(-1)
    if q_tail is not None:
        kl = kl + q_tail.exp() * (q_tail - rest_logmass(student, ids))
    return kl


@torch.inference_mode()
def cache_windows(model, windows: np.ndarray, vocab: int, k: int, batch_size: int) -> dict[str, np.ndarray]:
    """topk ids (n, L-1, k) int32, log-probabilities (n, L-1, k) float32 and tail log-mass (n, L-1) of the windows
    (n, L) under `model`, over its first `vocab` logits."""
    on = next(model.parameters()).device
    parts = []
    for i in range(0, len(windows), batch_size):
        ids = torch.from_numpy(windows[i:i + batch_size]).to(on)
        top, values, tail = top_k(model(input_ids=ids).logits[:, :-1, :vocab], k)
        parts.append((top.int().cpu().numpy(), values.cpu().numpy(), tail.cpu().numpy()))
    return {name: np.concatenate([p[j] for p in parts]) for j, name in
            enumerate(("topk_ids", "topk_logprobs", "tail_logmass"))}


def as_table(example_ids: list, windows: np.ndarray, cached: dict[str, np.ndarray]) -> pa.Table:
    """One row per window; the per-position arrays flattened into fixed-size lists."""
    columns = {name: pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values[0].size)
               for name, values in cached.items()}
    return pa.table({"example_id": example_ids, "window_key": [window_key(w) for w in windows], **columns})


def teacher_cache_run(job: TeacherCacheSettings, data: DataSpec, output: OutputSpec) -> dict:
    """`evalmem teacher-cache`: the cache of every window into OUT/results.parquet (sharded, resumable)."""
    run = open_job("teacher-cache", models={"teacher": job.model}, data=data, output=output, job=job,
                   dtype=job.dtype, settings={"window_len": job.window_len, "k": job.k}, need_tokenizer=True)
    vocab = len(run.tokenizer)
    if job.k > vocab:
        raise InputError(f"--k {job.k} exceeds the vocabulary of {job.model} ({vocab} tokens)")
    run.engine = LazyEngine(lambda: prepack(load_causal_lm(job.model, run.dtype)))

    def work(get_model, start, stop):
        windows = run.windows(start, stop)
        began = time.perf_counter()
        cached = cache_windows(get_model(), windows.prefix, vocab, job.k, job.batch_size)
        return (as_table(windows.example_ids, windows.prefix, cached),
                {"n_short": windows.n_short, "seconds": time.perf_counter() - began, "device": device(),
                 "vocab_size": vocab})

    return run.execute(work, lambda settings, metas: summarize(settings, metas, run.run.shards))


def summarize(settings: dict, metas: list[dict], shards: Path) -> dict:
    """summary.json of a teacher cache, with its shards' bytes on disk per cached position."""
    window = settings["window_len"]
    n = runner.require_examples(settings, metas, window)
    size = sum(p.stat().st_size for p in shards.glob("*.parquet"))
    return runner.summarize(settings, metas, n, window, {"teacher": settings["teacher"]}, k=settings["k"],
                            window_len=window, vocab_size=metas[0]["vocab_size"],
                            bytes_per_position=round(size / (n * (window - 1)), 1),
                            device=",".join(sorted({m["device"] for m in metas})))


@dataclass
class TeacherCache:
    """A finished teacher cache in memory, its rows found by window."""

    path: Path
    settings: dict
    rows: dict[str, int]
    ids: np.ndarray  # (n, L-1, k) int32
    logp: np.ndarray  # (n, L-1, k) float32
    tail: np.ndarray  # (n, L-1) float32

    @property
    def vocab_size(self) -> int:
        return self.summary["vocab_size"]

    @property
    def summary(self) -> dict:
        return json.loads((self.path / "summary.json").read_text())

    def find(self, windows) -> np.ndarray:
        """The cache rows of `windows` (token lists of one length); a one-line error naming how many are not in
        the cache (a cache of other data or window length)."""
        keys = [window_key(w) for w in windows]
        missing = sum(key not in self.rows for key in keys)
        if missing:
            raise InputError(f"{missing} of {len(keys)} windows are not in the teacher cache {self.path} (computed "
                             f"on {self.settings['data']}, window_len {self.settings['window_len']}): compute the "
                             "cache on this data")
        return np.array([self.rows[key] for key in keys])

    def lookup(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, log-probabilities, tail log-mass) of a batch of windows (B, L), as tensors on its device."""
        at = self.find(input_ids.cpu().numpy())
        ids, logp, tail = (torch.from_numpy(a[at]).to(input_ids.device) for a in (self.ids, self.logp, self.tail))
        return ids.long(), logp, tail


def open_cache(path: str | Path, teacher: str) -> TeacherCache:
    """Read a finished teacher cache of `teacher`; a one-line error for an unfinished one or another teacher's."""
    path = Path(path)
    if not (path / "summary.json").exists():
        raise InputError(f"{path} is not a finished teacher cache: run (or rerun) `evalmem teacher-cache --out "
                         f"{path}`")
    settings = json.loads((path / "manifest.json").read_text())["settings"]
    mine = {f"teacher_{key}": value for key, value in model_fingerprints(teacher).items()}
    if any(settings.get(key) != value for key, value in mine.items()):
        raise InputError(f"the teacher cache {path} was computed with another teacher ({settings['teacher']}, "
                         f"other weights) than {teacher}")
    table = read_verified(path / "results.parquet")
    n, positions, k = table.num_rows, settings["window_len"] - 1, settings["k"]

    def array(name, *shape):
        return table[name].combine_chunks().flatten().to_numpy().reshape(n, positions, *shape)

    keys = table["window_key"].to_pylist()
    return TeacherCache(path, settings, {key: i for i, key in enumerate(keys)}, array("topk_ids", k),
                        array("topk_logprobs", k), array("tail_logmass"))
