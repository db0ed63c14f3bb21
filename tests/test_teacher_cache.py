"""The teacher-logit cache (`evalmem teacher-cache`): the top-k KL with its tail bucket against the full KL, a cache
killed mid-write resumes to the same values, another teacher's or other data's cache is refused, and soft KD from the
cache at k = vocabulary size trains as online soft KD does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from helpers import RECIPES, invoke_cli, one_line_error

from evalmem.teacher_cache import bucketed_kl, open_cache, top_k
from evalmem.tiny import write_jsonl
from train.distill_soft import soft_kd_loss, topk_kd_loss

VOCAB = 2048  # the tiny tokenizer's
CACHE_ARGS = ["--window-len", 100, "--batch-size", 1, "--shard-size", 2]


def random_logits(seed: int, shape=(3, 7, 50)) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student logits with spread like a trained model's (scale 4)."""
    g = torch.Generator().manual_seed(seed)
    return 4 * torch.randn(shape, generator=g), 4 * torch.randn(shape, generator=g)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_kl_at_full_vocabulary_equals_full_kl(temperature):
    teacher, student = random_logits(0)
    labels = torch.tensor([[1] * 6 + [-100]] * 3)
    cached = top_k(teacher, teacher.shape[-1])
    assert torch.isneginf(cached[2]).all()
    full = soft_kd_loss(student, teacher, labels, temperature)
    assert topk_kd_loss(student, *cached, labels, temperature).item() == pytest.approx(full.item(), rel=1e-5)
    full = soft_kd_loss(student, teacher, labels, temperature, num_items_in_batch=30)
    got = topk_kd_loss(student, *cached, labels, temperature, num_items_in_batch=30)
    assert got.item() == pytest.approx(full.item(), rel=1e-5)
    grads = [torch.autograd.grad(loss(student.requires_grad_(), *teacher_side, labels, temperature), student)[0]
             for loss, teacher_side in ((soft_kd_loss, (teacher,)), (topk_kd_loss, cached))]
    assert torch.allclose(grads[1], grads[0], rtol=1e-4, atol=1e-5 * grads[0].abs().max().item())


@pytest.mark.parametrize("k", [1, 5, 25, 49])
def test_topk_kl_bounds_full_kl_at_temperature_one(k):
    """At T = 1 the k + 1 buckets are a coarsening of the vocabulary: the KL is at most the full KL, position by
    position, and the tail's mass is what the top-k leaves."""
    teacher, student = random_logits(k)
    ids, logp, tail = top_k(teacher, k)
    assert torch.allclose(torch.cat([logp, tail[..., None]], -1).logsumexp(-1), torch.zeros(3, 7), atol=1e-6)
    full = torch.nn.functional.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True,
                                      reduction="none").sum(-1)
    bucketed = bucketed_kl(student, ids, logp, tail)
    assert (bucketed <= full * (1 + 1e-5) + 1e-6).all() and (bucketed >= -1e-6).all()
    assert (bucketed < full).any()


def test_cache_holds_the_teachers_top_k(tiny, tmp_path, invoke):
    invoke("teacher-cache", "--model", tiny.model, "--data", tiny.data, "--limit", 4, "--k", 8, *CACHE_ARGS,
           "--out", tmp_path / "c")
    cache = open_cache(tmp_path / "c", tiny.model)
    windows = torch.tensor(tiny.trained[:4])
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        logp = AutoModelForCausalLM.from_pretrained(tiny.model)(windows).logits[:, :-1].log_softmax(-1)
    ids, values, tail = cache.lookup(windows)
    assert ids.shape == (4, 99, 8) and tail.shape == (4, 99)
    assert torch.allclose(logp.gather(-1, ids), values, atol=1e-5)
    assert (values[..., :-1] >= values[..., 1:]).all()
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["k"] == 8 and summary["vocab_size"] == VOCAB and summary["bytes_per_position"] > 0


def shard_tables(out) -> list:
    return [pq.read_table(p).replace_schema_metadata(None) for p in sorted((out / "shards").glob("*.parquet"))]


