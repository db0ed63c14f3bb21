"""Full fine-tuning with cross-entropy on pre-tokenized training windows (TRL `SFTTrainer`).

The trainer is fed the exact `input_ids` windows, so what is trained is what extraction tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch


def device_flags() -> dict:
    """TRL configs default to GPU settings; pick them per device."""
    cuda = torch.cuda.is_available()
    return {"use_cpu": not cuda, "bf16": cuda and torch.cuda.is_bf16_supported(), "fp16": False,
            "gradient_checkpointing": False, "report_to": [], "save_strategy": "no", "logging_steps": 10,
            "disable_tqdm": True}


def finetune(model: str, windows: list[list[int]], out: str | Path, *, epochs: float = 3, lr: float = 5e-5,
             batch_size: int = 8, seed: int = 0, scheduler: str = "cosine", warmup_steps: float = 0,
             weight_decay: float = 0.0) -> Path:
    """Fine-tune `model` on `windows` (lists of token ids); save a plain HF folder at `out`.
    The folder appears only when training has finished (written beside it, then renamed)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    config = SFTConfig(output_dir=str(tmp), num_train_epochs=epochs, learning_rate=lr,
                       per_device_train_batch_size=batch_size, seed=seed, data_seed=seed,
                       lr_scheduler_type=scheduler, warmup_steps=warmup_steps, weight_decay=weight_decay,
                       **device_flags())
    tokenizer = AutoTokenizer.from_pretrained(model)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model), args=config,
                         train_dataset=Dataset.from_dict({"input_ids": windows}), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
