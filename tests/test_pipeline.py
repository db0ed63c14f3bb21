"""`evalmem pipeline` on a minute-scale version of the offline default recipe (tiny-kjv): every stage runs
for real (TRL training, extraction, features, predictor, report), a kill -9 in the middle is continued
from the last finished stage, and bad recipes are refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import RECIPES

RECIPE = RECIPES / "tiny-kjv.yaml"


@pytest.fixture(scope="module")
def minute_scale(tiny, tmp_path_factory):
    """tiny-kjv's settings on the session's tiny models: the memorizing Llama as the teacher's base (so the
    teacher memorizes the 32 trained windows and not the 32 unseen ones), a smaller student, two epochs each
    (a checkpoint after the first: the series of teacher, soft and hard)."""
    from evalmem.tiny import build_model

    student = build_model(tmp_path_factory.mktemp("pipeline") / "student", tiny.tokenizer, hidden=64, layers=1,
                          heads=2, seed=1)
    return {"prepare.builder": None, "data.path": tiny.data, "data.heldout": tiny.data, "teacher.model": tiny.model,
            "teacher.epochs": 2, "teacher.lr": 1e-5, "student.model": student, "student.epochs": 2,
            "evaluate.engine": "hf", "evaluate.baseline_seeds": 2, "evaluate.trials": 5,
            "evaluate.predict_student": "teacher"}


def pipeline_args(out, settings, **changes):
    sets = [x for k, v in {**settings, **changes}.items() for x in ("--set", f"{k}={'null' if v is None else v}")]
    return ["pipeline", "--recipe", RECIPE, "--out", out, *sets]


@pytest.mark.slow
def test_pipeline_runs_every_stage_and_continues_after_kill(minute_scale, tmp_path, cli):
    from evalmem.recipe import load_recipe
    from evalmem.stages import baseline_seeds, final_stages, stages

    out = tmp_path / "exp"
    proc = subprocess.Popen([sys.executable, "-m", "evalmem", *map(str, pipeline_args(out, minute_scale))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not (out / "teacher").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the pipeline and the stage it is running
    proc.wait()
    assert (out / "teacher").exists() and not (out / "report.html").exists()
    teacher_weights = (out / "teacher" / "model.safetensors").stat().st_mtime_ns

    result = cli(*pipeline_args(out, minute_scale), "--jobs", 2)  # continued two stages at a time
    record = json.loads((out / "pipeline.json").read_text())
    recipe = load_recipe(out / "recipe.yaml")
    every = stages(recipe, out / "recipe.yaml") + final_stages(recipe, out / "recipe.yaml",
                                                                list(baseline_seeds(recipe)), predicted=True)
    expected = [s.name for s in every]
    assert list(record) == expected and "filter-effect" in expected and expected[-1] == "report"
    assert record["teacher"]["status"] == "done", "finished stages are skipped"
    assert all(record[name]["status"] == "ran" for name in expected[1:]), record
    assert (out / "teacher" / "model.safetensors").stat().st_mtime_ns == teacher_weights
    for stage in every:
        assert stage.done.exists(), stage.name
    risk = json.loads((out / "risk_filter.json").read_text())
    memorized = json.loads((out / "extract" / "teacher" / "summary.json").read_text())["exact_match_count"]
    for student in ("soft", "hard"):  # as many dropped as the predictor's labels (the teacher's) memorized
        assert risk[student]["dropped"] == risk[student]["random_control"]["dropped"] == memorized
        assert risk[student]["kept"] == 64 - memorized
    counts = json.loads((out / "dupcount" / "summary.json").read_text())
    assert counts["n_examples"] == 64
    assert "Risk filtering" in (out / "report.html").read_text()

    summary = json.loads((out / "extract" / "teacher" / "summary.json").read_text())
    assert 28 <= summary["exact_match_count"] <= 32 and summary["n_examples"] == 64, "it kept the trained windows"
    page = (out / "report.html").read_text()
    assert page.index("Summary (the paper") < page.index("<img"), "the report begins with the paper's table"
    for name in ("teacher", "baseline-seed0", "baseline-seed1", "soft", "hard"):
        assert f"<tr><td>{name}</td>" in page
    assert 'id="evx-data"' in page and "No tokenizer could be loaded" not in page  # the explorer, text decoded
    assert "predictor ROC-AUC" in page and "held-out perplexity" in page
    utility = json.loads((out / "utility.json").read_text())
    assert set(utility["models"]) == {"teacher", "baseline-seed0", "baseline-seed1", "soft", "hard"}
    assert "| teacher | teacher |" in result.stdout and "| sum (stages overlap with --jobs > 1) |" in result.stdout
    series = json.loads((out / "compare" / "compare.json").read_text())["series"]
    assert set(series) == {"teacher", "soft", "hard"} and all(len(points) == 2 for points in series.values())
    assert series["teacher"][1]["exact_match_count"] == summary["exact_match_count"]  # the last point: the model
    assert [p["epoch"] for p in series["teacher"]] == [1.0, 2.0] and "Memorization over training" in page
    assert not (out / "teacher" / f"checkpoint-{series['teacher'][1]['step']}").exists()  # the model itself

    again = cli(*pipeline_args(out, minute_scale))  # a finished pipeline does no work
    assert all(e["status"] == "done" for e in json.loads((out / "pipeline.json").read_text()).values())
    assert again.stdout.split("### Summary")[1] == result.stdout.split("### Summary")[1]


def test_prepare_builds_tokenizer_models_and_duplicated_windows(tmp_path):
    """tiny-kjv's first stage: a tokenizer, two pre-trained Llamas that load, training windows with the recorded
    duplication structure and disjoint held-out windows; the same seed gives the same windows and weights (what
    makes a rerun's memorized sets the same)."""
    from transformers import AutoModelForCausalLM

    from helpers import invoke_cli
    from train.cli import main as train_main

    def prepare(out):
        sizes = {"out": out, "prepare.train_windows": 40, "prepare.heldout_windows": 4,
                 "prepare.duplication.passages": 4, "prepare.duplication.max_copies": 8,
                 "prepare.pretrain_tokens": 1000, "prepare.teacher.hidden": 64, "prepare.teacher.heads": 2,
                 "prepare.teacher.layers": 1, "prepare.student.hidden": 64, "prepare.student.layers": 1}
        invoke_cli("prepare", "--recipe", RECIPE, *[x for k, v in sizes.items() for x in ("--set", f"{k}={v}")],
                   group=train_main)

    prepare(tmp_path)
    prepare(tmp_path / "again")
    for name in ("data/train.jsonl", "data/heldout.jsonl", "base/teacher/model.safetensors",
                 "base/student/model.safetensors"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    train = [json.loads(line) for line in (tmp_path / "data" / "train.jsonl").read_text().splitlines()]
    heldout = [json.loads(line) for line in (tmp_path / "data" / "heldout.jsonl").read_text().splitlines()]
    assert (len(train), len(heldout)) == (40, 4)
    assert not {r["id"] for r in train} & {r["id"] for r in heldout}
    windows = {r["id"]: r["input_ids"] for r in train}
    record = json.loads((tmp_path / "data" / "duplication.json").read_text())
    assert [p["copies"] for p in record["passages"]] == [8, 4, 3, 2]  # round(8 / rank**0.85), at least 2
    assert [p["kind"] for p in record["passages"]] == ["shifted", "near", "exact", "shifted"]  # the recipe's kinds
    exact = record["passages"][2]
    assert len({tuple(windows[i]) for i in exact["ids"]}) == 1, "exact copies are the same window"
    near = record["passages"][1]
    differing = [sum(a != b for a, b in zip(windows[near["ids"][0]], windows[i])) for i in near["ids"][1:]]
    assert max(differing) <= 3 and any(differing), "near copies are the original or differ in a few words"
    heldout_text = {tuple(r["input_ids"][i:i + 50]) for r in heldout for i in range(51)}
    assert not any(tuple(w[50:]) in heldout_text for w in windows.values()), "held-out text is other text"
    assert all(len(r["input_ids"]) == 100 for r in train + heldout)
    for role, layers in (("teacher", 1), ("student", 1)):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "base" / role)
        assert model.config.num_hidden_layers == layers and model.config.vocab_size == 2048
    assert json.loads((tmp_path / "base" / "prepared.json").read_text())["train_windows"] == 40


def test_bad_recipes_are_refused(minute_scale, tmp_path, invoke):
    result = invoke(*pipeline_args(tmp_path / "a", minute_scale, **{"teacher.colour": "blue"}), code=2)
    assert "unknown recipe key teacher.colour" in result.output and result.output.count("\n") == 1
    result = invoke(*pipeline_args(tmp_path / "b", minute_scale, **{"prepare.builder": "nonsense"}), code=1)
    assert "stage prepare failed: Error: unknown prepare.builder 'nonsense'" in result.output
    assert not (tmp_path / "b" / "base" / "prepared.json").exists()
    result = invoke(*pipeline_args(tmp_path / "b", minute_scale, **{"teacher.epochs": 3}), code=2)
    assert "holds a pipeline run with other settings (prepare, teacher)" in result.output


@pytest.mark.slow
def test_pipeline_carries_lora_adapters_through_every_stage(minute_scale, tmp_path, cli):
    """peft.enabled: every trained checkpoint is an adapter folder, and every later stage reads it as a model."""
    out = tmp_path / "lora"
    cli(*pipeline_args(out, minute_scale, **{"peft.enabled": True, "evaluate.baseline_seeds": 1}))
    for name, base in (("teacher", minute_scale["teacher.model"]), ("baseline-seed0", minute_scale["student.model"]),
                       ("soft", minute_scale["student.model"]), ("hard", minute_scale["student.model"])):
        config = json.loads((out / name / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(Path(base).resolve()), name
        assert not (out / name / "model.safetensors").exists(), name
        settings = json.loads((out / "extract" / name / "manifest.json").read_text())["settings"]
        assert settings["model"] == str(out / name) and "model_adapter_fingerprint" in settings, name
    summary = json.loads((out / "extract" / "teacher" / "summary.json").read_text())
    assert 28 <= summary["exact_match_count"] <= 32 and summary["adapter"] == {"applied": "peft"}
    assert "teacher_adapter_fingerprint" in json.loads((out / "features" / "manifest.json").read_text())["settings"]
    assert set(json.loads((out / "utility.json").read_text())["models"]) == {"teacher", "baseline-seed0", "soft",
                                                                             "hard"}
    assert (out / "report.html").exists()


STAND_IN = '''"""A stage for the scheduler's tests: note its start and end times, sleep, then write its done file."""
import os, sys, time
name, seconds, done = sys.argv[1], float(sys.argv[2]), sys.argv[3]
with open(done + ".times", "w") as f:
    f.write(f"{time.time()} ")
    time.sleep(seconds)
    if name.startswith("fail"):
        print("Error: planted failure"), sys.exit(2)
    f.write(f"{time.time()} {os.environ.get('OMP_NUM_THREADS')}")
open(done, "w").close()
'''


def stand_ins(tmp_path, monkeypatch, plan):
    """Stages running the stand-in command above: plan = {name: (seconds, after)}."""
    from evalmem.stages import Stage

    (tmp_path / "standin.py").write_text(STAND_IN)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return [Stage(n, ["standin", n, str(sec), str(tmp_path / n)], tmp_path / n, after=after)
            for n, (sec, after) in plan.items()]


def times(tmp_path, name):
    start, end, threads = (tmp_path / f"{name}.times").read_text().split()
    return float(start), float(end), threads


def test_stages_run_at_once_where_independent_and_after_what_they_read(tmp_path, monkeypatch):
    from evalmem.pipeline import run_stages

    found = stand_ins(tmp_path, monkeypatch, {"a": (1.0, []), "b": (1.0, []), "c": (0.1, ["a", "b"]),
                                              "d": (0.1, ["a"])})
    record = {}
    run_stages(found, 2, tmp_path, {}, record, lambda: None)
    assert set(record) == {"a", "b", "c", "d"} and all(e["status"] == "ran" for e in record.values())
    (a0, a1, threads), (b0, b1, _) = times(tmp_path, "a"), times(tmp_path, "b")
    assert a0 < b1 and b0 < a1, "a and b overlapped"
    assert times(tmp_path, "c")[0] >= max(a1, b1) and times(tmp_path, "d")[0] >= a1
    assert threads == str(max(1, (os.cpu_count() or 1) // 2))
    record = {}
    run_stages(found, 2, tmp_path, {"a": {"seconds": 7.0}}, record, lambda: None)
    assert record["a"] == {"seconds": 7.0, "status": "done"}, "finished stages are skipped"


def test_a_failed_stage_stops_the_running_ones(tmp_path, monkeypatch):
    from evalmem.pipeline import StageFailed, run_stages

    found = stand_ins(tmp_path, monkeypatch, {"slow": (30.0, []), "fail": (0.5, []), "later": (0.1, ["fail"])})
    record = {}
    with pytest.raises(StageFailed, match=r"^stage fail failed: Error: planted failure \(log: .*fail.log\)$"):
        run_stages(found, 2, tmp_path, {}, record, lambda: None)
    assert not (tmp_path / "slow").exists() and not (tmp_path / "later").exists()
    assert record == {}
