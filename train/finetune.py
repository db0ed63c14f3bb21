"""Fine-tuning with cross-entropy on pre-tokenized training windows (TRL `SFTTrainer`): the full model, or LoRA
adapters (the recipe's `peft` section, through TRL's `peft_config`; the checkpoint is then an adapter folder whose
adapter_config.json names the base model by its absolute path).

The trainer is fed the exact `input_ids` windows, so what is trained is what extraction tests.
Used for the teacher, the baselines and (on the teacher's corpus) the hard-label student.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from evalmem.errors import InputError
from evalmem.models import ModelSpec, load_causal_lm, load_tokenizer, model_spec


def device_flags() -> dict:
    """TRL configs default to GPU settings; pick them per device."""
    cuda = torch.cuda.is_available()
    return {"use_cpu": not cuda, "bf16": cuda and torch.cuda.is_bf16_supported(), "fp16": False,
            "gradient_checkpointing": False, "ddp_find_unused_parameters": False, "report_to": [],
            "save_strategy": "no", "logging_steps": 10, "disable_tqdm": True}


def training_args(config_cls, out: Path, *, epochs: float, lr: float, batch_size: int, seed: int, scheduler: str,
                  warmup_steps: float, weight_decay: float, grad_accum: int = 1, checkpoints: bool = False, **extra):
    """A TRL config (SFTConfig or a subclass) that writes into OUT.partial; `seed` also sets the data order;
    `checkpoints`: the model at the end of every epoch in OUT/checkpoint-STEP (weights only).
    No truncation: windows are checked against the model's context before training."""
    flags = device_flags() | ({"save_strategy": "epoch", "save_only_model": True} if checkpoints else {})
    return config_cls(output_dir=str(partial_path(out)), num_train_epochs=epochs, learning_rate=lr,
                      per_device_train_batch_size=batch_size, gradient_accumulation_steps=grad_accum, seed=seed,
                      data_seed=seed, lr_scheduler_type=scheduler, warmup_steps=warmup_steps,
                      weight_decay=weight_decay, max_length=None, **flags, **extra)


def lora_config(peft):
    """TRL's `peft_config` for the recipe's `peft` section (`evalmem.recipe.Peft`); None: train the full model."""
    if peft is None or not peft.enabled:
        return None
    from peft import LoraConfig

    modules = list(peft.target_modules)
    return LoraConfig(r=peft.r, lora_alpha=peft.alpha, lora_dropout=peft.dropout, task_type="CAUSAL_LM",
                      target_modules="all-linear" if modules == ["all-linear"] else modules)


def load_trainee(model: str, peft=None):
    """The model to train, in fp32 (master weights; bf16 autocast on GPU), whatever dtype it was saved in; the
    trainer places it. A local base is loaded by its absolute path, which a LoRA checkpoint records as its base; an
    adapter is merged (full training) or refused (LoRA training starts from a full model)."""
    spec = model_spec(model)
    if spec.adapter and lora_config(peft):
        raise InputError(f"{model} is a LoRA adapter: LoRA training (peft.enabled) starts from a full model; "
                         "merge the adapter into its base first")
    base = str(Path(spec.base).resolve()) if Path(spec.base).is_dir() else spec.base
    return load_causal_lm(ModelSpec(base, spec.adapter), "float32", to_device="cpu", train=True)


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def as_dataset(windows):
    """A `datasets.Dataset` whose only column is `input_ids`."""
    from datasets import Dataset

    if isinstance(windows, Dataset):
        return windows.select_columns(["input_ids"])
    return Dataset.from_dict({"input_ids": [list(map(int, w)) for w in windows]})


def check_launch() -> None:
    """Refuse the FSDP config without GPUs: accelerate shards only over GPUs and, given its config on CPU, trains
    unsharded without a word (data parallel under the trainer's CPU flag, else every process alone)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not torch.cuda.is_available():
        raise InputError("the FSDP config needs GPUs (accelerate shards only over them): on CPU launch with "
                         "--config_file recipes/accelerate/cpu-ddp.yaml")


def train_and_save(trainer, tokenizer, out: Path) -> Path:
    """Train, save a HF folder (an adapter folder for LoRA training) to OUT.partial, then rename it to OUT (so a
    folder at OUT is finished).
    Every process saves (FSDP gathers the weights); the main one renames."""
    tmp = partial_path(out)
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.train()
    trainer.save_model(str(tmp))
    trainer.save_state()  # trainer_state.json: the logged losses, kept with the checkpoint (main process only)
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp / f"checkpoint-{trainer.state.global_step}", ignore_errors=True)  # the same as OUT itself
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    trainer.accelerator.wait_for_everyone()
    return out


def finetune(model: str, windows, out: str | Path, *, epochs: float = 3, lr: float = 5e-5, batch_size: int = 8,
             seed: int = 0, scheduler: str = "cosine", warmup_steps: float = 0, weight_decay: float = 0.0,
             grad_accum: int = 1, checkpoints: bool = False, peft=None) -> Path:
    """Fine-tune `model` with CE on `windows` (lists of token ids or a Dataset with `input_ids`), in full or (`peft`
    enabled) as LoRA adapters; save a HF folder at `out`, which appears only when training has finished (with
    `checkpoints`, holding a checkpoint-STEP folder of every epoch but the last)."""
    from trl import SFTConfig, SFTTrainer

    out = Path(out)
    config = training_args(SFTConfig, out, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                           scheduler=scheduler, warmup_steps=warmup_steps, weight_decay=weight_decay,
                           grad_accum=grad_accum, checkpoints=checkpoints)
    tokenizer = load_tokenizer(model)
    trainer = SFTTrainer(model=load_trainee(model, peft), args=config, train_dataset=as_dataset(windows),
                         processing_class=tokenizer, peft_config=lora_config(peft))
    return train_and_save(trainer, tokenizer, out)
