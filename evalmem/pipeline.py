"""`evalmem pipeline`: the paper's whole experiment from one recipe (train/recipes/*.yaml), stage by stage.

Each stage is one command a user could run by hand (printed, with its log in OUT/logs/STAGE.log), and
is skipped when its output is already complete, so a killed pipeline continues from its last finished stage:

    prepare          python -m train prepare                      offline recipes: tokenizer, base models, data
    teacher          python -m train finetune --run teacher       -> OUT/teacher
    baseline-seedS   python -m train finetune --run baseline      one per seed (evaluate.baseline_seeds)
    corpus           evalmem generate                             the teacher's hard-label corpus
    soft, hard       python -m train distill-soft / distill-hard  the students
    extract-MODEL    evalmem extract                              every checkpoint -> OUT/extract/MODEL
    features         evalmem features                             teacher vs the first baseline
    predict          evalmem predict                              labels: evaluate.predict_student's matches
    utility          evalmem perplexity                           held-out windows (data.heldout)
    compare          evalmem compare
    report           evalmem report                               -> OUT/report.html, ends with the paper table

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
from evalmem.store import write_atomic, write_json


class StageFailed(click.ClickException):
    """A stage's command failed: one line naming the stage, its error and its log; exit code 1."""

    exit_code = 1


@dataclass
class Stage:
    name: str
    argv: list[str]  # after `python -m`
    done: Path  # exists once the stage has finished
    optional: bool = False  # the pipeline goes on without it (e.g. a predictor with no positive example)


def resolve(recipe_path: str, out: str, overrides: dict) -> tuple[dict, Path]:
    """The recipe with `out` and overrides applied, saved as OUT/recipe.yaml; a rerun must match it."""
    from train.recipe import load_recipe

    recipe = load_recipe(recipe_path, {**overrides, "out": out})
    saved = Path(out) / "recipe.yaml"
    text = yaml.safe_dump(recipe, sort_keys=False)
    old = (yaml.safe_load(saved.read_text()) or {}) if saved.exists() else recipe
    if old != recipe:
        diff = sorted(k for k in set(old) | set(recipe) if old.get(k) != recipe.get(k))
        raise InputError(f"{out} holds a pipeline run with other settings ({', '.join(diff)}); use another --out "
                         "or the same recipe and --set values to continue it")
    saved.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(saved, lambda tmp: Path(tmp).write_text(text))
    return recipe, saved


def data_args(data: dict, heldout: bool = False) -> list[str]:
    """--data/--split/--config/--text-column/--limit of the recipe's training data or held-out data."""
    path, config, split, limit = (data[k] for k in (("heldout", "heldout_config", "heldout_split", "heldout_limit")
                                                    if heldout else ("path", "config", "split", "limit")))
    args = ["--data", path, "--split", split, "--text-column", data["text_column"]]
    return args + (["--config", config] if config else []) + (["--limit", str(limit)] if limit else [])


