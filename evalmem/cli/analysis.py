"""The commands that analyse results: compare, predict, filter, report; and pipeline, the whole experiment."""

from __future__ import annotations

import json

import click

from evalmem.cli.options import out_option, settings
from evalmem.profile import MEMBERSHIP
from evalmem.settings import COUNT_FEATURES, FEATURES, DataSpec, FilterSettings, PredictSettings, ReportSettings


@click.command()
@click.option("--teacher", default=None, help="Teacher extraction run: [NAME=]DIR.")
@click.option("--baseline", "baselines", multiple=True, help="Baseline run [NAME=]DIR; repeat for several seeds.")
@click.option("--student", "students", multiple=True, help="Student run NAME=DIR (e.g. soft=runs/soft); repeatable.")
@click.option("--run", "others", multiple=True, help="Any other run [NAME=]DIR to tabulate and overlap; repeatable.")
@click.option("--series", multiple=True, metavar="NAME=DIR,DIR,...",
              help="One model's checkpoints in training order: their extraction runs, or a folder of checkpoint-N "
                   "runs; the rate per checkpoint and what each step newly memorized and forgot. Repeatable.")
@click.option("--counts", default=None, type=click.Path(file_okay=False),
              help="Directory written by `evalmem dupcount` on the same data: memorization by copy count.")
@click.option("--prefix-len", type=click.IntRange(min=1), default=None,
              help="The prefix length to compare at, in runs of several (extract --mode screen --prefix-len 8,16,32).")
@out_option("Directory for compare.json, compare.md, sets.json and PNG figures.")
def compare(teacher, baselines, students, others, series, counts, prefix_len, out):
    """Join extraction runs on example_id and compare their memorized sets: rates with 95% intervals, paired tests
    between every two runs, overlaps, easy and teacher-only examples, each student's inherited examples, the
    hard-vs-soft ratio, memorization over training (--series), figures."""
    from evalmem.analysis import load_runs
    from evalmem.report import write_compare
    from evalmem.tables import compare_tables, markdown

    runs = load_runs(teacher, list(baselines), list(students), list(others), prefix_len, list(series))
    result = write_compare(out, runs, counts)
    click.echo(markdown(compare_tables(result)))


@click.command()
@click.option("--features", "features_dir", required=True, type=click.Path(file_okay=False),
              help="Directory written by `evalmem features`.")
@click.option("--labels", required=True, type=click.Path(file_okay=False),
              help="Extraction run whose exact matches are the positives (the student's).")
@out_option("Directory for predict.json, model.json (the model as data) and risk.parquet.")
@click.option("--feature", "columns", multiple=True, type=click.Choice(FEATURES + COUNT_FEATURES + MEMBERSHIP),
              help="Feature column to use; repeatable [default: the paper's four: teacher_ppl, baseline_ppl, "
                   "kl_teacher_baseline, zlib_entropy; suffix_count and window_count need --counts; loss, "
                   "zlib_ratio, min_k, min_k_pp, ref_loss_diff need --scores].")
@click.option("--scores", default=None, type=click.Path(file_okay=False),
              help="An `evalmem extract --mode screen` run of the teacher on the same data (membership scores).")
@click.option("--counts", default=None, type=click.Path(file_okay=False),
              help="Directory written by `evalmem dupcount` on the same data (count features, as log(1 + count)).")
@click.option("--prefix-len", type=click.IntRange(min=1), default=None,
              help="The labels' prefix length, in a run of several (extract --mode screen --prefix-len 8,16,32).")
@settings(PredictSettings, "protocol")
def predict(features_dir, labels, out, columns, scores, counts, prefix_len, protocol):
    """Fit the memorization predictor (logistic regression on standardized features): ROC-AUC, precision,
    recall and coefficients over resampled trials, and precision/recall at the real base rate."""
    from evalmem.predict import predict_run

    report = predict_run(features_dir, labels, out, columns, protocol, counts, prefix_len, scores)
    click.echo(json.dumps(report, indent=2))


@click.command("filter")
@click.option("--predictor", required=True, type=click.Path(file_okay=False),
              help="Directory written by `evalmem predict`.")
@click.option("--features", "features_dir", required=True, type=click.Path(file_okay=False),
              help="Features of DATA (`evalmem features`).")
@settings(DataSpec, "data", tokenizer=None, limit=None)
@out_option("Filtered data file (.jsonl or .parquet); keeps an `id` column so results still join.",
            directory=False)
