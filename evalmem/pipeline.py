"""`evalmem pipeline`: the paper's whole experiment from one recipe (recipes/*.yaml), stage by stage.

Each stage is one command a user could run by hand (printed, with its log in OUT/logs/STAGE.log), and
is skipped when its output is already complete, so a killed pipeline continues from its last finished stage:

    prepare          evalmem-train prepare                        offline recipes: tokenizer, base models, data
    teacher          evalmem-train finetune --run teacher         -> OUT/teacher
    baseline-seedS   evalmem-train finetune --run baseline        one per seed (evaluate.baseline_seeds)
    corpus           evalmem generate                             the teacher's hard-label corpus
    soft, hard       evalmem-train distill-soft / distill-hard    the students
    extract-MODEL    evalmem extract                              every checkpoint -> OUT/extract/MODEL
    features         evalmem features                             teacher vs the first baseline
    predict          evalmem predict                              labels: evaluate.predict_student's matches
    utility          evalmem perplexity                           held-out windows (data.heldout)
    compare          evalmem compare
    report           evalmem report                               -> OUT/report.html, ends with the paper table

Stages run as `python -m evalmem ...` / `python -m evalmem.train ...` subprocesses (the commands above).
OUT/recipe.yaml holds the resolved recipe every stage reads; OUT/pipeline.json each stage's status and time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import yaml

from evalmem.errors import InputError
from evalmem.recipe import Data, Evaluate, Recipe, load_recipe, recipe_yaml
from evalmem.store import make_dir, settings_diff, write_atomic, write_json


class StageFailed(click.ClickException):
    """A stage's command failed: one line naming the stage, its error and its log; exit code 1."""

    exit_code = 1


@dataclass
class Stage:
    name: str
    argv: list[str]  # after `python -m`: a module (evalmem, evalmem.train) and its arguments
    done: Path  # exists once the stage has finished
    optional: bool = False  # the pipeline goes on without it (e.g. a predictor with no positive example)


def resolve(recipe_path: str, out: str, sets: tuple[str, ...]) -> tuple[Recipe, Path]:
    """The recipe with `--set` overrides and `out` applied, saved as OUT/recipe.yaml; a rerun must match it."""
    recipe = load_recipe(recipe_path, [*sets, f"out={out}"])
    saved = Path(out) / "recipe.yaml"
    text = recipe_yaml(recipe)
    old = (yaml.safe_load(saved.read_text()) or {}) if saved.exists() else yaml.safe_load(text)
    diff = settings_diff(old, yaml.safe_load(text))
    if diff:
        raise InputError(f"{out} holds a pipeline run with other settings ({', '.join(diff)}); use another --out "
                         "or the same recipe and --set values to continue it")
    make_dir(saved.parent)
    write_atomic(saved, lambda tmp: Path(tmp).write_text(text))
    return recipe, saved


def data_args(data: Data, heldout: bool = False) -> list[str]:
    """--data/--split/--config/--text-column/--limit of the recipe's training data or held-out data."""
    path, config, split, limit = ((data.heldout, data.heldout_config, data.heldout_split, data.heldout_limit)
                                  if heldout else (data.path, data.config, data.split, data.limit))
    args = ["--data", path, "--split", split, "--text-column", data.text_column]
    return args + (["--config", config] if config else []) + (["--limit", str(limit)] if limit else [])


def engine_args(ev: Evaluate) -> list[str]:
    return (["--engine", ev.engine] if ev.engine else []) + ["--dtype", ev.dtype, "--tensor-parallel-size",
                                                             str(ev.tensor_parallel_size)]


def training_stages(recipe: Recipe, rec: list[str], baselines: dict[str, int]) -> list[Stage]:
    """prepare (offline recipes), teacher, baselines, corpus, soft, hard."""
    out, train = recipe.out_path, ["evalmem.train"]
    found = [Stage("prepare", [*train, "prepare", *rec], out / "base" / "prepared.json")] \
        if recipe.prepare.builder else []
    found.append(Stage("teacher", [*train, "finetune", "--run", "teacher", *rec], out / "teacher"))
    found += [Stage(b, [*train, "finetune", "--run", "baseline", "--seed", str(s), *rec], out / b)
              for b, s in baselines.items()]
    corpus = recipe.hard.corpus or str(out / "corpus")
    new_tokens = recipe.data.window_len - recipe.hard.prefix_len
    found.append(Stage("corpus", ["evalmem", "generate", "--model", str(out / "teacher"), *data_args(recipe.data),
                                  "--prefix-len", str(recipe.hard.prefix_len), "--max-new-tokens", str(new_tokens),
                                  "--out", corpus, *engine_args(recipe.evaluate)], Path(corpus) / "summary.json"))
    return found + [Stage(s, [*train, f"distill-{s}", *rec], out / s) for s in ("soft", "hard")]


