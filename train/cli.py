"""`evalmem-train prepare|finetune|distill-soft|distill-hard --recipe RECIPE.yaml [--set KEY=VALUE ...]`
(also `python -m train ...`)."""

from __future__ import annotations

from pathlib import Path

import click

from evalmem.errors import InputError, OneLineGroup
from evalmem.models import load_tokenizer
from evalmem.recipe import Recipe, load_recipe, with_seed
from train.data import check_context, training_windows


def recipe_options(f):
    """Options shared by every training command."""
    options = [
        click.option("--recipe", required=True, type=click.Path(dir_okay=False),
                     help="Recipe YAML (recipes/*.yaml): data, models and training settings."),
        click.option("--seed", type=click.IntRange(min=0), default=None,
                     help="Seed of the data order and initialisation [default: the recipe's seed]."),
        click.option("--out", default=None, type=click.Path(file_okay=False),
                     help="Checkpoint folder to write [default: the recipe's out/RUN]; must not exist."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Override a recipe key, e.g. --set student.epochs=1 (repeatable)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def open_recipe(recipe_path: str, seed: int | None, out: str | None, sets: tuple[str, ...],
                run: str) -> tuple[Recipe, Path]:
    """The recipe with overrides and seed applied, and the checkpoint folder (refused if it exists)."""
    from train.finetune import check_launch

    check_launch()
    recipe = with_seed(load_recipe(recipe_path, sets), seed)
    out = Path(out or recipe.out_path / run.format(seed=recipe.seed))
    if out.exists():
        raise InputError(f"{out} exists: remove it or pass another --out")
    return recipe, out


def model_of(recipe: Recipe, section: str) -> str:
    model = getattr(recipe, section).model
    if model is None:
        raise InputError(f"the recipe does not set {section}.model")
    check_context(model, recipe.data.window_len)
    return model


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main():
    """Train the teacher, baselines and distilled students of a recipe (TRL). Each command writes a Hugging Face
    folder that appears only when training has finished: the full model, or (recipe peft.enabled) a LoRA adapter
    folder whose adapter_config.json names its base model."""


@main.command("prepare")
@click.option("--recipe", required=True, type=click.Path(dir_okay=False),
              help="Recipe YAML with a prepare section (recipes/tiny-kjv.yaml, smollm2-kjv.yaml).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key, e.g. --set prepare.train_windows=64 (repeatable).")
def prepare_(recipe, sets):
    """Build an offline recipe's tokenizer, base models and data locally (prepare.builder): OUT/base/teacher,
    OUT/base/student, OUT/data/train.jsonl, OUT/data/heldout.jsonl. Skipped when already complete."""
    from train.prepare import prepare

    for name, path in prepare(load_recipe(recipe, sets)).items():
        click.echo(f"{name}: {path}")


@main.command()
@click.option("--run", type=click.Choice(["teacher", "baseline"]), required=True,
              help="teacher: the recipe's teacher model, into OUT/teacher. baseline: the student model, into "
                   "OUT/baseline-seedSEED (train one per --seed).")
@recipe_options
def finetune(run, recipe, seed, out, sets):
    """Fine-tune with cross-entropy on the training windows (TRL SFTTrainer)."""
    from train.finetune import finetune as train

    section = "teacher" if run == "teacher" else "student"
    recipe, out = open_recipe(recipe, seed, out, sets, "teacher" if run == "teacher" else "baseline-seed{seed}")
    model = model_of(recipe, section)
    _, windows = training_windows(recipe.data, load_tokenizer(model))
    settings = getattr(recipe, section).trainer_settings(recipe.seed)
    click.echo(f"saved {train(model, windows, out, peft=recipe.peft, **settings)}")


@main.command("distill-soft")
@recipe_options
@click.option("--teacher-cache", default=None, type=click.Path(file_okay=False),
              help="A finished `evalmem teacher-cache` of the teacher on these windows: train from its top-k "
                   "log-probabilities (KL over the top-k tokens and one tail bucket) instead of running the teacher "
                   "[default: run the teacher, full vocabulary].")
def distill_soft(recipe, seed, out, sets, teacher_cache):
    """Distill the fine-tuned teacher (soft.teacher, default OUT/teacher) into the student with T²-scaled
    forward KL at temperature soft.temperature over the full vocabulary (TRL GKDTrainer), or over a teacher cache's
    top-k tokens and tail (--teacher-cache)."""
    from train.distill_soft import distill_soft as train, shared_vocabulary

    recipe, out = open_recipe(recipe, seed, out, sets, "soft")
    teacher = recipe.soft.teacher or str(recipe.out_path / "teacher")
    student = model_of(recipe, "student")
    check_context(teacher, recipe.data.window_len)
    shared_vocabulary(teacher, student)
    _, windows = training_windows(recipe.data, load_tokenizer(student))
    saved = train(teacher, student, windows, out, temperature=recipe.soft.temperature, peft=recipe.peft,
                  teacher_cache=teacher_cache, **recipe.student.trainer_settings(recipe.seed))
    click.echo(f"saved {saved}")


@main.command("distill-hard")
@recipe_options
def distill_hard(recipe, seed, out, sets):
    """Train the student with cross-entropy on the teacher's corpus (hard.corpus, default OUT/corpus, made by
    `evalmem generate`), after checking that its rows continue the training windows' prefixes."""
    from train.distill_hard import distill_hard as train, load_corpus

    recipe, out = open_recipe(recipe, seed, out, sets, "hard")
    corpus = recipe.hard.corpus or str(recipe.out_path / "corpus")
    student = model_of(recipe, "student")
    rows = load_corpus(corpus)
    tokenizer = load_tokenizer(student)
    ids, windows = training_windows(recipe.data, tokenizer)
    saved = train(student, rows, ids, windows, out, prefix_len=recipe.hard.prefix_len, vocab_size=len(tokenizer),
                  name=corpus, peft=recipe.peft, **recipe.student.trainer_settings(recipe.seed))
    click.echo(f"saved {saved}")
