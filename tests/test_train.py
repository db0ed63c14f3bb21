"""The trainers (`evalmem-train`): soft-KD loss by hand, fine-tuning to memorization, soft and hard
distillation on tiny local models, the same three in two processes (`accelerate launch`, DDP on the CPU), and bad
inputs (exit 2, one line, no finished checkpoint)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from helpers import RECIPES, free_port, invoke_cli

from evalmem.tiny import write_jsonl
from train.distill_soft import soft_kd_loss

RECIPE = RECIPES / "tiny.yaml"
TRAINERS = {"teacher": ["finetune", "--run", "teacher"], "soft": ["distill-soft"], "hard": ["distill-hard"]}
HALF_BATCH = {"teacher.batch_size": 4, "student.batch_size": 2}  # the tiny recipe's 8 and 4, in two halves
ACCUMULATE = {**HALF_BATCH, "teacher.grad_accum": 2, "student.grad_accum": 2}


def train_cli(*args, code=0):
    """Run `evalmem-train ARGS` in this process; check the exit code."""
    from train.cli import main

    return invoke_cli(*args, code=code, group=main)


def recipe_args(setup, out, **sets):
    """The tiny recipe with this session's models and data."""
    values = {"data.path": setup.few, "teacher.model": setup.tiny.base, "student.model": setup.student,
              "soft.teacher": setup.tiny.model, "hard.corpus": setup.corpus, "out": out, **sets}
    return ["--recipe", RECIPE, *[x for k, v in values.items() for x in ("--set", f"{k}={v}")]]


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
    """A smaller student with the teacher's tokenizer (heads of 32 dimensions, the least vLLM on CPU runs); 8
    training windows; the teacher's corpus on them."""
    from evalmem.tiny import build_model

    from helpers import invoke_cli  # the in-process CLI of the tests

    root = tmp_path_factory.mktemp("train")
    student = build_model(root / "student", tiny.tokenizer, hidden=64, layers=2, heads=2, seed=1)
    few = write_jsonl(root / "few.jsonl", [{"id": f"w{i}", "input_ids": ids} for i, ids in enumerate(tiny.trained[:8])])
    invoke_cli("generate", "--model", tiny.model, "--data", few, "--prefix-len", 50, "--max-new-tokens", 50,
               "--out", root / "corpus")
    return SimpleNamespace(tiny=tiny, root=root, student=str(student), few=str(few), corpus=root / "corpus")


@pytest.fixture(scope="module")
def single(setup, tmp_path_factory):
    """The tiny recipe's teacher (finetune), soft and hard students, each trained in this one process; every
    global batch in two halves (gradient accumulation), as two processes train it."""
    out = tmp_path_factory.mktemp("single")
    for args in TRAINERS.values():
        train_cli(*args, *recipe_args(setup, out, **ACCUMULATE))
    return out


def logits(model_dir, windows):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(torch.tensor(windows)).logits


def mean_kl(teacher, student, windows) -> float:
    """KL(teacher ‖ student) per position at T = 1, averaged over every next-token position."""
    ids = torch.tensor(windows)
    return float(soft_kd_loss(logits(student, windows)[:, :-1], logits(teacher, windows)[:, :-1], ids[:, 1:], 1.0))


def mean_ce(model_dir, windows) -> float:
    ids = torch.tensor(windows)
    return float(torch.nn.functional.cross_entropy(logits(model_dir, windows)[:, :-1].flatten(0, 1),
                                                   ids[:, 1:].flatten()))