def evaluation_stages(recipe: Recipe, baselines: list[str]) -> list[Stage]:
    """extract-MODEL for every checkpoint, features, predict, utility, compare."""
    out, ev, data, extract = recipe.out_path, recipe.evaluate, recipe.data, recipe.out_path / "extract"
    lengths = ["--prefix-len", str(ev.prefix_len), "--suffix-len", str(ev.suffix_len)]
    models = ["teacher", *baselines, "soft", "hard"]
    found = [Stage(f"extract-{m}", ["evalmem", "extract", "--model", str(out / m), *data_args(data), *lengths,
                                    "--mode", ev.mode, "--out", str(extract / m), *engine_args(ev)],
                   extract / m / "summary.json") for m in models]
    found.append(Stage("features", ["evalmem", "features", "--teacher", str(out / "teacher"), "--baseline",
                                    str(out / baselines[0]), *data_args(data), *lengths, "--dtype", ev.dtype,
                                    "--out", str(out / "features")], out / "features" / "summary.json"))
    found.append(Stage("predict", ["evalmem", "predict", "--features", str(out / "features"), "--labels",
                                   str(extract / ev.predict_student), "--out", str(out / "predict"),
                                   "--trials", str(ev.trials), "--neg-ratio", str(ev.neg_ratio),
                                   "--test-size", str(ev.test_size), "--seed", str(recipe.seed)],
                       out / "predict" / "predict.json", optional=True))
    if data.heldout:
        found.append(Stage("utility", ["evalmem", "perplexity", *[f"--model={m}={out / m}" for m in models],
                                       *data_args(data, heldout=True), "--window-len", str(data.window_len),
                                       "--dtype", ev.dtype, "--out", str(out / "utility.json")],
                           out / "utility.json"))
    found.append(Stage("compare", ["evalmem", "compare", "--teacher", f"teacher={extract / 'teacher'}",
                                   *[f"--baseline={b}={extract / b}" for b in baselines],
                                   "--student", f"soft={extract / 'soft'}", "--student", f"hard={extract / 'hard'}",
                                   "--out", str(out / "compare")], out / "compare" / "compare.json"))
    return found


def stages(recipe: Recipe, recipe_file: Path) -> list[Stage]:
    """Every stage of the recipe's experiment, in order."""
    baselines = {f"baseline-seed{recipe.seed + i}": recipe.seed + i for i in range(recipe.evaluate.baseline_seeds)}
    return (training_stages(recipe, ["--recipe", str(recipe_file)], baselines)
            + evaluation_stages(recipe, list(baselines)))


def report_stage(recipe: Recipe, predicted: bool) -> Stage:
    """The report: with the predictor and utility where those stages produced them."""
    out = recipe.out_path
    extra = ["--predict", str(out / "predict")] if predicted else []
    extra += ["--utility", str(out / "utility.json")] if recipe.data.heldout else []
    return Stage("report", ["evalmem", "report", "--compare", str(out / "compare"), *extra,
                            "--out", str(out / "report.html")], out / "report.html")


def run_stage(stage: Stage, logs: Path) -> tuple[str, float]:
    """Run one stage's command with its output in its log; ("ran" | "failed: ...", seconds)."""
    log = logs / f"{stage.name}.log"
    click.echo(f"    $ python -m {' '.join(stage.argv)}", err=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, "-m", *stage.argv], stdout=f, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - start
    if code == 0:
        return "ran", seconds
    errors = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.startswith("Error:")]
    reason = errors[-1] if errors else f"exit code {code}"
    if not stage.optional:
        raise StageFailed(f"stage {stage.name} failed: {reason} (log: {log})")
    return f"failed: {reason}", seconds


def predicted(record: dict) -> bool:
    """Whether the predict stage produced a predictor (it is optional)."""
    return record["predict"]["status"] in ("ran", "done")


def pipeline_run(recipe_path: str, out: str, sets: tuple[str, ...]) -> tuple[Recipe, dict]:
    """Run (or continue) the pipeline; return the resolved recipe and each stage's status and seconds
    (a stage finished by an earlier invocation keeps the time it took then)."""
    recipe, recipe_file = resolve(recipe_path, out, sets)
    logs = make_dir(Path(out) / "logs")
    record_path = Path(out) / "pipeline.json"
    earlier = json.loads(record_path.read_text()) if record_path.exists() else {}
    todo = stages(recipe, recipe_file)
    record: dict[str, dict] = {}

    def step(number: int, stage: Stage) -> None:
        click.echo(f"[{number:2d}/{len(todo) + 1}] {stage.name}", err=True)
        if stage.done.exists():
            entry = {**earlier.get(stage.name, {"seconds": 0.0}), "status": "done"}
        else:
            status, seconds = run_stage(stage, logs)
            entry = {"status": status, "seconds": round(seconds, 1)}
        record[stage.name] = entry
        click.echo(f"    {entry['status']} ({entry['seconds']:.1f} s)", err=True)
        write_json(record_path, record)

    for number, stage in enumerate(todo, 1):
        step(number, stage)
    step(len(todo) + 1, report_stage(recipe, predicted(record)))  # the report needs to know about predict
    return recipe, record


def summary(recipe: Recipe, record: dict) -> str:
    """Stage times and the paper-shaped table, as Markdown."""
    from evalmem.report import load_inputs
    from evalmem.tables import markdown, summary_tables

    out = recipe.out_path
    times = ("Stages", ["stage", "status", "seconds"],
             [[name, entry["status"], entry["seconds"]] for name, entry in record.items()]
             + [["total", "", round(sum(e["seconds"] for e in record.values()), 1)]])
    inputs = load_inputs(out / "compare", out / "predict" if predicted(record) else None,
                         out / "utility.json" if recipe.data.heldout else None)
    return markdown([times, *summary_tables(*inputs)]) + f"\nreport: {out / 'report.html'}"
