"""`evalmem pipeline`: the paper's whole experiment from one recipe (recipes/*.yaml), stage by stage.

Each stage is one command a user could run by hand (printed, with its log in OUT/logs/STAGE.log), and
is skipped when its output is already complete, so a killed pipeline continues from its last finished stage:

    prepare          evalmem-train prepare                        offline recipes: tokenizer, base models, data
    teacher          evalmem-train finetune --run teacher         -> OUT/teacher
    baseline-seedS   evalmem-train finetune --run baseline        one per seed (evaluate.baseline_seeds)
    corpus           evalmem generate                             the teacher's hard-label corpus
    teacher-cache    evalmem teacher-cache                        soft.teacher_cache: the teacher's top-k, once
    soft, hard       evalmem-train distill-soft / distill-hard    the students
    extract-MODEL    evalmem extract                              every checkpoint -> OUT/extract/MODEL
    features         evalmem features                             teacher vs the first baseline
    dupcount         evalmem dupcount                             copies of every example's suffix and window
    predict          evalmem predict                              labels: evaluate.predict_student's matches
    select-filtered  evalmem filter                               risk filtering (risk_filter): the riskiest out,
    select-random                                                 and as many random ones (the control)
    S-filtered, S-random   evalmem-train distill-S, evalmem extract  each student again on what is left
    filter-effect    evalmem filter-effect                        -> OUT/risk_filter.json
    utility          evalmem perplexity                           held-out windows (data.heldout)
    compare          evalmem compare
    report           evalmem report                               -> OUT/report.html, ends with the paper table

Stages run as `python -m evalmem ...` / `python -m train ...` subprocesses (the commands above).
OUT/recipe.yaml holds the resolved recipe every stage reads; OUT/pipeline.json each stage's status and time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import yaml

from evalmem.errors import InputError
from evalmem.recipe import Recipe, load_recipe, recipe_yaml
from evalmem.stages import Stage, baseline_seeds, final_stages, stages
from evalmem.store import make_dir, settings_diff, write_atomic, write_json


class StageFailed(click.ClickException):
    """A stage's command failed: one line naming the stage, its error and its log; exit code 1."""

    exit_code = 1


def resolve(recipe_path: str, out: str, sets: tuple[str, ...]) -> tuple[Recipe, Path]:
    """The recipe with `--set` overrides and `out` applied, saved as OUT/recipe.yaml; a rerun must match it."""
    recipe = load_recipe(recipe_path, [*sets, f"out={out}"])
    saved = Path(out) / "recipe.yaml"
    text = recipe_yaml(recipe)
    # the saved recipe read as a recipe: a key added since it was saved takes its default, not a difference
    old = yaml.safe_load(recipe_yaml(load_recipe(saved))) if saved.exists() else yaml.safe_load(text)
    diff = settings_diff(old, yaml.safe_load(text))
    if diff:
        raise InputError(f"{out} holds a pipeline run with other settings ({', '.join(diff)}); use another --out "
                         "or the same recipe and --set values to continue it")
    make_dir(saved.parent)
    write_atomic(saved, lambda tmp: Path(tmp).write_text(text))
    return recipe, saved


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
    record: dict[str, dict] = {}

    def step(stage: Stage) -> None:
        click.echo(f"[{len(record) + 1:2d}] {stage.name}", err=True)
        if stage.done.exists():
            entry = {**earlier.get(stage.name, {"seconds": 0.0}), "status": "done"}
        else:
            status, seconds = run_stage(stage, logs)
            entry = {"status": status, "seconds": round(seconds, 1)}
        record[stage.name] = entry
        click.echo(f"    {entry['status']} ({entry['seconds']:.1f} s)", err=True)
        write_json(record_path, record)

    for stage in stages(recipe, recipe_file):
        step(stage)
    for stage in final_stages(recipe, recipe_file, list(baseline_seeds(recipe)), predicted(record)):
        step(stage)  # what follows depends on whether the predictor could be fit
    return recipe, record


def findings(recipe: Recipe, record: dict) -> tuple:
    """The inputs of the paper-shaped tables: compare, predict, utility and risk-filter results."""
    from evalmem.report import load_inputs

    out = recipe.out_path
    risk = out / "risk_filter.json"
    return load_inputs(out / "compare", out / "predict" if predicted(record) else None,
                       out / "utility.json" if recipe.data.heldout else None, risk if risk.exists() else None)


def summary(recipe: Recipe, record: dict) -> str:
    """Stage times and the paper-shaped table, as Markdown."""
    from evalmem.tables import markdown, summary_tables

    times = ("Stages", ["stage", "status", "seconds"],
             [[name, entry["status"], entry["seconds"]] for name, entry in record.items()]
             + [["total", "", round(sum(e["seconds"] for e in record.values()), 1)]])
    return markdown([times, *summary_tables(*findings(recipe, record))]) + \
        f"\nreport: {recipe.out_path / 'report.html'}"


def seeds_run(recipe_path: str, out: str, sets: tuple[str, ...], n: int) -> str:
    """`--seeds N`: the recipe with seeds S..S+N-1 (S: the recipe's), each into OUT/seed-S; then the findings'
    mean and range over the seeds in OUT/seeds.json and OUT/seeds.md (returned)."""
    from evalmem.seeds import across_seeds, seed_findings, seeds_markdown

    first = load_recipe(recipe_path, [*sets, f"out={out}"]).seed
    per_seed = {}
    for seed in range(first, first + n):
        click.echo(f"== seed {seed} ==", err=True)
        recipe, record = pipeline_run(recipe_path, str(Path(out) / f"seed-{seed}"), (*sets, f"seed={seed}"))
        per_seed[seed] = seed_findings(*findings(recipe, record))
    result = across_seeds(per_seed)
    text = seeds_markdown(result)
    write_json(Path(out) / "seeds.json", result)
    write_atomic(Path(out) / "seeds.md", lambda tmp: Path(tmp).write_text(text))
    return text
