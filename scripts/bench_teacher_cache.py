"""Benchmark the teacher-logit cache: computing it with a torch forward pass against vLLM's `prompt_logprobs`
(same windows, same k; start-up not counted), and a soft-KD training step from the cache against one that runs the
teacher (a teacher >= 4x the student).

    python scripts/bench_teacher_cache.py                       # tiny local Llamas (built in a temp folder)
    python scripts/bench_teacher_cache.py --teacher T --student S --windows 512 --k 64
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def tiny_models(root: str) -> tuple[str, str, np.ndarray]:
    """A teacher (h256, 4 layers, 4.2M parameters) and a student (h64, 2 layers, 0.39M) sharing a 2,048-token KJV
    tokenizer (the offline default's sizes), and 100-token windows."""
    from evalmem.tiny import build_model, kjv_verses, token_windows, train_tokenizer

    verses = kjv_verses()
    tok = train_tokenizer(verses[:5000], f"{root}/tok", vocab_size=2048)
    teacher = build_model(f"{root}/teacher", tok, hidden=256, layers=4, heads=8)
    student = build_model(f"{root}/student", tok, hidden=64, layers=2, heads=2, seed=1)
    return str(teacher), str(student), np.array(token_windows(verses[:20000], tok, 100))


def torch_cache(teacher: str, windows: np.ndarray, k: int, batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds of evalmem's pass (the model loaded and pre-packed first) and its top-k ids."""
    from evalmem.models import load_causal_lm, prepack
    from evalmem.teacher_cache import cache_windows

    model = prepack(load_causal_lm(teacher, "float32"))
    vocab = len(__import__("transformers").AutoTokenizer.from_pretrained(teacher))
    start = time.perf_counter()
    cached = cache_windows(model, windows, vocab, k, batch_size)
    return time.perf_counter() - start, cached["topk_ids"]


def vllm_cache(teacher: str, windows: np.ndarray, k: int) -> tuple[float, float, np.ndarray]:
    """(start-up seconds, seconds, top-k ids) of vLLM's prompt_logprobs = k, its max_logprobs raised to k, the
    entries turned into arrays (the tail's mass follows from the top-k's)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    start = time.perf_counter()
    llm = LLM(model=teacher, dtype="float32", enforce_eager=True, max_logprobs=k, max_num_seqs=256,
              max_model_len=windows.shape[1] + 1, kv_cache_memory_bytes=256 << 20, enable_prefix_caching=False)
    startup = time.perf_counter() - start
    params = SamplingParams(max_tokens=1, prompt_logprobs=k, detokenize=False, temperature=0.0)
    start = time.perf_counter()
    outputs = llm.generate([TokensPrompt(prompt_token_ids=w.tolist()) for w in windows], params, use_tqdm=False)
    ids = np.zeros((len(windows), windows.shape[1] - 1, k), dtype=np.int32)
    logp = np.zeros(ids.shape, dtype=np.float32)
    for i, out in enumerate(outputs):
        for j, entry in enumerate(out.prompt_logprobs[1:]):  # entry j: position j predicting token j + 1
            top = sorted(entry.items(), key=lambda item: item[1].rank)[:k]  # the true token is added if not top-k
            ids[i, j] = [t for t, _ in top]
            logp[i, j] = [lp.logprob for _, lp in top]
    np.log1p(-np.minimum(np.exp(logp).sum(-1), 1.0))  # the tail's log-mass, as the cache stores it
    return startup, time.perf_counter() - start, ids


def bench_steps(teacher: str, student: str, windows: np.ndarray, k: int, batch_size: int, repeats: int):
    """Median seconds of a soft-KD training step that runs the teacher and of one that reads the cache."""
    from bench_train import step_seconds
    from transformers import AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from evalmem.settings import DataSpec, OutputSpec, TeacherCacheSettings
    from evalmem.teacher_cache import teacher_cache_run
    from evalmem.tiny import write_jsonl
    from train.distill_soft import CachedKDTrainer, GKDConfig, SoftKDTrainer, checked_cache, load_teacher
    from train.finetune import as_dataset, load_trainee, training_args

    root = Path(tempfile.mkdtemp())
    data = as_dataset(windows[:batch_size])
    write_jsonl(root / "batch.jsonl", [{"id": i, "input_ids": w} for i, w in enumerate(data["input_ids"])])
    teacher_cache_run(TeacherCacheSettings(teacher, windows.shape[1], k), DataSpec(str(root / "batch.jsonl")),
                      OutputSpec(str(root / "cache")))
    tok = AutoTokenizer.from_pretrained(student)
    collate = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id or 0)
    batch = collate([{"input_ids": w} for w in data["input_ids"]])
    settings = dict(epochs=1, lr=1e-4, batch_size=batch_size, seed=0, scheduler="constant", warmup_steps=0,
                    weight_decay=0.0)
    times = {}
    for name in ("online", "cache"):
        model = load_trainee(student)
        extra = ({"teacher_model": load_teacher(teacher, model.config.vocab_size)} if name == "online" else
                 {"teacher_model": model, "cache": checked_cache(root / "cache", teacher, data["input_ids"], len(tok))})
        trainer = (SoftKDTrainer if name == "online" else CachedKDTrainer)(
            model=model, args=training_args(GKDConfig, root / name, lmbda=0.0, beta=0.0, temperature=2.0, **settings),
            train_dataset=data, processing_class=tok, data_collator=collate, vocab_size=len(tok), **extra)
        times[name] = step_seconds(trainer, batch, repeats)
    return times


def parameters(model: str) -> int:
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model).parameters())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="Teacher folder [default: a tiny local Llama].")
    parser.add_argument("--student", help="Student folder with the teacher's tokenizer [default: a tiny Llama].")
    parser.add_argument("--windows", type=int, default=512, help="Windows to cache.")
    parser.add_argument("--k", type=int, default=64, help="Log-probabilities kept per position.")
    parser.add_argument("--batch-size", type=int, default=16, help="Windows per forward pass and training step.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed training steps of each kind.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        teacher, student, windows = tiny_models(root)
        teacher, student = args.teacher or teacher, args.student or student
        windows = windows[:args.windows]
        seconds, ids = torch_cache(teacher, windows, args.k, args.batch_size)
        startup, vllm_seconds, vllm_ids = vllm_cache(teacher, windows, args.k)
        agree = (ids[..., 0] == vllm_ids[..., 0]).mean()
        print(f"cache {len(windows)} x {windows.shape[1]} tokens, k = {args.k}: torch {seconds:.2f} s, vLLM "
              f"prompt_logprobs {vllm_seconds:.2f} s (start-up {startup:.1f} s more); vLLM / torch "
              f"{vllm_seconds / seconds:.1f}x; top-1 ids agree at {agree:.4f} of positions")
        steps = bench_steps(teacher, student, windows, args.k, args.batch_size, args.repeats)
        ratio = parameters(teacher) / parameters(student)
        print(f"soft-KD step, batch {args.batch_size} x {windows.shape[1]} tokens, teacher {ratio:.1f}x the student: "
              f"online {steps['online']:.3f} s, from the cache {steps['cache']:.3f} s "
              f"(online / cache {steps['online'] / steps['cache']:.2f}x)")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train's step timing
    main()
