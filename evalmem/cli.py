"""The `evalmem` command line."""

from __future__ import annotations

import json

import click

from evalmem.runner import SHARD_SIZE


def model_options(f):
    """Options shared by every command that loads a model in an engine."""
    options = [
        click.option("--engine", type=click.Choice(["vllm", "hf"]), default="vllm", show_default=True,
                     help="vllm: vLLM offline engine (fast). hf: transformers generate (the reference)."),
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
                     help="Prompts per generate call (hf engine)."),
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
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
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
@model_options
def extract(model, data, split, data_config, text_column, tokenizer, limit, prefix_len, shard_size, suffix_len,
            out, strict, **engine_kwargs):
    """Discoverable extraction: greedy-decode SUFFIX-LEN tokens from each example's first PREFIX-LEN tokens
    and compare them with the true continuation. Writes OUT/results.parquet (one row per example) and
    OUT/summary.json; rerun the same command to resume an interrupted run."""
    from evalmem.extraction import extract_run

    summary = extract_run(model=model, data=data, split=split, data_config=data_config, text_column=text_column,
                          tokenizer=tokenizer, limit=limit, prefix_len=prefix_len, suffix_len=suffix_len,
                          shard_size=shard_size, out=out, strict=strict, **engine_kwargs)
    click.echo(json.dumps(summary, indent=2))


# --- generation commands (generate) ---


# --- analysis commands (features, compare, predict, filter, report) ---
