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

Stages run as `python -m evalmem ...` / `python -m train ...` subprocesses (the commands above); with `--jobs N`
up to N at once, each as soon as the stages whose outputs it reads have finished.
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


def threads_env(jobs: int) -> dict[str, str]:
    """The stages' environment: with several at once, each gets its share of the cores (unless the user set
    OMP_NUM_THREADS), so that they do not oversubscribe them."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


@dataclass
class Running:
    stage: Stage
    proc: subprocess.Popen
    log: Path
    start: float


def start_stage(stage: Stage, logs: Path, env: dict[str, str]) -> Running:
    """Start one stage's command with its output in OUT/logs/STAGE.log."""
    log = logs / f"{stage.name}.log"
    click.echo(f"    $ python -m {' '.join(stage.argv)}", err=True)
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", *stage.argv], stdout=f, stderr=subprocess.STDOUT, env=env)
    return Running(stage, proc, log, time.perf_counter())


def finish_stage(run: Running) -> dict:
    """A finished stage's entry: "ran" or, for an optional stage, "failed: ..."; a required stage's failure
    raises StageFailed."""
    seconds, code = round(time.perf_counter() - run.start, 1), run.proc.returncode
    if code == 0:
        return {"status": "ran", "seconds": seconds}
    errors = [line.strip() for line in run.log.read_text(errors="replace").splitlines() if line.startswith("Error:")]
    reason = errors[-1] if errors else f"exit code {code}"
    if not run.stage.optional:
        raise StageFailed(f"stage {run.stage.name} failed: {reason} (log: {run.log})")
    return {"status": f"failed: {reason}", "seconds": seconds}


def run_stages(found: list[Stage], jobs: int, logs: Path, earlier: dict, record: dict, save) -> None:
    """Run the stages, up to `jobs` at once, each once the stages it reads have finished (the list's order
    among those ready); a finished stage is skipped. On a failure the running stages are stopped."""
    waiting, running, env = list(found), [], threads_env(jobs)
    unknown = {d for s in found for d in s.after} - set(record) - {s.name for s in found}
    assert not unknown, f"stages read by others but not run: {unknown}"

    def finished(entry: dict, stage: Stage) -> None:
        record[stage.name] = entry
        click.echo(f"    {stage.name}: {entry['status']} ({entry['seconds']:.1f} s)", err=True)
        save()

    try:
        while waiting or running:
            ready = [s for s in waiting if all(d in record for d in s.after)]
            assert ready or running or not waiting, f"no stage can start: {[s.name for s in waiting]}"
            for stage in ready[:jobs - len(running)]:
                waiting.remove(stage)
                click.echo(f"[{len(record) + len(running) + 1:2d}] {stage.name}", err=True)
                if stage.done.exists():
                    finished({**earlier.get(stage.name, {"seconds": 0.0}), "status": "done"}, stage)
                else:
                    running.append(start_stage(stage, logs, env))
            if running:
                time.sleep(0.2)
            for run in [r for r in running if r.proc.poll() is not None]:
                running.remove(run)
                finished(finish_stage(run), run.stage)
    finally:
        for run in running:
            run.proc.terminate()
            run.proc.wait()


def predicted(record: dict) -> bool:
    """Whether the predict stage produced a predictor (it is optional)."""
    return record["predict"]["status"] in ("ran", "done")


def pipeline_run(recipe_path: str, out: str, sets: tuple[str, ...], jobs: int = 1) -> tuple[Recipe, dict]:
    """Run (or continue) the pipeline, `jobs` stages at once where they do not read each other's outputs;
    return the resolved recipe and each stage's status and seconds in the stages' order (a stage finished by
    an earlier invocation keeps the time it took then)."""
    recipe, recipe_file = resolve(recipe_path, out, sets)
    logs, start = make_dir(Path(out) / "logs"), time.perf_counter()
    record_path = Path(out) / "pipeline.json"
    earlier = json.loads(record_path.read_text()) if record_path.exists() else {}
    record: dict[str, dict] = {}
    order: list[str] = []

    def save() -> None:
        write_json(record_path, {name: record[name] for name in order if name in record})

    first = stages(recipe, recipe_file)
    order += [s.name for s in first]
    run_stages(first, jobs, logs, earlier, record, save)
    # what follows depends on the trained checkpoints and on whether the predictor could be fit
    last = final_stages(recipe, recipe_file, list(baseline_seeds(recipe)), predicted(record))
    order += [s.name for s in last]
    run_stages(last, jobs, logs, earlier, record, save)
    click.echo(f"{len(order)} stages in {time.perf_counter() - start:.0f} s", err=True)
    return recipe, {name: record[name] for name in order}


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
             + [["sum (stages overlap with --jobs > 1)", "", round(sum(e["seconds"] for e in record.values()), 1)]])
    return markdown([times, *summary_tables(*findings(recipe, record))]) + \
        f"\nreport: {recipe.out_path / 'report.html'}"


def seeds_run(recipe_path: str, out: str, sets: tuple[str, ...], n: int, jobs: int = 1) -> str:
    """`--seeds N`: the recipe with seeds S..S+N-1 (S: the recipe's), each into OUT/seed-S; then the findings'
    mean and range over the seeds in OUT/seeds.json and OUT/seeds.md (returned)."""
    from evalmem.seeds import across_seeds, seed_findings, seeds_markdown

    first = load_recipe(recipe_path, [*sets, f"out={out}"]).seed
    per_seed = {}
    for seed in range(first, first + n):
        click.echo(f"== seed {seed} ==", err=True)
        recipe, record = pipeline_run(recipe_path, str(Path(out) / f"seed-{seed}"), (*sets, f"seed={seed}"), jobs)
        per_seed[seed] = seed_findings(*findings(recipe, record))
    result = across_seeds(per_seed)
    text = seeds_markdown(result)
    write_json(Path(out) / "seeds.json", result)
    write_atomic(Path(out) / "seeds.md", lambda tmp: Path(tmp).write_text(text))
    return text