@settings(FilterSettings, "selection")
def filter_(predictor, features_dir, data, out, selection):
    """Write the training data without the examples the predictor marks as memorization risks (ranked by the
    cross-fitted risk where the predictor was fit on this data), or without as many random ones (--random)."""
    from evalmem.filtering import filter_run

    click.echo(json.dumps(filter_run(predictor, features_dir, data, out, selection), indent=2))


def named(specs: tuple[str, ...], option: str) -> dict[str, str]:
    """NAME=DIR specs by name; a name given twice is refused (one of its runs would be silently dropped)."""
    from evalmem.analysis import parse_spec
    from evalmem.errors import InputError

    pairs = [parse_spec(s, s) for s in specs]
    names = [name for name, _ in pairs]
    for name in names:
        if names.count(name) > 1:
            raise InputError(f"{option} names {name} twice: give each student once")
    return dict(pairs)


@click.command("filter-effect")
@click.option("--before", multiple=True, required=True, metavar="NAME=DIR",
              help="A student's extraction run, distilled on all the data; repeatable.")
@click.option("--after", multiple=True, required=True, metavar="NAME=DIR",
              help="The same student distilled on the filtered data, extracted on the examples kept.")
@click.option("--control", multiple=True, required=True, metavar="NAME=DIR",
              help="The same student distilled on a random removal of the same size, extracted on its kept examples.")
@out_option("The JSON file to write.", directory=False)
def filter_effect(before, after, control, out):
    """The risk-filtering experiment's numbers per student: examples dropped, memorized on the kept examples
    before and after filtering, and after a random removal of the same size."""
    from evalmem.filtering import filter_effect as run

    click.echo(json.dumps(run(named(before, "--before"), named(after, "--after"), named(control, "--control"),
                               out), indent=2))


@click.command()
@click.option("--compare", "compare_dir", required=True, type=click.Path(file_okay=False),
              help="Directory written by `evalmem compare`.")
@click.option("--predict", "predict_dir", default=None, type=click.Path(file_okay=False),
              help="Directory written by `evalmem predict` (optional): the ROC curve, coefficients and each "
                   "example's risk (the `risk` column of its Parquet file).")
@click.option("--utility", default=None, type=click.Path(dir_okay=False),
              help="JSON file written by `evalmem perplexity` (optional; name its models as compare's runs).")
@click.option("--risk-filter", default=None, type=click.Path(dir_okay=False),
              help="JSON file written by `evalmem filter-effect` (optional).")
@out_option("The HTML file to write.", directory=False)
@settings(ReportSettings, "settings")
def report(compare_dir, predict_dir, utility, risk_filter, out, settings):
    """One self-contained HTML page from compare, predict and perplexity results: the paper-shaped summary
    (also printed) with one sentence per finding and its figure, the other figures, an explorer of the
    memorized examples' text (read from the runs compare.json names), and the detail tables."""
    from evalmem.report import write_report

    click.echo(write_report(compare_dir, predict_dir, out, utility, risk_filter, settings)["summary"])


@click.command()
@click.option("--recipe", required=True, type=click.Path(dir_okay=False),
              help="Experiment recipe: recipes/tiny-kjv.yaml (offline default, CPU), smollm2-kjv.yaml, or a GPU "
                   "recipe (pythia-fineweb.yaml, ...).")
@out_option("Experiment folder: models, runs, logs, OUT/report.html. Rerun to continue a stopped run.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key, e.g. --set evaluate.engine=hf (repeatable).")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run the recipe with this many seeds (OUT/seed-S each, from the recipe's seed) and tabulate each "
                   "finding's mean and range in OUT/seeds.md.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run up to this many stages at once where they do not read each other's outputs (each with "
                   "its share of the CPU cores: OMP_NUM_THREADS); 2 suits a 2-core CPU, 1 a single GPU.")
def pipeline(recipe, out, sets, seeds, jobs):
    """The paper's experiment end to end: base models, teacher, baselines, the teacher's corpus, soft and
    hard students, extraction on every checkpoint, features, predictor, utility, compare, and an HTML
    report ending with the paper-shaped table (printed too). Each stage's command and time are printed;
    finished stages are skipped, so a stopped pipeline continues where it stopped."""
    from evalmem.pipeline import pipeline_run, seeds_run, summary

    if seeds > 1:
        click.echo(seeds_run(recipe, out, sets, seeds, jobs))
    else:
        click.echo(summary(*pipeline_run(recipe, out, sets, jobs)))
