"""Typed settings: what a command is asked to do, built once from its options and passed whole.

Each field's metadata carries its command-line option (help text, range, choices): `evalmem.cli.options`
turns the fields into click options, so an option and its help exist in one place. Checks that involve
several fields (or that click cannot express) live in `__post_init__` and raise one-line errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import click

from evalmem.errors import InputError

SHARD_SIZE = 2048
MODES = ("decode", "screen", "verify", "auto")  # extract --mode; decode is the reference
FEATURES = ("teacher_ppl", "baseline_ppl", "kl_teacher_baseline", "zlib_entropy", "min_k_logprob")
DEFAULT_FEATURES = FEATURES[:4]  # the paper's four; min_k_logprob is opt-in
COUNT_FEATURES = ("suffix_count", "window_count")  # from `evalmem dupcount`, opt-in


def longest_prefix(prefix_len) -> int:
    """The longest of a run's prefix lengths (an int, or several with --mode screen): the one its examples are
    cut to."""
    return max(prefix_len) if isinstance(prefix_len, (list, tuple)) else prefix_len


def option(help: str, **click) -> dict:
    """A field's metadata as an option: its help and click settings (flag, min, choices, envvar, ...)."""
    return {"help": help, **click}


@dataclass(frozen=True)
class DataSpec:
    """Where a command's examples come from."""

    path: str = field(metadata=option(
        "A .jsonl/.json/.parquet/.txt file (one example per line for .txt) or a HF dataset id.", flag="--data"))
    split: str = field(default="train", metadata=option("Dataset split (hub datasets)."))
    config: str | None = field(default=None, metadata=option("Dataset configuration name (hub datasets)."))
    text_column: str = field(default="text", metadata=option(
        "Column holding the text; a pre-tokenized `input_ids` column is used as-is instead."))
    tokenizer: str | None = field(default=None, metadata=option("Tokenizer for text data [default: the model's]."))
    limit: int | None = field(default=None, metadata=option("Use only the first N examples.", min=1))


@dataclass(frozen=True)
class OutputSpec:
    """Where a sharded, resumable run writes, and which part of it this process computes."""

    out: str = field(metadata=option("Result directory (resumable: rerun the same command to continue).",
                                     path="dir"))
    shard_size: int = field(default=SHARD_SIZE, metadata=option(
        "Examples per result shard (the unit of progress and of resuming).", min=1))
    shard: str | None = field(default=None, metadata=option(
        "Compute only part I of N (result shards I-1, I-1+N, ...; 1 <= I <= N), to spread a run over N processes "
        "or machines with the same settings. Parts writing into the same --out need nothing more: the last to "
        "finish writes the results; parts written into other directories are combined with `evalmem merge`. "
        "[default: the whole run]", metavar="I/N"))

    def __post_init__(self):
        check_out(self.out)
        self.part  # noqa: B018  (refuse a bad --shard now)

    @property
    def part(self) -> tuple[int, int] | None:
        """`--shard I/N` as (I, N); None means the whole run."""
        if self.shard is None:
            return None
        i, _, n = self.shard.partition("/")
        try:
            part = int(i), int(n)
        except ValueError:
            part = 0, 0
        if not 1 <= part[0] <= part[1]:
            raise InputError(f"--shard must be I/N with 1 <= I <= N (part I of N parts), got {self.shard!r}")
        return part


def revision_field():
    """`--revision`, beside `--model`."""
    return field(default=None, metadata=option(
        "A revision of a hub --model: a branch, tag or commit, e.g. step143000 for one of Pythia's training "
        "checkpoints (the manifest records it and the commit it names). Local checkpoints are folders of their own."))


def adapter_field():
    """`--adapter`, beside `--model`."""
    return field(default=None, metadata=option(
        "A PEFT LoRA adapter folder to apply to --model (its base); a --model that is itself an adapter folder is "
        "applied to the base its adapter_config.json names. vllm applies LoRA itself; adapters on the embeddings "
        "or lm_head run as a temporary merged copy. See docs/adapters.md."))


