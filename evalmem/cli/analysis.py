"""The commands that analyse results: compare, predict, filter, report; and pipeline, the whole experiment."""

from __future__ import annotations

import json

import click

from evalmem.cli.options import out_option, settings
from evalmem.settings import FEATURES, DataSpec, PredictSettings, ReportSettings


@click.command()
@click.option("--teacher", default=None, help="Teacher extraction run: [NAME=]DIR.")
@click.option("--baseline", "baselines", multiple=True, help="Baseline run [NAME=]DIR; repeat for several seeds.")
@click.option("--student", "students", multiple=True, help="Student run NAME=DIR (e.g. soft=runs/soft); repeatable.")
@click.option("--run", "others", multiple=True, help="Any other run [NAME=]DIR to tabulate and overlap; repeatable.")
@out_option("Directory for compare.json, compare.md, sets.json and PNG figures.")
def compare(teacher, baselines, students, others, out):
    """Join extraction runs on example_id and compare their memorized sets: rates, overlaps, easy and
    teacher-only examples, each student's inherited examples, hard-vs-soft ratio, figures."""
    from evalmem.analysis import load_runs
    from evalmem.report import write_compare
    from evalmem.tables import compare_tables, markdown

    result = write_compare(out, load_runs(teacher, list(baselines), list(students), list(others)))
    click.echo(markdown(compare_tables(result)))


@click.command()
@click.option("--features", "features_dir", required=True, type=click.Path(file_okay=False),
              help="Directory written by `evalmem features`.")
@click.option("--labels", required=True, type=click.Path(file_okay=False),
              help="Extraction run whose exact matches are the positives (the student's).")
@out_option("Directory for predict.json and model.joblib.")
@click.option("--feature", "columns", multiple=True, type=click.Choice(FEATURES),
              help="Feature column to use; repeatable [default: the paper's four: teacher_ppl, baseline_ppl, "
                   "kl_teacher_baseline, zlib_entropy].")
@settings(PredictSettings, "protocol")
def predict(features_dir, labels, out, columns, protocol):
    """Fit the memorization predictor (logistic regression on standardized features): ROC-AUC, precision,
    recall and coefficients over resampled trials, and precision/recall at the real base rate."""
    from evalmem.predict import predict_run

    click.echo(json.dumps(predict_run(features_dir, labels, out, columns, protocol), indent=2))


@click.command("filter")
@click.option("--predictor", required=True, type=click.Path(file_okay=False),
              help="Directory written by `evalmem predict`.")
@click.option("--features", "features_dir", required=True, type=click.Path(file_okay=False),
              help="Features of DATA (`evalmem features`).")
@settings(DataSpec, "data", tokenizer=None, limit=None)
@out_option("Filtered data file (.jsonl or .parquet); keeps an `id` column so results still join.",
            directory=False)
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Drop examples whose predicted memorization probability is at least P (the model was fit "
                   "on 1:NEG-RATIO resampled data, so probabilities assume that prior).")
@click.option("--top-frac", type=click.FloatRange(0, 1), default=None,
              help="Drop the fraction F of scored examples with the highest predicted probability.")
def filter_(predictor, features_dir, data, out, threshold, top_frac):
    """Write the training data without the examples the predictor marks as memorization risks."""
    from evalmem.predict import filter_run

    click.echo(json.dumps(filter_run(predictor, features_dir, data, out, threshold, top_frac), indent=2))


@click.command()
@click.option("--compare", "compare_dir", required=True, type=click.Path(file_okay=False),
              help="Directory written by `evalmem compare`.")
@click.option("--predict", "predict_dir", default=None, type=click.Path(file_okay=False),
              help="Directory written by `evalmem predict` (optional): the ROC curve, coefficients and each "
                   "example's risk (the `risk` column of its Parquet file).")
@click.option("--utility", default=None, type=click.Path(dir_okay=False),
              help="JSON file written by `evalmem perplexity` (optional; name its models as compare's runs).")
@out_option("The HTML file to write.", directory=False)
@settings(ReportSettings, "settings")
def report(compare_dir, predict_dir, utility, out, settings):
    """One self-contained HTML page from compare, predict and perplexity results: the paper-shaped summary
    (also printed) with one sentence per finding and its figure, the other figures, an explorer of the
    memorized examples' text (read from the runs compare.json names), and the detail tables."""
    from evalmem.report import write_report

    click.echo(write_report(compare_dir, predict_dir, out, utility, settings)["summary"])


@click.command()
@click.option("--recipe", required=True, type=click.Path(dir_okay=False),
              help="Experiment recipe: recipes/tiny-kjv.yaml (offline default, CPU), smollm2-kjv.yaml, or a GPU "
                   "recipe (pythia-fineweb.yaml, ...).")
@out_option("Experiment folder: models, runs, logs, OUT/report.html. Rerun to continue a stopped run.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key, e.g. --set evaluate.engine=hf (repeatable).")
def pipeline(recipe, out, sets):
    """The paper's experiment end to end: base models, teacher, baselines, the teacher's corpus, soft and
    hard students, extraction on every checkpoint, features, predictor, utility, compare, and an HTML
    report ending with the paper-shaped table (printed too). Each stage's command and time are printed;
    finished stages are skipped, so a stopped pipeline continues where it stopped."""
    from evalmem.pipeline import pipeline_run, summary

    recipe, record = pipeline_run(recipe, out, sets)
    click.echo(summary(recipe, record))