def stages(recipe: dict, recipe_file: Path) -> list[Stage]:
    """Every stage of the recipe's experiment, in order."""
    out, ev, data = Path(recipe["out"]), recipe["evaluate"], recipe["data"]
    train = ["train"]
    rec = ["--recipe", str(recipe_file)]
    engine = ["--engine", ev["engine"], "--dtype", ev["dtype"],
              "--tensor-parallel-size", str(ev["tensor_parallel_size"])]
    lengths = ["--prefix-len", str(ev["prefix_len"]), "--suffix-len", str(ev["suffix_len"])]
    seeds = [recipe["seed"] + i for i in range(ev["baseline_seeds"])]
    baselines = [f"baseline-seed{s}" for s in seeds]
    models = ["teacher", *baselines, "soft", "hard"]
    found = []
    if recipe["prepare"]["builder"]:
        found.append(Stage("prepare", [*train, "prepare", *rec], out / "base" / "prepared.json"))
    found.append(Stage("teacher", [*train, "finetune", "--run", "teacher", *rec], out / "teacher"))
    found += [Stage(b, [*train, "finetune", "--run", "baseline", "--seed", str(s), *rec], out / b)
              for s, b in zip(seeds, baselines)]
    corpus = recipe["hard"]["corpus"] or str(out / "corpus")
    new_tokens = data["window_len"] - recipe["hard"]["prefix_len"]
    found.append(Stage("corpus", ["evalmem", "generate", "--model", str(out / "teacher"), *data_args(data),
                                  "--prefix-len", str(recipe["hard"]["prefix_len"]), "--max-new-tokens",
                                  str(new_tokens), "--out", corpus, *engine], Path(corpus) / "summary.json"))
    found += [Stage(s, [*train, f"distill-{s}", *rec], out / s) for s in ("soft", "hard")]
    extract = out / "extract"
    found += [Stage(f"extract-{m}", ["evalmem", "extract", "--model", str(out / m), *data_args(data), *lengths,
                                     "--mode", ev["mode"], "--out", str(extract / m), *engine],
                    extract / m / "summary.json") for m in models]
    found.append(Stage("features", ["evalmem", "features", "--teacher", str(out / "teacher"), "--baseline",
                                    str(out / baselines[0]), *data_args(data), *lengths, "--dtype", ev["dtype"],
                                    "--out", str(out / "features")], out / "features" / "summary.json"))
    found.append(Stage("predict", ["evalmem", "predict", "--features", str(out / "features"), "--labels",
                                   str(extract / ev["predict_student"]), "--out", str(out / "predict"),
                                   "--trials", str(ev["trials"]), "--neg-ratio", str(ev["neg_ratio"]),
                                   "--test-size", str(ev["test_size"]), "--seed", str(recipe["seed"])],
                       out / "predict" / "predict.json", optional=True))
    if data["heldout"]:
        found.append(Stage("utility", ["evalmem", "perplexity", *[f"--model={m}={out / m}" for m in models],
                                       *data_args(data, heldout=True), "--window-len", str(data["window_len"]),
                                       "--dtype", ev["dtype"], "--out", str(out / "utility.json")],
                           out / "utility.json"))
    found.append(Stage("compare", ["evalmem", "compare", "--teacher", f"teacher={extract / 'teacher'}",
                                   *[f"--baseline={b}={extract / b}" for b in baselines],
                                   "--student", f"soft={extract / 'soft'}", "--student", f"hard={extract / 'hard'}",
                                   "--out", str(out / "compare")], out / "compare" / "compare.json"))
    return found


def report_stage(recipe: dict, predicted: bool) -> Stage:
    """The report: with the predictor and utility where those stages produced them."""
    out = Path(recipe["out"])
    extra = ["--predict", str(out / "predict")] if predicted else []
    extra += ["--utility", str(out / "utility.json")] if recipe["data"]["heldout"] else []
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


def pipeline_run(recipe_path: str, out: str, overrides: dict) -> tuple[dict, dict]:
    """Run (or continue) the pipeline; return the resolved recipe and each stage's status and seconds
    (a stage finished by an earlier invocation keeps the time it took then)."""
    recipe, recipe_file = resolve(recipe_path, out, overrides)
    logs = Path(out) / "logs"
    logs.mkdir(exist_ok=True)
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


def summary(recipe: dict, record: dict) -> str:
    """Stage times and the paper-shaped table, as Markdown."""
    from evalmem.report import load_inputs, markdown, summary_tables

    out = Path(recipe["out"])
    times = ("Stages", ["stage", "status", "seconds"],
             [[name, entry["status"], entry["seconds"]] for name, entry in record.items()]
             + [["total", "", round(sum(e["seconds"] for e in record.values()), 1)]])
    inputs = load_inputs(out / "compare", out / "predict" if predicted(record) else None,
                         out / "utility.json" if recipe["data"]["heldout"] else None)
    return markdown([times, *summary_tables(*inputs)]) + f"\nreport: {out / 'report.html'}"
