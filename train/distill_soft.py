"""Soft-label distillation: forward KL(teacher ‖ student) over the vocabulary at every position, with
temperature T on both softmaxes and the loss scaled by T² (Hinton et al. 2015; the paper: T = 2).

Built on TRL's `GKDTrainer` with lmbda = 0 (no student generation) and beta = 0 (forward KL). TRL's
stock `compute_loss` calls its divergence without the temperature, so the loss is overridden here.

With a teacher cache (`evalmem teacher-cache`, evalmem.teacher_cache) the teacher is not run: the KL is taken over
the cached top-k tokens and one tail bucket (`topk_kd_loss`), the same at k = vocabulary size.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # trl is pinned (pyproject): its GKD API is known here
from trl.experimental.gkd import GKDConfig, GKDTrainer  # noqa: E402

from evalmem.errors import InputError  # noqa: E402
from evalmem.models import load_causal_lm, load_tokenizer, model_config, vocab_size  # noqa: E402
from evalmem.teacher_cache import bucketed_kl, open_cache  # noqa: E402
from train.finetune import as_dataset, load_trainee, lora_config, train_and_save, training_args  # noqa: E402


def soft_kd_loss(student_logits, teacher_logits, labels, temperature: float, num_items_in_batch=None):
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), summed over the vocabulary and averaged
    over the positions whose label is not -100 (or divided by `num_items_in_batch`)."""
    return temperature ** 2 * GKDTrainer.generalized_jsd_loss(
        student_logits.float(), teacher_logits.float(), labels=labels, beta=0.0, temperature=temperature,
        num_items_in_batch=num_items_in_batch)


def topk_kd_loss(student_logits, ids, logp, tail, labels, temperature: float, num_items_in_batch=None):
    """`soft_kd_loss` with the teacher's side read from a cache: T² · KL over the teacher's top-k tokens and the
    tail bucket (`evalmem.teacher_cache.bucketed_kl`), reduced over the positions as GKDTrainer reduces."""
    kl = bucketed_kl(student_logits, ids, logp, tail, temperature)[labels != -100]
    return temperature ** 2 * kl.sum() / (num_items_in_batch if num_items_in_batch is not None
                                          else max(kl.numel(), 1))


class SoftKDTrainer(GKDTrainer):
    """GKDTrainer whose loss is `soft_kd_loss` over the first `vocab_size` logits (the tokenizer's tokens;
    rows past them are embedding padding, which differs between e.g. Pythia-12B and Pythia-1.4B)."""

    def __init__(self, *args, vocab_size: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.vocab_size = vocab_size

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        student = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        self.teacher_model.eval()
        with torch.no_grad():
            teacher = self.teacher_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        v = self.vocab_size
        loss = soft_kd_loss(student.logits[:, :-1, :v], teacher.logits[:, :-1, :v], inputs["labels"][:, 1:],
                            self.temperature, num_items_in_batch)
        return self.scaled(loss, student, return_outputs, num_items_in_batch)

    def scaled(self, loss, student, return_outputs: bool, num_items_in_batch):
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts every process's tokens and DDP averages the gradients (as Trainer's own loss)
            loss = loss * self.accelerator.num_processes
        return (loss, student) if return_outputs else loss


class CachedKDTrainer(SoftKDTrainer):
    """SoftKDTrainer whose teacher side is a `TeacherCache` (rows found by window): the teacher model is not run."""

    def __init__(self, *args, cache, **kwargs):
        super().__init__(*args, **kwargs)
        self.cache = cache

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        student = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        ids, logp, tail = self.cache.lookup(inputs["input_ids"])
        loss = topk_kd_loss(student.logits[:, :-1, :self.vocab_size], ids, logp, tail, inputs["labels"][:, 1:],
                            self.temperature, num_items_in_batch)
        return self.scaled(loss, student, return_outputs, num_items_in_batch)


def shared_vocabulary(teacher: str, student: str) -> int:
    """The number of tokens of the tokenizer teacher and student share; an InputError if they differ."""
    t, s = load_tokenizer(teacher), load_tokenizer(student)
    if t.get_vocab() != s.get_vocab():
        raise InputError(f"teacher {teacher} and student {student} have different tokenizers "
                         f"({len(t)} vs {len(s)} tokens): distillation needs one vocabulary")
    for model in (teacher, student):
        size = vocab_size(model_config(model))
        if size < len(t):
            raise InputError(f"{model} has {size} output logits for a tokenizer of {len(t)} tokens")
    return len(t)


def load_teacher(teacher: str, logits: int):
    """The teacher for inference (bf16 on GPU; an adapter merged into its base), its logit rows matched to the
    student's count for TRL's check."""
    model = load_causal_lm(teacher, "bfloat16" if torch.cuda.is_available() else "float32", to_device="cpu",
                           merge=True)
    if vocab_size(model.config) != logits:
        model.resize_token_embeddings(logits, mean_resizing=False)
    return model


def checked_cache(path: str | Path, teacher: str, windows, vocab: int):
    """The teacher cache at `path`, refused in one line unless it is `teacher`'s over every one of `windows` and
    this vocabulary."""
    cache = open_cache(path, teacher)
    if cache.vocab_size != vocab:
        raise InputError(f"the teacher cache {path} covers {cache.vocab_size} tokens, the tokenizer {vocab}")
    cache.find(windows)
    return cache


def distill_soft(teacher: str, student: str, windows, out: str | Path, *, temperature: float = 2.0, peft=None,
                 teacher_cache: str | Path | None = None, **train) -> Path:
    """Distill `teacher` into `student` on `windows` (token-id lists or a Dataset with `input_ids`), in full or
    (`peft` enabled) as LoRA adapters; `train` holds `training_args`' settings; with `teacher_cache` (a directory
    written by `evalmem teacher-cache`) the teacher's side is read from it. Saves a HF folder at `out` when
    finished."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    vocab = shared_vocabulary(teacher, student)
    tokenizer = load_tokenizer(student)
    data = as_dataset(windows)
    cache = checked_cache(teacher_cache, teacher, data["input_ids"], vocab) if teacher_cache else None
    config = training_args(GKDConfig, Path(out), lmbda=0.0, beta=0.0, temperature=temperature, **train)
    model = load_trainee(student, peft)
    # GKDTrainer requires a teacher model; with a cache the student stands in, never called (lmbda = 0, no seq_kd)
    teacher_model = model if cache else load_teacher(teacher, vocab_size(model.config))
    trainer = (CachedKDTrainer if cache else SoftKDTrainer)(
        model=model, teacher_model=teacher_model, args=config, train_dataset=data, processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id or 0), vocab_size=vocab,
        peft_config=lora_config(peft), **({"cache": cache} if cache else {}))
    return train_and_save(trainer, tokenizer, Path(out))
