"""The `evalmem` command line."""

from __future__ import annotations

import json

import click

from evalmem.errors import OneLineGroup
from evalmem.runner import SHARD_SIZE


def model_options(f):
    """Options shared by every command that loads a model in an engine."""
    options = [
        click.option("--engine", type=click.Choice(["vllm", "hf", "server", "ray"]), default="vllm",
                     show_default=True,
                     help="vllm: vLLM offline engine (fast). hf: transformers generate (the reference). server: a "
                          "running vLLM server (--base-url) that serves --model (its id or its model path; "
                          "--model is also read here for the config and tokenizer). ray: Ray Data with vLLM "
                          "replicas on the cluster at RAY_ADDRESS (one per --tensor-parallel-size GPUs; needs the "
                          "extra evalmem[ray]; use a large --shard-size)."),
        click.option("--base-url", default=None, help="The server engine's OpenAI-compatible API, e.g. "
                     "http://127.0.0.1:8000/v1 (not a run setting: resume against any server of the same model)."),
        click.option("--api-key", default=None, envvar="EVALMEM_API_KEY", show_envvar=True,
                     help="API key of the server (its --api-key), if it asks for one."),
        click.option("--concurrency", type=click.IntRange(min=1), default=64, show_default=True,
                     help="Requests in flight to the server (it batches them; one prompt each)."),
        click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=600.0,
                     show_default=True, help="Seconds one server request may take before it is retried "
                                             "(4 retries with backoff on connection errors, timeouts and 5xx)."),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                     show_default=True, help="Weights/activations dtype; auto = the dtype the model was saved in."),
        click.option("--tensor-parallel-size", type=click.IntRange(min=1), default=1, show_default=True,
                     help="GPUs to shard the model over (vllm)."),
        click.option("--max-model-len", type=click.IntRange(min=1), default=None,
                     help="Longest sequence the engine plans for [default: the job's prefix + new tokens]."),
        click.option("--kv-cache-gb", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="KV cache size in GiB (vllm) [default: GPU: 90% of GPU memory; CPU: sized to the job]."),
        click.option("--max-num-seqs", type=click.IntRange(min=1), default=512, show_default=True,
                     help="Sequences the vllm engine batches at once."),
        click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Prompts per generate call (hf engine); windows per forward pass (extract --mode "
                          "screen/verify/auto, where on CPU smaller is faster: screen 16, verify and auto 64)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def data_options(f):
    """Options shared by every command that reads training data."""
    options = [
        click.option("--data", required=True,
                     help="A .jsonl/.json/.parquet/.txt file (one example per line for .txt) or a HF dataset id."),
        click.option("--split", default="train", show_default=True, help="Dataset split (hub datasets)."),
        click.option("--config", "data_config", default=None, help="Dataset configuration name (hub datasets)."),
        click.option("--text-column", default="text", show_default=True,
                     help="Column holding the text; a pre-tokenized `input_ids` column is used as-is instead."),
        click.option("--tokenizer", default=None, help="Tokenizer for text data [default: the model's]."),
        click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N examples."),
        click.option("--prefix-len", type=int, default=50, show_default=True, help="Prompt tokens per example."),
        click.option("--shard-size", type=click.IntRange(min=1), default=SHARD_SIZE, show_default=True,
                     help="Examples per result shard (the unit of progress and of resuming)."),
        click.option("--shard", default=None, metavar="I/N",
                     help="Compute only part I of N (result shards I-1, I-1+N, ...; 1 <= I <= N), to spread a run "
                          "over N processes or machines with the same settings. Parts writing into the same --out "
                          "need nothing more: the last to finish writes the results; parts written into other "
                          "directories are combined with `evalmem merge`. [default: the whole run]"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.group(cls=OneLineGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="evalmem")
def main():
    """Measure training-data memorization of language models, fast (vLLM)."""


@main.command()
@click.option("--model", required=True, help="Model: a local Hugging Face folder or a hub id.")
@data_options
@click.option("--suffix-len", type=int, default=50, show_default=True,
              help="Tokens greedily decoded and compared with the true continuation.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Result directory (resumable).")
@click.option("--strict", is_flag=True, help="Fail on examples shorter than prefix + suffix instead of skipping them.")
@click.option("--mode", type=click.Choice(["decode", "screen", "verify", "auto"]), default="decode",
              show_default=True,
              help="decode: greedy-decode every suffix with --engine; all columns (the reference). "
                   "screen: one teacher-forced forward pass over prefix+suffix; exact_match, match_len and "
                   "suffix_logprobs (log-probability of each true suffix token). "
                   "verify: decode only up to each example's first mismatch, with --engine (vllm: a logits "
                   "processor ends each request at its first mismatch; hf: a KV-cache loop that drops finished "
                   "rows, --batch-size windows at a time); exact_match and match_len. "
                   "auto: decode each example only while it can still match approximately (edit distance "
                   "<= 10%; a lower bound on the final distance drops it as soon as it cannot): exact_match, "
                   "match_len and approx_match of every example, and token_accuracy, edit_distance and "
                   "generated_ids where it was decoded to the end (the approximate matches and near misses). "
                   "screen and auto run in transformers (--engine is ignored; --dtype and --batch-size apply). "
                   "screen, verify and auto give decode's results, write the columns they do not compute as nulls "
                   "(summary null_columns), and flag near_tie rows (an arg-max deciding exact_match/match_len by "
                   "a logit gap so small that another engine or dtype could round it the other way; counted in "
                   "summary n_near_ties).")
@model_options
def extract(model, data, split, data_config, text_column, tokenizer, limit, prefix_len, shard_size, shard,
            suffix_len, out, strict, mode, **engine_kwargs):
    """Discoverable extraction: greedy-decode SUFFIX-LEN tokens from each example's first PREFIX-LEN tokens
    and compare them with the true continuation (--mode screen/verify/auto: the same results with less work
    than decoding every suffix). Writes OUT/results.parquet (one row per example) and OUT/summary.json; rerun the
    same command to resume an interrupted run."""
    from evalmem.extraction import extract_run

    summary = extract_run(model=model, data=data, split=split, data_config=data_config, text_column=text_column,
                          tokenizer=tokenizer, limit=limit, prefix_len=prefix_len, suffix_len=suffix_len,
                          shard_size=shard_size, shard=shard, out=out, strict=strict, mode=mode, **engine_kwargs)
    click.echo(json.dumps(summary, indent=2))


# --- generation commands (generate) ---


@main.command()
@click.option("--model", required=True, help="Teacher model: a local Hugging Face folder or a hub id.")
@data_options
@click.option("--max-new-tokens", type=int, default=206, show_default=True,
              help="Tokens generated after each prefix (paper: 50 + 206 = 256-token windows).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Corpus directory (resumable).")
@click.option("--temperature", type=float, default=0.0, show_default=True,
              help="Sampling temperature; 0 = greedy decoding.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling mass (with --temperature).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Sampling seed (each prompt's sample depends only on it and the prompt).")
@model_options
def generate(model, data, split, data_config, text_column, tokenizer, limit, prefix_len, shard_size, shard,
             max_new_tokens, out, temperature, top_p, seed, **engine_kwargs):
    """Hard-label corpus: continue each example's first PREFIX-LEN tokens with MAX-NEW-TOKENS generated ones.
    Writes OUT/results.parquet (example_id, input_ids = prefix + continuation, text) and OUT/summary.json;
    load it with datasets.load_dataset("parquet", data_files="OUT/results.parquet"). Rerun to resume."""
    from evalmem.generation import generate_run

    summary = generate_run(model=model, data=data, split=split, data_config=data_config, text_column=text_column,
                           tokenizer=tokenizer, limit=limit, prefix_len=prefix_len, max_new_tokens=max_new_tokens,
                           shard_size=shard_size, shard=shard, out=out, temperature=temperature, top_p=top_p,
                           seed=seed, **engine_kwargs)
    click.echo(json.dumps(summary, indent=2))


# --- scale-out (merge) ---


@main.command()
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


# --- analysis commands (features, compare, predict, filter, report) ---


@main.command()
@click.option("--teacher", required=True, help="Teacher model: a local Hugging Face folder or a hub id.")
@click.option("--baseline", required=True, help="Baseline model (same tokenizer as the teacher).")
@data_options
@click.option("--suffix-len", type=int, default=50, show_default=True,
              help="Tokens after the prefix; features use the whole prefix + suffix window, as extract does.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Features directory (resumable).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Windows per forward pass (both models' full logits for a batch are held at once).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="Weights dtype; auto = the dtype the teacher was saved in.")
@click.option("--min-k", type=float, default=0.2, show_default=True,
              help="Fraction k of least likely tokens averaged by the Min-K% feature.")
def features(teacher, baseline, data, split, data_config, text_column, tokenizer, limit, prefix_len, shard_size,
             shard, suffix_len, out, batch_size, dtype, min_k):
    """Predictor features per example: teacher and baseline perplexity, KL(teacher || baseline), zlib entropy
    and Min-K% probability. Writes OUT/features.parquet and OUT/summary.json; rerun to resume."""
    from evalmem.features import features_run

    summary = features_run(teacher=teacher, baseline=baseline, data=data, split=split, data_config=data_config,
                           text_column=text_column, tokenizer=tokenizer, limit=limit, prefix_len=prefix_len,
                           new_tokens=suffix_len, shard_size=shard_size, shard=shard, out=out, batch_size=batch_size,
                           dtype=dtype, min_k=min_k)
    click.echo(json.dumps(summary, indent=2))


@main.command()
@click.option("--model", "models", multiple=True, required=True,
              help="Model [NAME=]PATH (local folder or hub id); repeat to score several on the same windows.")
@click.option("--data", required=True, help="Held-out data: a .jsonl/.json/.parquet/.txt file or a HF dataset id.")
@click.option("--split", default="train", show_default=True, help="Dataset split (hub datasets).")
@click.option("--config", "data_config", default=None, help="Dataset configuration name (hub datasets).")
@click.option("--text-column", default="text", show_default=True,
              help="Column holding the text; a pre-tokenized `input_ids` column is used as-is instead.")
@click.option("--tokenizer", default=None, help="Tokenizer for text data [default: the first model's].")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N examples.")
@click.option("--window-len", type=int, default=100, show_default=True,
              help="Tokens per window (each example's first WINDOW-LEN; shorter examples are skipped).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Windows per forward pass.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="Weights dtype; auto = the dtype each model was saved in.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The JSON file to write.")
def perplexity(models, data, split, data_config, text_column, tokenizer, limit, window_len, batch_size, dtype, out):
    """Utility: each model's perplexity over the same held-out windows (tokens 2..WINDOW-LEN, teacher
    forcing), e.g. to see what memorization costs or distillation keeps."""
    from evalmem.analysis import parse_spec
    from evalmem.features import perplexity_run

    specs = [parse_spec(m, m.rstrip("/").rsplit("/", 1)[-1]) for m in models]
    result = perplexity_run(models=specs, data=data, split=split, data_config=data_config, text_column=text_column,
                            tokenizer=tokenizer, limit=limit, window_len=window_len, batch_size=batch_size,
                            dtype=dtype, out=out)
    click.echo(json.dumps(result, indent=2))


@main.command()
@click.option("--teacher", default=None, help="Teacher extraction run: [NAME=]DIR.")
@click.option("--baseline", "baselines", multiple=True,
              help="Baseline run [NAME=]DIR; repeat for several seeds.")
@click.option("--student", "students", multiple=True, help="Student run NAME=DIR (e.g. soft=runs/soft); repeatable.")
@click.option("--run", "others", multiple=True, help="Any other run [NAME=]DIR to tabulate and overlap; repeatable.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory for compare.json, compare.md, sets.json and PNG figures.")
def compare(teacher, baselines, students, others, out):
    """Join extraction runs on example_id and compare their memorized sets: rates, overlaps, easy and
    teacher-only examples, each student's inherited examples, hard-vs-soft ratio, figures."""
    from evalmem.analysis import load_runs
    from evalmem.report import compare_tables, markdown, write_compare

    result = write_compare(out, load_runs(teacher, list(baselines), list(students), list(others)))
    click.echo(markdown(compare_tables(result)))


@main.command()
@click.option("--features", "features_dir", required=True, type=click.Path(file_okay=False),
              help="Directory written by `evalmem features`.")
@click.option("--labels", required=True, type=click.Path(file_okay=False),
              help="Extraction run whose exact matches are the positives (the student's).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory for predict.json and model.joblib.")
@click.option("--feature", "columns", multiple=True,
              help="Feature column to use; repeatable [default: the paper's four: teacher_ppl, baseline_ppl, "
                   "kl_teacher_baseline, zlib_entropy; min_k_logprob is also available].")
@click.option("--trials", type=click.IntRange(min=1), default=100, show_default=True, help="Resampling trials.")
@click.option("--neg-ratio", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True,
              help="Negatives sampled per positive in each trial.")
@click.option("--test-size", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.3,
              show_default=True, help="Fraction of each trial's examples held out for testing.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the resampling.")
def predict(features_dir, labels, out, columns, trials, neg_ratio, test_size, seed):
    """Fit the memorization predictor (logistic regression on standardized features): ROC-AUC, precision,
    recall and coefficients over resampled trials, and precision/recall at the real base rate."""
    from evalmem.predict import predict_run

    report = predict_run(features=features_dir, labels=labels, out=out, columns=columns, trials=trials,
                         neg_ratio=neg_ratio, test_size=test_size, seed=seed)
    click.echo(json.dumps(report, indent=2))


@main.command("filter")
@click.option("--predictor", required=True, type=click.Path(file_okay=False),
              help="Directory written by `evalmem predict`.")
@click.option("--features", "features_dir", required=True, type=click.Path(file_okay=False),
              help="Features of DATA (`evalmem features`).")
@click.option("--data", required=True, help="The training data to filter (the data the features were computed on).")
@click.option("--split", default="train", show_default=True, help="Dataset split (hub datasets).")
@click.option("--config", "data_config", default=None, help="Dataset configuration name (hub datasets).")
@click.option("--text-column", default="text", show_default=True, help="Column holding the text.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Filtered data file (.jsonl or .parquet); keeps an `id` column so results still join.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Drop examples whose predicted memorization probability is at least P (the model was fit "
                   "on 1:NEG-RATIO resampled data, so probabilities assume that prior).")
@click.option("--top-frac", type=click.FloatRange(0, 1), default=None,
              help="Drop the fraction F of scored examples with the highest predicted probability.")
def filter_(predictor, features_dir, data, split, data_config, text_column, out, threshold, top_frac):
    """Write the training data without the examples the predictor marks as memorization risks."""
    from evalmem.predict import filter_run

    result = filter_run(predictor=predictor, features=features_dir, data=data, split=split, data_config=data_config,
                        text_column=text_column, out=out, threshold=threshold, top_frac=top_frac)
    click.echo(json.dumps(result, indent=2))


@main.command()
@click.option("--compare", "compare_dir", required=True, type=click.Path(file_okay=False),
              help="Directory written by `evalmem compare`.")
@click.option("--predict", "predict_dir", default=None, type=click.Path(file_okay=False),
              help="Directory written by `evalmem predict` (optional).")
@click.option("--utility", default=None, type=click.Path(dir_okay=False),
              help="JSON file written by `evalmem perplexity` (optional; name its models as compare's runs).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The HTML file to write.")
def report(compare_dir, predict_dir, utility, out):
    """One self-contained HTML page (tables and embedded figures) from compare, predict and perplexity
    results, ending with the paper-shaped summary table (also printed)."""
    from evalmem.report import write_report

    click.echo(write_report(compare_dir, predict_dir, out, utility)["summary"])


@main.command()
@click.option("--recipe", required=True, type=click.Path(dir_okay=False),
              help="Experiment recipe: train/recipes/tiny-kjv.yaml (offline default, CPU), smollm2-kjv.yaml, "
                   "or a GPU recipe (pythia-fineweb.yaml, ...).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Experiment folder: models, runs, logs, OUT/report.html. Rerun to continue a stopped run.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key, e.g. --set evaluate.engine=hf (repeatable).")
def pipeline(recipe, out, overrides):
    """The paper's experiment end to end: base models, teacher, baselines, the teacher's corpus, soft and
    hard students, extraction on every checkpoint, features, predictor, utility, compare, and an HTML
    report ending with the paper-shaped table (printed too). Each stage's command and time are printed;
    finished stages are skipped, so a stopped pipeline continues where it stopped."""
    from evalmem.pipeline import pipeline_run, summary
    from train.cli import parse_overrides

    recipe, record = pipeline_run(recipe, out, parse_overrides(overrides))
    click.echo(summary(recipe, record))