def check_out(path: str, flag: str = "--out") -> str:
    """Refuse an empty output path (an unset shell variable) before anything is written."""
    if not str(path).strip():
        raise InputError(f"{flag} is empty: name the directory or file to write")
    return str(path)


def check_lengths(prefix_len: int, new_tokens: int, new_tokens_flag: str) -> None:
    if prefix_len <= 0:
        raise InputError(f"--prefix-len must be positive, got {prefix_len}")
    if new_tokens <= 0:
        raise InputError(f"{new_tokens_flag} must be positive, got {new_tokens}")


class SuffixWindow:
    """A job over prefix + suffix windows (extract, features): both lengths positive."""

    new_tokens_flag = "--suffix-len"

    def __post_init__(self):
        check_lengths(self.prefix_len, self.suffix_len, self.new_tokens_flag)

    @property
    def new_tokens(self) -> int:
        return self.suffix_len


class PrefixLengths(click.ParamType):
    """`--prefix-len 50` or a comma-separated list `8,16,32` (increasing): a tuple of ints."""

    name = "N[,N...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(int(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not an integer or a comma-separated list of integers", param, ctx)


SCREEN_ONLY = ("temperature", "top_k", "extraction_n", "extraction_p", "min_k", "reference")


@dataclass(frozen=True)
class ExtractSettings(SuffixWindow):
    """`evalmem extract`: discoverable extraction of every example."""

    model: str = field(metadata=option("Model: a local Hugging Face folder, a hub id or a LoRA adapter folder."))
    adapter: str | None = adapter_field()
    revision: str | None = revision_field()
    prefix_lens: tuple[int, ...] = field(default=(50,), metadata=option(
        "Prompt tokens per example; with --mode screen several, comma-separated (8,16,32): one row per example "
        "and prefix length, from one pass (each example cut to the longest prefix + the suffix).",
        flag="--prefix-len", type=PrefixLengths()))
    suffix_len: int = field(default=50, metadata=option(
        "Tokens greedily decoded and compared with the true continuation."))
    mode: str = field(default="decode", metadata=option(
        "decode: greedy-decode every suffix with --engine; all columns (the reference). "
        "screen: one teacher-forced pass over each window: exact_match and match_len at every --prefix-len, "
        "suffix_logprobs, extraction_logprob and the membership scores (loss, zlib_ratio, min_k, min_k_pp, "
        "ref_loss_diff). verify: decode only up to each example's first mismatch; exact_match and match_len. "
        "auto: decode each example only while it can still match approximately (edit distance <= 10%): "
        "exact_match, match_len and approx_match of every example, the other columns where it was decoded to "
        "the end. Columns a mode does not compute are nulls (summary null_columns); near_tie flags rows decided "
        "by a logit gap so small that another engine or dtype could round it the other way.", choices=MODES))
    strict: bool = field(default=False, metadata=option(
        "Fail on examples shorter than prefix + suffix instead of skipping them."))
    temperature: float | None = field(default=None, metadata=option(
        "Sampling temperature of extraction_logprob (screen) [default: 1.0].", min=0, min_open=True))
    top_k: int | None = field(default=None, metadata=option(
        "Top-k of extraction_logprob's sampling, 0 = none (screen) [default: 0].", min=0))
    extraction_n: int | None = field(default=None, metadata=option(
        "Samples n of (n, p)-discoverable extraction in the summary (screen) [default: 100].", min=1))
    extraction_p: float | None = field(default=None, metadata=option(
        "Probability p of (n, p)-discoverable extraction (screen) [default: 0.5].", min=0, min_open=True, max=1,
        max_open=True))
    min_k: float | None = field(default=None, metadata=option(
        "Share k of the lowest token scores that Min-K% and Min-K%++ average (screen) [default: 0.2].", min=0,
        min_open=True, max=1))
    reference: str | None = field(default=None, metadata=option(
        "Reference model for ref_loss_diff = loss - the reference's loss (screen; same tokenizer)."))

    def __post_init__(self):
        lens = self.prefix_lens
        if not lens:
            raise InputError("--prefix-len needs at least one length")
        if list(lens) != sorted(set(lens)):
            raise InputError(f"--prefix-len lengths must increase, without repeats, got {','.join(map(str, lens))}")
        check_lengths(min(lens), self.suffix_len, self.new_tokens_flag)
        if self.mode != "screen" and (len(lens) > 1 or any(getattr(self, k) is not None for k in SCREEN_ONLY)):
            given = "several --prefix-len" if len(lens) > 1 else \
                "--" + next(k for k in SCREEN_ONLY if getattr(self, k) is not None).replace("_", "-")
            raise InputError(f"{given} needs --mode screen (one pass gives every prefix length and score)")

    @property
    def prefix_len(self) -> int:
        """The longest prefix: every example is cut to it + the suffix."""
        return longest_prefix(self.prefix_lens)

    def screen_settings(self) -> dict:
        """The screen mode's settings, defaults filled in (what the manifest records)."""
        return {"temperature": self.temperature or 1.0, "top_k": self.top_k or 0,
                "extraction_n": self.extraction_n or 100, "extraction_p": self.extraction_p or 0.5,
                "min_k": self.min_k or 0.2, "reference": self.reference}