def test_soft_kd_loss_is_t2_scaled_kl_by_hand():
    t, temperature = 2.0, 2.0
    student = [[[1.0, -1.0], [0.5, 2.0], [3.0, 0.0]]]
    teacher = [[[2.0, 0.0], [-1.0, 1.0], [0.0, 0.0]]]
    labels = torch.tensor([[7, 7, -100]])  # the third position is masked out

    def softmax(z):
        e = [math.exp(x / t) for x in z]
        return [x / sum(e) for x in e]

    kls = []
    for s, q in zip(student[0][:2], teacher[0][:2]):
        p_s, p_t = softmax(s), softmax(q)
        kls.append(sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s)))
    expected = t * t * sum(kls) / len(kls)
    got = soft_kd_loss(torch.tensor(student), torch.tensor(teacher), labels, temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0
    # gradient accumulation normalizes by the token count over all micro-batches
    got = soft_kd_loss(torch.tensor(student), torch.tensor(teacher), labels, temperature, num_items_in_batch=4)
    assert got.item() == pytest.approx(t * t * sum(kls) / 4, rel=1e-5)


def test_finetune_makes_windows_memorized(setup, single, tmp_path, invoke):
    teacher = single / "teacher"
    assert (teacher / "config.json").exists() and not (single / "teacher.partial").exists()
    assert [entry["step"] for entry in log_history(teacher) if "loss" in entry] == list(range(10, 81, 10))
    data = write_jsonl(tmp_path / "check.jsonl", [{"id": f"t{i}", "input_ids": ids} for i, ids in
                                                  enumerate(setup.tiny.trained[:8] + setup.tiny.unseen[:8])])
    invoke("extract", "--model", teacher, "--data", data, "--out", tmp_path / "extract")
    rows = pq.read_table(tmp_path / "extract" / "results.parquet").to_pydict()
    memorized = dict(zip(rows["example_id"], rows["exact_match"]))
    assert sum(memorized[f"t{i}"] for i in range(8)) >= 7
    assert sum(memorized[f"t{i}"] for i in range(8, 16)) == 0


def test_baseline_seeds_differ(setup, tmp_path):
    for seed in (1, 2):
        train_cli("finetune", "--run", "baseline", "--seed", seed,
                  *recipe_args(setup, tmp_path, **{"student.epochs": 1}))
    one, two = (logits(tmp_path / f"baseline-seed{s}", setup.tiny.trained[:2]) for s in (1, 2))
    assert not torch.allclose(one, two)


def test_soft_distillation_lowers_kl(setup, single):
    windows = setup.tiny.trained[:8]
    before = mean_kl(setup.tiny.model, setup.student, windows)
    after = mean_kl(setup.tiny.model, single / "soft", windows)
    assert after < 0.8 * before


def teacher_text(setup) -> list:
    import datasets

    corpus = datasets.load_dataset("parquet", data_files=str(setup.corpus / "results.parquet"), split="train")
    return list(corpus["input_ids"])


def test_hard_distillation_trains_on_teacher_text(setup, single):
    text = teacher_text(setup)
    assert [row[:50] for row in text] == [w[:50] for w in setup.tiny.trained[:8]]
    assert mean_ce(single / "hard", text) < 0.8 * mean_ce(setup.student, text)


def log_history(checkpoint) -> list[dict]:
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text())["log_history"]


def final_loss(setup, run, checkpoint) -> float:
    """What the run minimizes, on its training data, after training."""
    if run == "soft":
        return mean_kl(setup.tiny.model, checkpoint, setup.tiny.trained[:8])
    return mean_ce(checkpoint, setup.tiny.trained[:8] if run == "teacher" else teacher_text(setup))


@pytest.mark.slow
@pytest.mark.parametrize("run", TRAINERS)
def test_two_processes_train_as_one(setup, single, tmp_path, invoke, run):
    """`accelerate launch` of 2 processes (recipes/accelerate/cpu-ddp.yaml: DDP over gloo), each with half of every
    global batch, against one process that accumulates the same two halves: the same logged losses and weights
    (to 1e-5: only where gloo sums the gradients differs), and the checkpoint loads in vLLM (the teacher's
    reproduces its windows). (Against one process with whole batches the losses drift apart after ~30 steps of
    memorization at lr 3e-3, as they do between whole and accumulated batches in one process: summation order.)"""
    launch = [Path(sys.executable).with_name("accelerate"), "launch", "--config_file",
              RECIPES / "accelerate" / "cpu-ddp.yaml", "--main_process_port", free_port(), "-m", "train"]
    proc = subprocess.run([str(a) for a in launch + TRAINERS[run] + recipe_args(setup, tmp_path, **HALF_BATCH)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two, one = tmp_path / run, single / run
    losses = [[entry["loss"] for entry in log_history(path) if "loss" in entry] for path in (two, one)]
    assert len(losses[0]) >= 2 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert final_loss(setup, run, two) == pytest.approx(final_loss(setup, run, one), rel=1e-5)
    weights = [load_file(path / "model.safetensors") for path in (two, one)]
    assert max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[1]) < 1e-5
    invoke("extract", "--model", two, "--data", setup.few, "--engine", "vllm", "--out", tmp_path / "extract")
    exact = pq.read_table(tmp_path / "extract" / "results.parquet").column("exact_match").to_pylist()
    assert len(exact) == 8 and (run != "teacher" or sum(exact) >= 7)


def bad_corpus(setup, tmp_path, change) -> Path:
    table = pq.read_table(setup.corpus / "results.parquet").to_pydict()
    change(table)
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(table), path)
    return path


def flip_prefix_token(table):
    table["input_ids"][3][10] = (table["input_ids"][3][10] + 1) % 100


def drop_rows(table):
    for column in table.values():
        del column[5:]


def cut_continuation(table):
    table["input_ids"] = [row[:80] for row in table["input_ids"]]


