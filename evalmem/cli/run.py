"""The commands that run models over a data set: extract, generate, features, perplexity; and merge."""

from __future__ import annotations

import json

import click

from evalmem.cli.options import out_option, settings
from evalmem.engines import EngineOptions, EnginePool
from evalmem.models import DTYPES
from evalmem.settings import (DataSpec, ExtractSettings, FeatureSettings, GenerateSettings, OutputSpec,
                              TeacherCacheSettings)

ENGINES = EnginePool()  # the engine of the last job, reused by the next one in this process that can


@click.command()
@settings(ExtractSettings, "job")
@settings(DataSpec, "data")
@settings(OutputSpec, "output")
@settings(EngineOptions, "options")
def extract(job, data, output, options):
    """Discoverable extraction: greedy-decode SUFFIX-LEN tokens from each example's first PREFIX-LEN tokens
    and compare them with the true continuation (--mode screen/verify/auto: the same results with less work
    than decoding every suffix). Writes OUT/results.parquet (one row per example) and OUT/summary.json; rerun the
    same command to resume an interrupted run."""
    from evalmem.extraction import extract_run

    click.echo(json.dumps(extract_run(job, data, output, options, ENGINES), indent=2))


@click.command()
@settings(GenerateSettings, "job")
@settings(DataSpec, "data")
@settings(OutputSpec, "output")
@settings(EngineOptions, "options")
def generate(job, data, output, options):
    """Hard-label corpus: continue each example's first PREFIX-LEN tokens with MAX-NEW-TOKENS generated ones.
    Writes OUT/results.parquet (example_id, input_ids = prefix + continuation, text) and OUT/summary.json;
    load it with datasets.load_dataset("parquet", data_files="OUT/results.parquet"). Rerun to resume."""
    from evalmem.generation import generate_run

    click.echo(json.dumps(generate_run(job, data, output, options, ENGINES), indent=2))


@click.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.argument("parts", nargs=-1, type=click.Path(file_okay=False))
def merge(out, parts):
    """Combine a run computed in parts (`--shard I/N`) into OUT: results.parquet (features.parquet) and
    summary.json exactly as one unsharded run writes them. Parts run into OUT itself need no merge (the last
    part to finish writes the results), but `evalmem merge OUT` does it again or says what is missing. Parts
    computed into other directories (other machines) are named after OUT: they must hold runs with exactly
    OUT's settings; their valid shards are copied into OUT first. A missing or damaged shard is named, with
    the part that computes it, and nothing that looks complete is written."""
    from evalmem.merge import merge_run

    click.echo(json.dumps(merge_run(out, list(parts)), indent=2))


@click.command()
@settings(FeatureSettings, "job")
@settings(DataSpec, "data")
@settings(OutputSpec, "output")
def features(job, data, output):
    """Predictor features per example: teacher and baseline perplexity, KL(teacher || baseline), zlib entropy
    and Min-K% probability. Writes OUT/features.parquet and OUT/summary.json; rerun to resume."""
    from evalmem.features import features_run

    click.echo(json.dumps(features_run(job, data, output), indent=2))


@click.command("teacher-cache")
@settings(TeacherCacheSettings, "job")
@settings(DataSpec, "data")
@settings(OutputSpec, "output")
def teacher_cache(job, data, output):
    """The teacher's soft labels, computed once: per training window and position, the K most likely tokens'
    log-probabilities at temperature 1, their ids and the log of the remaining tail mass (torch forward pass).
    Writes OUT/results.parquet (one row per window, keyed by a hash of its tokens) and OUT/summary.json; rerun to
    resume. `evalmem-train distill-soft --teacher-cache OUT` trains from it instead of running the teacher."""
    from evalmem.teacher_cache import teacher_cache_run

    click.echo(json.dumps(teacher_cache_run(job, data, output), indent=2))


@click.command()
@click.option("--model", "models", multiple=True, required=True,
              help="Model [NAME=]PATH (local folder or hub id); repeat to score several on the same windows.")
@settings(DataSpec, "data")
@click.option("--window-len", type=int, default=100, show_default=True,
              help="Tokens per window (each example's first WINDOW-LEN; shorter examples are skipped).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Windows per forward pass.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
              help="Weights dtype; auto = the dtype each model was saved in.")
@out_option("The JSON file to write.", directory=False)
def perplexity(models, data, window_len, batch_size, dtype, out):
    """Utility: each model's perplexity over the same held-out windows (tokens 2..WINDOW-LEN, teacher
    forcing), e.g. to see what memorization costs or distillation keeps."""
    from evalmem.analysis import parse_spec
    from evalmem.features import perplexity_run

    specs = [parse_spec(m, m.rstrip("/").rsplit("/", 1)[-1]) for m in models]
    click.echo(json.dumps(perplexity_run(specs, data, window_len, batch_size, dtype, out), indent=2))


@click.command()
@settings(DataSpec, "data")
@click.option("--prefix-len", type=int, default=50, show_default=True, help="Prompt tokens per example.")
@click.option("--suffix-len", type=int, default=50, show_default=True, help="Suffix tokens per example.")
@out_option("Directory for counts.parquet (example_id, suffix_count, window_count) and summary.json.")
def dupcount(data, prefix_len, suffix_len, out):
    """Duplicate counts: how often each example's suffix (suffix_count) and whole window (window_count) occur in
    the data's token stream, at any row and offset, the example itself once. Text data needs --tokenizer."""
    from evalmem.dupcount import dupcount_run

    click.echo(json.dumps(dupcount_run(data, prefix_len, suffix_len, out), indent=2))