@dataclass(frozen=True)
class GenerateSettings:
    """`evalmem generate`: the teacher continues each example's prefix."""

    model: str = field(metadata=option(
        "Teacher model: a local Hugging Face folder, a hub id or a LoRA adapter folder."))
    adapter: str | None = adapter_field()
    revision: str | None = revision_field()
    prefix_len: int = field(default=50, metadata=option("Prompt tokens per example."))
    max_new_tokens: int = field(default=206, metadata=option(
        "Tokens generated after each prefix (paper: 50 + 206 = 256-token windows)."))
    temperature: float = field(default=0.0, metadata=option("Sampling temperature; 0 = greedy decoding.", min=0))
    top_p: float = field(default=1.0, metadata=option("Nucleus sampling mass (with --temperature).", min=0,
                                                      min_open=True, max=1))
    seed: int = field(default=0, metadata=option(
        "Sampling seed (each prompt's sample depends only on it and the prompt)."))

    new_tokens_flag = "--max-new-tokens"

    def __post_init__(self):
        check_lengths(self.prefix_len, self.max_new_tokens, self.new_tokens_flag)
        if not math.isfinite(self.temperature):
            raise InputError(f"--temperature must be a finite number >= 0, got {self.temperature}")

    @property
    def new_tokens(self) -> int:
        return self.max_new_tokens

    def sampling(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}


@dataclass(frozen=True)
class FeatureSettings(SuffixWindow):
    """`evalmem features`: the predictor's features of every example."""

    teacher: str = field(metadata=option(
        "Teacher model: a local Hugging Face folder, a hub id or a LoRA adapter folder (applied to its base)."))
    baseline: str = field(metadata=option("Baseline model (same tokenizer as the teacher), or a LoRA adapter folder."))
    prefix_len: int = field(default=50, metadata=option("Prompt tokens per example (the window starts there)."))
    suffix_len: int = field(default=50, metadata=option(
        "Tokens after the prefix; features use the whole prefix + suffix window, as extract does."))
    batch_size: int = field(default=32, metadata=option(
        "Windows per forward pass (both models' full logits for a batch are held at once).", min=1))
    dtype: str = field(default="auto", metadata=option(
        "Weights dtype; auto = the dtype the teacher was saved in.", choices=("auto", "float32", "bfloat16",
                                                                              "float16")))
    min_k: float = field(default=0.2, metadata=option(
        "Fraction k of least likely tokens averaged by the Min-K% feature.", min=0, min_open=True, max=1))
    teacher_cache: str | None = field(default=None, metadata=option(
        "A finished `evalmem teacher-cache` of the teacher on these windows (window length PREFIX-LEN + "
        "SUFFIX-LEN): kl_teacher_baseline is then the KL over its top-k tokens and one tail bucket.",
        type=click.Path(file_okay=False)))


