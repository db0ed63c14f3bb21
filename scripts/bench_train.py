"""Benchmark: a soft-KD training step against a plain SFT step (same student, same batch), and
`evalmem generate`'s engine (vLLM) against a transformers `generate` loop, in new tokens per second.

    python scripts/bench_train.py                      # tiny local Llamas (built in a temp folder)
    python scripts/bench_train.py --teacher T --student S --prompts 2048 --new-tokens 206
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def tiny_models(root: str) -> tuple[str, str, list[list[int]]]:
    """A teacher (h256, 6 layers) and a student (h128, 4 layers) sharing a KJV tokenizer, and 256-token windows."""
    from evalmem.tiny import build_model, kjv_verses, token_windows, train_tokenizer

    verses = kjv_verses()
    tok = train_tokenizer(verses[:5000], f"{root}/tok", vocab_size=8192)
    teacher = build_model(f"{root}/teacher", tok, hidden=256, layers=6, heads=8)
    student = build_model(f"{root}/student", tok, hidden=128, layers=4)
    return str(teacher), str(student), token_windows(verses[:20000], tok, 256)


def step_seconds(trainer, batch, repeats: int) -> float:
    """Median seconds of one training step (forward + backward) after a warm-up step."""
    trainer.create_optimizer_and_scheduler(num_training_steps=repeats + 1)
    trainer.current_gradient_accumulation_steps = 1  # set by `train()`, which is not used here
    tokens = batch["labels"][:, 1:].ne(-100).sum()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        trainer.training_step(trainer.model, dict(batch), tokens)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def bench_steps(teacher: str, student: str, windows, batch_size: int, repeats: int) -> tuple[float, float]:
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from train.distill_soft import GKDConfig, SoftKDTrainer, load_teacher, shared_vocabulary
    from train.finetune import as_dataset, load_trainee, training_args

    data = as_dataset(windows[:batch_size])
    tok = AutoTokenizer.from_pretrained(student)
    collate = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id or 0)
    batch = collate([{"input_ids": w} for w in data["input_ids"]])
    out = Path(tempfile.mkdtemp()) / "bench"
    settings = dict(epochs=1, lr=1e-4, batch_size=batch_size, seed=0, scheduler="constant", warmup_steps=0,
                    weight_decay=0.0)
    sft = SFTTrainer(model=load_trainee(student), args=training_args(SFTConfig, out, **settings), train_dataset=data,
                     processing_class=tok)
    model = load_trainee(student)
    kd = SoftKDTrainer(model=model, teacher_model=load_teacher(teacher, model.config.vocab_size),
                       args=training_args(GKDConfig, out, lmbda=0.0, beta=0.0, temperature=2.0, **settings),
                       train_dataset=data, processing_class=tok, data_collator=collate,
                       vocab_size=shared_vocabulary(teacher, student))
    return step_seconds(sft, batch, repeats), step_seconds(kd, batch, repeats)


def bench_generate(model: str, prompts, new_tokens: int) -> dict[str, float]:
    """New tokens per second of each engine over the same prompts (engine start-up not counted)."""
    from evalmem.engines import EngineOptions, load_engine

    result = {}
    for name in ("hf", "vllm"):  # transformers first: vLLM's CPU thread binding would slow it afterwards
        engine = load_engine(name, EngineOptions(model=model, max_model_len=len(prompts[0]) + new_tokens))
        start = time.perf_counter()
        engine.generate(prompts, new_tokens)
        result[name] = len(prompts) * new_tokens / (time.perf_counter() - start)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="Teacher folder [default: a tiny local Llama].")
    parser.add_argument("--student", help="Student folder with the teacher's tokenizer [default: a tiny Llama].")
    parser.add_argument("--batch-size", type=int, default=8, help="Windows per training step.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed training steps of each kind.")
    parser.add_argument("--prompts", type=int, default=256, help="Prompts to generate from.")
    parser.add_argument("--prefix-len", type=int, default=50, help="Prompt tokens.")
    parser.add_argument("--new-tokens", type=int, default=100, help="Tokens generated per prompt.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        teacher, student, windows = tiny_models(root)
        teacher, student = args.teacher or teacher, args.student or student
        sft, kd = bench_steps(teacher, student, windows, args.batch_size, args.repeats)
        print(f"training step, batch {args.batch_size} x {len(windows[0])} tokens: SFT {sft:.3f} s, "
              f"soft KD {kd:.3f} s ({kd / sft:.2f}x; the extra is the teacher's forward pass)")
        prompts = [w[:args.prefix_len] for w in windows[:args.prompts]]
        speed = bench_generate(teacher, prompts, args.new_tokens)
        print(f"generate {len(prompts)} x {args.new_tokens} new tokens from {args.prefix_len}-token prefixes: "
              f"vLLM {speed['vllm']:.0f} tok/s, transformers generate {speed['hf']:.0f} tok/s "
              f"({speed['vllm'] / speed['hf']:.2f}x)")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