@pytest.mark.slow
def test_cache_killed_mid_write_resumes_to_the_same_values(tiny, tmp_path, invoke):
    """SIGKILL once the first of 6 shards is on disk; the rerun's shards and results equal an uninterrupted
    run's, value for value (the footers differ only by their timings)."""
    args = ["teacher-cache", "--model", tiny.model, "--data", tiny.data, "--limit", 12, "--k", 16, *CACHE_ARGS]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    invoke(*args, "--out", whole)
    proc = subprocess.Popen([sys.executable, "-m", "evalmem", *map(str, args), "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not any((killed / "shards").glob("*.parquet")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    assert 1 <= len(list((killed / "shards").glob("*.parquet"))) < 6
    invoke(*args, "--out", killed)
    assert all(a.equals(b) for a, b in zip(shard_tables(killed), shard_tables(whole), strict=True))
    results = [pq.read_table(d / "results.parquet").replace_schema_metadata(None) for d in (killed, whole)]
    assert results[0].equals(results[1])


@pytest.mark.parametrize("args, words", [
    (["--k", 0], ["--k", "x>=1"]),
    (["--k", VOCAB + 1], ["--k 2049 exceeds the vocabulary", "2048 tokens"]),
    (["--data", "missing.jsonl"], ["missing.jsonl"]),
    (["--window-len", 4096], ["exceeds the model's context"])])
def test_bad_input_is_one_line(tiny, tmp_path, args, words):
    from helpers import run_cli

    base = {"--model": tiny.model, "--data": tiny.data, "--k": 8, "--window-len": 100}
    base.update(dict(zip(args[::2], args[1::2])))
    proc = run_cli("teacher-cache", *[x for kv in base.items() for x in kv], "--out", tmp_path / "c", check=False,
                   cwd=tmp_path)
    assert proc.returncode == 2
    one_line_error(proc.stderr, *words)


def train_cli(*args, code=0):
    from train.cli import main

    return invoke_cli(*args, code=code, group=main)


@pytest.fixture(scope="module")
def soft(tiny, tmp_path_factory):
    """A smaller student, 8 training windows, the teacher's caches of them at k = V and k = 16, and the online soft
    student of one epoch."""
    from evalmem.tiny import build_model

    root = tmp_path_factory.mktemp("soft")
    student = build_model(root / "student", tiny.tokenizer, hidden=64, layers=2, heads=2, seed=1)
    few = write_jsonl(root / "few.jsonl", [{"id": f"w{i}", "input_ids": ids} for i, ids in enumerate(tiny.trained[:8])])
    for k in (VOCAB, 16):
        invoke_cli("teacher-cache", "--model", tiny.model, "--data", few, "--k", k, "--window-len", 100,
                   "--out", root / f"cache-{k}")
    made = SimpleNamespace(tiny=tiny, root=root, student=str(student), few=str(few))
    train_cli("distill-soft", *recipe_args(made, root / "online"))
    return made


def recipe_args(soft, out, data=None):
    values = {"data.path": data or soft.few, "student.model": soft.student, "soft.teacher": soft.tiny.model,
              "student.epochs": 1, "student.batch_size": 2}
    return ["--recipe", RECIPES / "tiny.yaml", *[x for k, v in values.items() for x in ("--set", f"{k}={v}")],
            "--out", out]


def losses(checkpoint) -> list[float]:
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry] + [history[-1]["train_loss"]]


def test_distill_soft_from_cache_equals_online_at_full_vocabulary(soft, tmp_path):
    train_cli("distill-soft", *recipe_args(soft, tmp_path / "cached"), "--teacher-cache", soft.root / f"cache-{VOCAB}")
    assert losses(tmp_path / "cached") == pytest.approx(losses(soft.root / "online"), rel=1e-5)
    cached, online, start = (load_file(path / "model.safetensors") for path in
                             (tmp_path / "cached", soft.root / "online", soft.root / "student"))
    # Adam's step is about lr for any gradient near zero, so float rounding there moves a weight by a fraction of
    # a step: each tensor's difference is measured against what training changed in it
    assert max((cached[k] - online[k]).norm() / (online[k] - start[k]).norm() for k in online) < 1e-3


def test_distill_soft_from_top_k_cache_trains_a_subset(soft, tmp_path):
    """k = 16: another loss (the tail of 2,032 tokens is one bucket); a subset of the cached windows (as the
    risk-filtered students train on) finds its rows by window, wherever they are in the cache."""
    train_cli("distill-soft", *recipe_args(soft, tmp_path / "k16"), "--teacher-cache", soft.root / "cache-16")
    got, online = losses(tmp_path / "k16"), losses(soft.root / "online")
    assert got != online and all(0 < loss < float("inf") for loss in got)
    subset = write_jsonl(tmp_path / "kept.jsonl", [{"id": f"w{i}", "input_ids": soft.tiny.trained[i]}
                                                   for i in (6, 2, 5, 0)])
    train_cli("distill-soft", *recipe_args(soft, tmp_path / "kept", subset), "--teacher-cache", soft.root / "cache-16")
    assert (tmp_path / "kept" / "model.safetensors").exists()


def test_cache_of_other_data_or_teacher_is_refused(soft, tmp_path):
    other = write_jsonl(tmp_path / "other.jsonl", [{"id": f"u{i}", "input_ids": ids}
                                                   for i, ids in enumerate(soft.tiny.unseen[:4])])
    result = train_cli("distill-soft", *recipe_args(soft, tmp_path / "a", other), "--teacher-cache",
                       soft.root / "cache-16", code=2)
    one_line_error(result.output, "4 of 4 windows are not in the teacher cache")
    invoke_cli("teacher-cache", "--model", soft.tiny.base, "--data", soft.few, "--k", 16, "--window-len", 100,
               "--out", tmp_path / "base-cache")
    result = train_cli("distill-soft", *recipe_args(soft, tmp_path / "b"), "--teacher-cache", tmp_path / "base-cache",
                       code=2)
    one_line_error(result.output, "computed with another teacher", soft.tiny.base)
    result = train_cli("distill-soft", *recipe_args(soft, tmp_path / "c"), "--teacher-cache", tmp_path / "none",
                       code=2)
    one_line_error(result.output, "is not a finished teacher cache")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_pipeline_computes_the_cache_once_and_every_soft_student_reads_it(tmp_path):
    from test_stages import all_stages, parses

    from evalmem.recipe import load_recipe

    recipe = load_recipe(RECIPES / "tiny-kjv.yaml", [f"out={tmp_path}", "soft.teacher_cache=true", "soft.cache_k=16"])
    found = {stage.name: stage for stage in all_stages(recipe)}
    names = list(found)
    for stage in found.values():
        parses(stage.argv)
    cache = found["teacher-cache"]
    assert names.index("teacher") < names.index("teacher-cache") < names.index("soft")
    assert cache.argv[cache.argv.index("--k") + 1] == "16" and cache.done == tmp_path / "teacher-cache" / "summary.json"
    readers = {name for name, stage in found.items() if "--teacher-cache" in stage.argv}
    assert readers == {"soft", "soft-filtered", "soft-random", "features"}
    assert all(found[n].argv[found[n].argv.index("--teacher-cache") + 1] == str(tmp_path / "teacher-cache")
               for n in readers)
    off = load_recipe(RECIPES / "tiny-kjv.yaml", [f"out={tmp_path}"])
    assert not any("--teacher-cache" in s.argv or s.name == "teacher-cache" for s in all_stages(off))


def test_recipe_refuses_a_cache_k_below_one(tmp_path):
    from evalmem.errors import InputError
    from evalmem.recipe import load_recipe

    with pytest.raises(InputError, match="soft.cache_k must be positive"):
        load_recipe(RECIPES / "tiny-kjv.yaml", [f"out={tmp_path}", "soft.cache_k=0"])


def test_features_kl_from_cache_at_full_vocabulary_equals_online(soft, tmp_path, invoke):
    """k = V: the cache's KL is the full KL; the other features do not change."""
    args = ["features", "--teacher", soft.tiny.model, "--baseline", soft.student, "--data", soft.few]
    invoke(*args, "--out", tmp_path / "online")
    invoke(*args, "--teacher-cache", soft.root / f"cache-{VOCAB}", "--out", tmp_path / "cached")
    online, cached = (pq.read_table(tmp_path / d / "features.parquet").to_pydict() for d in ("online", "cached"))
    assert cached["kl_teacher_baseline"] == pytest.approx(online["kl_teacher_baseline"], rel=1e-5)
    assert cached["teacher_ppl"] == online["teacher_ppl"]
    invoke(*args, "--teacher-cache", soft.root / "cache-16", "--out", tmp_path / "k16")
    k16 = pq.read_table(tmp_path / "k16" / "features.parquet").to_pydict()["kl_teacher_baseline"]
    assert all(0 <= a <= b * (1 + 1e-5) for a, b in zip(k16, online["kl_teacher_baseline"], strict=True))
    result = invoke(*args, "--suffix-len", 40, "--teacher-cache", soft.root / "cache-16", "--out", tmp_path / "x",
                    code=2)
    one_line_error(result.output, "holds windows of 100 tokens", "= 90")


def test_pipeline_saved_before_the_cache_keys_continues(tmp_path):
    """A pipeline folder whose recipe.yaml predates soft.teacher_cache reads it as its default, not a change."""
    from evalmem.pipeline import resolve

    resolve(RECIPES / "tiny-kjv.yaml", str(tmp_path), ())
    saved = tmp_path / "recipe.yaml"
    saved.write_text("".join(line for line in saved.read_text().splitlines(keepends=True)
                             if "teacher_cache" not in line and "cache_k" not in line))
    assert resolve(RECIPES / "tiny-kjv.yaml", str(tmp_path), ())[0].soft.cache_k == 64
    with pytest.raises(Exception, match=r"other settings \(soft\)"):
        resolve(RECIPES / "tiny-kjv.yaml", str(tmp_path), ("soft.teacher_cache=true",))