@dataclass(frozen=True)
class TeacherCacheSettings:
    """`evalmem teacher-cache`: the teacher's top-k next-token log-probabilities of every training window."""

    model: str = field(metadata=option(
        "Teacher model: a local Hugging Face folder, a hub id or a LoRA adapter folder (applied to its base)."))
    window_len: int = field(default=256, metadata=option(
        "Tokens per window: each example's first WINDOW-LEN, as the trainers cut them (recipe data.window_len); "
        "shorter examples are skipped.", min=2))
    k: int = field(default=64, metadata=option(
        "Log-probabilities kept per position (the K most likely tokens; the rest as one tail mass).", min=1))
    batch_size: int = field(default=16, metadata=option("Windows per forward pass.", min=1))
    dtype: str = field(default="auto", metadata=option(
        "Weights dtype; auto = the dtype the teacher was saved in.", choices=("auto", "float32", "bfloat16",
                                                                              "float16")))

    new_tokens_flag = "--window-len"
    new_tokens = 0  # the whole window is the "prefix": nothing is generated

    @property
    def prefix_len(self) -> int:
        return self.window_len


@dataclass(frozen=True)
class PredictSettings:
    """`evalmem predict`: the memorization predictor's protocol (the paper's by default)."""

    trials: int = field(default=100, metadata=option("Resampling trials.", min=1))
    neg_ratio: float = field(default=3.0, metadata=option("Negatives sampled per positive in each trial.", min=0,
                                                          min_open=True))
    test_size: float = field(default=0.3, metadata=option(
        "Fraction of each trial's examples held out for testing.", min=0, min_open=True, max=1, max_open=True))
    seed: int = field(default=0, metadata=option("Seed of the resampling (trials, folds and bootstrap)."))
    folds: int = field(default=5, metadata=option(
        "Folds of the cross-fitted risk (risk.parquet): each example scored by a model fit on the others.", min=2))
    bootstrap: int = field(default=1000, metadata=option(
        "Bootstrap resamples of the 95% intervals of ROC-AUC and average precision on the cross-fitted risk "
        "(predict.json `intervals`; memorized and unmemorized examples resampled separately).", min=1))


@dataclass(frozen=True)
class FilterSettings:
    """`evalmem filter`: which examples to drop."""

    threshold: float | None = field(default=None, metadata=option(
        "Drop examples whose predicted memorization probability is at least P (the model was fit on 1:NEG-RATIO "
        "resampled data, so probabilities assume that prior).", min=0, max=1))
    top_frac: float | None = field(default=None, metadata=option(
        "Drop the fraction F of scored examples with the highest risk.", min=0, max=1))
    top_n: int | None = field(default=None, metadata=option("Drop the N examples with the highest risk.", min=0))
    as_many_as: str | None = field(default=None, metadata=option(
        "Drop as many examples as the extraction run DIR memorized (the highest risk first).", metavar="DIR"))
    random: bool = field(default=False, metadata=option(
        "Drop a random selection of the same size instead of the riskiest (a control; --seed)."))
    seed: int = field(default=0, metadata=option("Seed of --random."))

    def __post_init__(self):
        given = [self.threshold, self.top_frac, self.top_n, self.as_many_as]
        if sum(v is not None for v in given) != 1:
            raise InputError("give exactly one of --threshold, --top-frac, --top-n and --as-many-as")


@dataclass(frozen=True)
class ReportSettings:
    """`evalmem report`: what the page embeds besides the tables and figures."""

    max_examples: int = field(default=2000, metadata=option(
        "Examples embedded in the explorer at most, the most memorized first (the rest are counted); bounds the "
        "page's size (about 0.7 KB per example of 100 tokens).", min=0))