@pytest.mark.parametrize("change, message", [(flip_prefix_token, "does not start with"),
                                             (drop_rows, "of the 8 training windows"),
                                             (cut_continuation, "window length of 100")])
def test_bad_corpus_is_refused(setup, tmp_path, change, message):
    path = bad_corpus(setup, tmp_path, change)
    result = train_cli("distill-hard", *recipe_args(setup, tmp_path, **{"hard.corpus": path}), code=2)
    assert_one_line_error(result, message)
    assert not (tmp_path / "hard").exists() and not (tmp_path / "hard.partial").exists()


def assert_one_line_error(result, message):
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], result.output


def test_vocabulary_mismatch_is_refused_before_training(setup, tmp_path):
    from evalmem.tiny import build_model, kjv_verses, train_tokenizer

    other = train_tokenizer(kjv_verses()[20000:22000], tmp_path / "tok", vocab_size=1024)
    student = build_model(tmp_path / "other", other, hidden=64, layers=2)
    result = train_cli("distill-soft", *recipe_args(setup, tmp_path, **{"student.model": student}), code=2)
    assert_one_line_error(result, "different tokenizers")
    assert not (tmp_path / "soft").exists() and not (tmp_path / "soft.partial").exists()


def test_window_longer_than_context_is_refused(setup, tmp_path):
    long = write_jsonl(tmp_path / "long.jsonl", [{"input_ids": list(range(600))}])
    args = recipe_args(setup, tmp_path, **{"data.path": long, "data.window_len": 600})
    result = train_cli("finetune", "--run", "teacher", *args, code=2)
    assert_one_line_error(result, "exceeds the context")
    assert not (tmp_path / "teacher").exists()


def adapter_base(folder) -> str:
    assert not (Path(folder) / "model.safetensors").exists(), "an adapter folder, not a full model"
    return json.loads((Path(folder) / "adapter_config.json").read_text())["base_model_name_or_path"]


def test_lora_soft_student_of_a_lora_teacher_trains_and_extracts(setup, lora, tmp_path, invoke):
    """peft.enabled: distill-soft trains LoRA adapters on the student (its teacher itself an adapter) into an
    adapter folder naming the student's base; the KL to the teacher falls, and extract reads the folder."""
    windows = setup.tiny.trained[:8]
    before = mean_kl(lora.adapter, setup.student, windows)
    train_cli("distill-soft", *recipe_args(setup, tmp_path, **{"peft.enabled": True, "student.lr": 1e-2,
                                                               "soft.teacher": lora.adapter}))
    soft = tmp_path / "soft"
    assert adapter_base(soft) == str(Path(setup.student).resolve())
    assert mean_kl(lora.adapter, soft, windows) < 0.95 * before  # LoRA on a random student: slower than full
    summary = json.loads(invoke("extract", "--model", soft, "--data", setup.few, "--engine", "hf", "--out",
                                tmp_path / "extract").stdout)
    assert summary["n_examples"] == 8 and summary["adapter"] == {"applied": "peft"}
    settings = json.loads((tmp_path / "extract" / "manifest.json").read_text())["settings"]
    assert settings["model_base"] == adapter_base(soft) and "model_adapter_fingerprint" in settings


def test_lora_finetune_and_hard_distillation_write_adapters(setup, tmp_path):
    lora_args = {"peft.enabled": True, "peft.r": 4, "peft.target_modules": "[q_proj,v_proj]", "student.epochs": 1}
    train_cli("finetune", "--run", "baseline", "--seed", 1, *recipe_args(setup, tmp_path, **lora_args))
    train_cli("distill-hard", *recipe_args(setup, tmp_path, **{**lora_args, "hard.corpus": setup.corpus}))
    for name in ("baseline-seed1", "hard"):
        config = json.loads((tmp_path / name / "adapter_config.json").read_text())
        assert adapter_base(tmp_path / name) == str(Path(setup.student).resolve())
        assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    result = train_cli("finetune", "--run", "baseline", "--seed", 2,
                       *recipe_args(setup, tmp_path, **{**lora_args, "student.model": tmp_path / "hard"}), code=2)
    assert_one_line_error(result, "is a LoRA adapter: LoRA training (peft.enabled) starts from a full model")
    assert not (tmp_path / "baseline-seed2").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP runs where there are GPUs")
def test_fsdp_launch_without_gpus_is_refused(setup, tmp_path, monkeypatch):
    """`accelerate launch --config_file recipes/accelerate/fsdp.yaml` sets ACCELERATE_USE_FSDP; without GPUs
    accelerate would train unsharded under it."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    result = train_cli("finetune", "--run", "teacher", *recipe_args(setup, tmp_path), code=2)
    assert_one_line_error(result, "the FSDP config needs GPUs")
    assert not (tmp_path / "teacher").exists()
