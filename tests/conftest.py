"""Session fixtures: a tiny Llama with a locally trained tokenizer, fine-tuned (real TRL SFTTrainer)
until most of 32 KJV windows are memorized, plus 32 windows it never saw. Nothing is downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

PREFIX, SUFFIX = 50, 50


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Tokenizer, base model, memorizing model and data files (about a minute on 2 cores)."""
    from evalmem.tiny import build_model, kjv_verses, token_windows, train_tokenizer
    from train.finetune import finetune

    root = tmp_path_factory.mktemp("tiny")
    verses = kjv_verses()
    tokenizer = train_tokenizer(verses[:5000], root / "tokenizer", vocab_size=2048)
    base = build_model(root / "base", tokenizer, hidden=128, layers=4)
    windows = token_windows(verses[:3000], tokenizer, PREFIX + SUFFIX)
    trained, unseen = windows[:32], windows[32:64]
    memorized = finetune(str(base), trained, root / "memorized", epochs=80, lr=3e-3, batch_size=16,
                         scheduler="constant")
    data = write_jsonl(root / "windows.jsonl",
                       [{"id": f"w{i}", "input_ids": ids} for i, ids in enumerate(trained + unseen)])
    return SimpleNamespace(root=root, tokenizer=tokenizer, base=str(base), model=str(memorized),
                           trained=trained, unseen=unseen, data=str(data))


def run_cli(*args, check=True, **kwargs):
    """Run `python -m evalmem ARGS` in a subprocess (for exit codes, stderr and kill tests)."""
    proc = subprocess.run([sys.executable, "-m", "evalmem", *map(str, args)], capture_output=True, text=True,
                          **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"evalmem {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture
def cli():
    return run_cli


def invoke_cli(*args, code=0):
    """Run `evalmem ARGS` in this process (reusing the session's vLLM engine); check the exit code."""
    from click.testing import CliRunner

    from evalmem.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exit_code != code:
        raise AssertionError(f"evalmem {' '.join(map(str, args))}: exit {result.exit_code} != {code}\n"
                             f"{result.output[-3000:]}\n{result.exception!r}")
    return result


@pytest.fixture
def invoke():
    return invoke_cli
