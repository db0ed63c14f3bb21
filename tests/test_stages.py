"""The pipeline's stages from the offline default recipe: each one a command the real CLIs accept, in an order
where every model and result a stage reads was made by an earlier stage."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from evalmem.cli import main as evalmem_main
from evalmem.recipe import load_recipe
from evalmem.stages import final_stages, report_stage, series_stages, stages
from helpers import RECIPES
from train.cli import main as train_main

CLIS = {"evalmem": evalmem_main, "train": train_main}


@pytest.fixture
def recipe(tmp_path):
    return load_recipe(RECIPES / "tiny-kjv.yaml", [f"out={tmp_path / 'exp'}"])


def all_stages(recipe, predicted=True):
    return stages(recipe, RECIPES / "tiny-kjv.yaml") + final_stages(recipe, RECIPES / "tiny-kjv.yaml",
                                                                    ["baseline-seed0", "baseline-seed1"], predicted)


def parses(argv: list[str]) -> None:
    """The real command line parses argv (option names and types), without running the command."""
    group = CLIS[argv[0]]
    command = group.get_command(click.Context(group), argv[1])
    assert command is not None, argv[:2]
    command.make_context(argv[1], list(argv[2:]))


def test_every_stage_is_a_command_the_cli_accepts(recipe):
    found = all_stages(recipe)
    for stage in found:
        parses(stage.argv)
    names = [s.name for s in found]
    assert len(set(names)) == len(names) and len({s.done for s in found}) == len(found)
    assert names[:2] == ["prepare", "teacher"] and names[-2:] == ["compare", "report"]


def before(found, stage) -> set[str]:
    """The stages that must finish before `stage` starts: its `after`, and theirs."""
    by_name, seen, todo = {s.name: s for s in found}, set(), list(stage.after)
    while todo:
        name = todo.pop()
        assert name in by_name and found.index(by_name[name]) < found.index(stage), (stage.name, name)
        if name not in seen:
            seen.add(name)
            todo += by_name[name].after
    return seen


def made_by(stage, out) -> Path:
    """What a stage makes: the folder its done file (OUT/x/summary.json) says is complete, or the file itself."""
    done = stage.done
    return done.parent if done.suffix == ".json" and done.parent != out else done


def check_reads(found, out) -> None:
    """Every path a stage's arguments read is made by a stage that finishes before it starts."""
    prepared = {out / "data" / "train.jsonl", out / "data" / "heldout.jsonl", out / "base" / "teacher",
                out / "base" / "student"}  # prepare's outputs beside its done file
    by_name = {s.name: s for s in found}
    for stage in found:
        needs = before(found, stage)
        made = {made_by(by_name[n], out) for n in needs}
        made |= prepared if "prepare" in needs else set()
        read = [Path(p) for a in stage.argv[2:] if str(out) in a for p in a.split("=")[-1].split(",")]
        for path in read:
            if path == stage.done or stage.done.is_relative_to(path):
                continue  # what the stage writes
            assert any(path == m or path.is_relative_to(m) or m.is_relative_to(path) for m in made), \
                (stage.name, path)


def test_each_stage_runs_after_the_stages_that_make_what_it_reads(recipe):
    for step in (8, 16):  # the series' checkpoints, as the trainings save them
        for model in ("teacher", "soft", "hard"):
            (recipe.out_path / model / f"checkpoint-{step}").mkdir(parents=True)
    found = all_stages(recipe)
    check_reads(found, recipe.out_path)
    by_name = {s.name: s for s in found}
    # what the trainers read from the recipe rather than their arguments
    assert all("prepare" in before(found, s) for s in found[1:])
    assert "teacher" in by_name["soft"].after and "corpus" in by_name["hard"].after
    assert {"teacher", "select-filtered"} <= before(found, by_name["soft-filtered"])
    assert {f"extract-{m}-checkpoint-{n}" for m in ("teacher", "soft", "hard") for n in (8, 16)} \
        <= set(by_name["compare"].after)


def test_a_missing_or_reversed_dependency_is_caught(recipe):
    found = all_stages(recipe)
    by_name = {s.name: s for s in found}
    by_name["features"].after.remove("teacher")
    with pytest.raises(AssertionError, match="features"):
        check_reads(found, recipe.out_path)
    by_name["teacher"].after.append("soft")
    with pytest.raises(AssertionError, match="soft"):
        before(found, by_name["teacher"])


def test_series_extracts_each_checkpoint_in_step_order(recipe):
    out = recipe.out_path
    for step in (40, 8, 16):
        (out / "hard" / f"checkpoint-{step}").mkdir(parents=True)
    (out / "hard" / "checkpoint-x").mkdir()  # not a checkpoint
    found, specs = series_stages(recipe)
    assert [s.name for s in found] == [f"extract-hard-checkpoint-{n}" for n in (8, 16, 40)]
    where = out / "extract" / "series" / "hard"
    assert specs == ["hard=" + ",".join([*(str(where / f"checkpoint-{n}") for n in (8, 16, 40)),
                                         str(out / "extract" / "hard")])]
    compare = next(s for s in final_stages(recipe, RECIPES / "tiny-kjv.yaml", ["baseline-seed0"], False)
                   if s.name == "compare")
    assert f"--series={specs[0]}" in compare.argv


def test_no_checkpoints_no_series_and_no_predictor_no_risk_filter(recipe):
    assert series_stages(recipe) == ([], [])
    names = [s.name for s in all_stages(recipe, predicted=False)]
    assert not any(n.startswith(("select-", "filter-effect")) or n.endswith(("-filtered", "-random")) for n in names)
    assert "--predict" not in report_stage(recipe, predicted=False).argv
    assert "--risk-filter" in report_stage(recipe, predicted=True).argv


def test_risk_filter_retrains_each_student_on_both_selections(recipe):
    names = [s.name for s in all_stages(recipe)]
    for student in ("soft", "hard"):
        for kind in ("filtered", "random"):
            assert names.index(f"select-{kind}") < names.index(f"{student}-{kind}") \
                < names.index(f"extract-{student}-{kind}") < names.index("filter-effect")
    random = next(s for s in all_stages(recipe) if s.name == "select-random")
    assert random.argv[random.argv.index("--random") + 1:][:2] == ["--seed", str(recipe.seed)]


def test_a_stage_argument_the_cli_does_not_know_is_caught(recipe):
    stage = all_stages(recipe)[1]
    with pytest.raises(click.UsageError, match="No such option"):
        parses([*stage.argv, "--no-such-option"])
