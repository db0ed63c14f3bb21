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

import yaml

RECIPE = Path(__file__).resolve().parents[1] / "train" / "recipes" / "tiny-kjv.yaml"
MINUTE_SCALE = {  # small models, few windows, few epochs; the teacher memorizes some windows, not all
    "prepare.train_windows": 24, "prepare.heldout_windows": 8, "prepare.pretrain_tokens": 4000,
    "prepare.teacher.hidden": 128, "prepare.teacher.layers": 2, "prepare.student.hidden": 64,
    "prepare.student.layers": 1, "teacher.epochs": 30, "teacher.lr": 3e-3, "student.epochs": 2,
    "evaluate.engine": "hf", "evaluate.baseline_seeds": 2, "evaluate.trials": 5, "evaluate.predict_student": "teacher",
}


def pipeline_args(out, **changes):
    sets = [x for k, v in {**MINUTE_SCALE, **changes}.items() for x in ("--set", f"{k}={v}")]
    return ["pipeline", "--recipe", RECIPE, "--out", out, *sets]


def test_pipeline_runs_every_stage_and_continues_after_kill(tmp_path, cli):
    from evalmem.pipeline import stages

    out = tmp_path / "exp"
    proc = subprocess.Popen([sys.executable, "-m", "evalmem", *map(str, pipeline_args(out))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not (out / "teacher").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the pipeline and the stage it is running
    proc.wait()
    assert (out / "teacher").exists() and not (out / "report.html").exists()
    teacher_weights = (out / "teacher" / "model.safetensors").stat().st_mtime_ns

    result = cli(*pipeline_args(out))
    record = json.loads((out / "pipeline.json").read_text())
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    expected = [s.name for s in stages(recipe, out / "recipe.yaml")] + ["report"]
    assert list(record) == expected
    assert record["prepare"]["status"] == record["teacher"]["status"] == "done", "finished stages are skipped"
    assert all(record[name]["status"] == "ran" for name in expected[2:]), record
    assert (out / "teacher" / "model.safetensors").stat().st_mtime_ns == teacher_weights
    for stage in stages(recipe, out / "recipe.yaml"):
        assert stage.done.exists(), stage.name

    summary = json.loads((out / "extract" / "teacher" / "summary.json").read_text())
    assert 0 < summary["exact_match_count"] < summary["n_examples"], "the teacher memorizes some windows, not all"
    page = (out / "report.html").read_text()
    assert page.rindex("Summary (the paper") > page.rindex("<img"), "the report ends with the paper's table"
    for name in ("teacher", "baseline-seed0", "baseline-seed1", "soft", "hard"):
        assert f"<tr><td>{name}</td>" in page
    assert "predictor ROC-AUC" in page and "held-out perplexity" in page
    utility = json.loads((out / "utility.json").read_text())
    assert set(utility["models"]) == {"teacher", "baseline-seed0", "baseline-seed1", "soft", "hard"}
    assert "| teacher | teacher |" in result.stdout and "| total |" in result.stdout

    again = cli(*pipeline_args(out))  # a finished pipeline does no work
    assert all(e["status"] == "done" for e in json.loads((out / "pipeline.json").read_text()).values())
    assert again.stdout == result.stdout


def test_bad_recipes_are_refused(tmp_path, invoke):
    result = invoke(*pipeline_args(tmp_path / "a", **{"teacher.colour": "blue"}), code=2)
    assert "unknown recipe key teacher.colour" in result.output and result.output.count("\n") == 1
    result = invoke(*pipeline_args(tmp_path / "b", **{"prepare.builder": "nonsense"}), code=1)
    assert "stage prepare failed: Error: unknown prepare.builder 'nonsense'" in result.output
    assert not (tmp_path / "b" / "base" / "prepared.json").exists()
    result = invoke(*pipeline_args(tmp_path / "b", **{"prepare.builder": "tiny-kjv", "teacher.epochs": 3}), code=2)
    assert "holds a pipeline run with other settings (prepare, teacher)" in result.output
