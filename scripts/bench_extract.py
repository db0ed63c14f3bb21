"""Benchmark `evalmem extract` (vLLM) against a plain transformers batched `generate` loop.

Same model, same examples, one process: builds a Llama of about 9.3M parameters (vocab 8192) with a
locally trained tokenizer, cuts N KJV windows of prefix+suffix tokens, runs extraction with each engine
and prints examples/s, the ratio between them, engine start-up apart, and each one's ratio to the FLOP
bound (2 x matmul parameters x tokens processed / this machine's measured matmul rate).

    .venv/bin/python scripts/bench_extract.py [--n 2000] [--max-num-seqs 256 512] [--dtype bfloat16]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from evalmem.cli import main as evalmem_main
from evalmem.tiny import build_model, kjv_verses, token_windows, train_tokenizer, write_jsonl


def matmul_flops_per_second(n: int = 1024, repeats: int = 20) -> float:
    """This machine's fp32 matmul rate, the yardstick of the FLOP bound."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def matmul_params(model_dir: str) -> int:
    """Parameters used in matrix products: all but the input embedding table."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()


def run(engine: str, model: str, data: Path, out: Path, extra: list[str]) -> dict:
    args = ["extract", "--model", model, "--data", str(data), "--out", str(out), "--engine", engine, *extra]
    try:
        evalmem_main(args, standalone_mode=False)
    except SystemExit:
        pass
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="examples")
    parser.add_argument("--prefix-len", type=int, default=50)
    parser.add_argument("--suffix-len", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--hf-batch-size", type=int, default=256)
    parser.add_argument("--dtype", default="float32", help="both engines' dtype (the FLOP bound stays fp32's)")
    parser.add_argument("--max-num-seqs", type=int, nargs="+", default=[512], help="vLLM settings to compare")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    verses = kjv_verses()
    tokenizer = train_tokenizer(verses[:20000], root / "tok", vocab_size=8192)
    model = str(build_model(root / "model", tokenizer, hidden=args.hidden, layers=args.layers, heads=4))
    seq = args.prefix_len + args.suffix_len
    windows = token_windows(verses, tokenizer, seq)[: args.n]
    data = write_jsonl(root / "data.jsonl", [{"input_ids": w} for w in windows])
    params = matmul_params(model)
    rate = matmul_flops_per_second()
    bound = 2 * params * len(windows) * seq / rate
    print(f"model: {params / 1e6:.2f}M matmul parameters; {len(windows)} examples of {args.prefix_len}+"
          f"{args.suffix_len} tokens; matmul rate {rate / 1e9:.0f} GFLOP/s; FLOP bound {bound:.1f} s; "
          f"torch threads {torch.get_num_threads()}")

    common = ["--prefix-len", str(args.prefix_len), "--suffix-len", str(args.suffix_len),
              "--shard-size", str(len(windows)), "--dtype", args.dtype]
    results = {"transformers generate": run("hf", model, data, root / "hf", common + ["--batch-size",
                                                                                      str(args.hf_batch_size)])}
    for seqs in args.max_num_seqs:
        results[f"evalmem vllm (max_num_seqs={seqs})"] = run(
            "vllm", model, data, root / f"vllm{seqs}", common + ["--max-num-seqs", str(seqs)])
    baseline = results["transformers generate"]
    exact = {s["exact_match_count"] for s in results.values()}
    print(f"\n{'engine':<34} {'ex/s':>8} {'seconds':>8} {'start-up':>9} {'vs generate':>12} {'vs FLOP bound':>14}")
    for name, s in results.items():
        print(f"{name:<34} {s['examples_per_second']:>8.1f} {s['seconds']:>8.1f} {s['startup_seconds']:>9.1f} "
              f"{baseline['seconds'] / s['seconds']:>11.2f}x {s['seconds'] / bound:>13.2f}x")
    print(f"\nexact-match counts agree across engines: {len(exact) == 1} ({sorted(exact)})")


if __name__ == "__main__":
    main()
