"""Time `evalmem compare` (rates with intervals, every paired test, the paper's sets) on large runs.

Writes R extraction runs of N examples in evalmem's result format (a teacher, baselines and two students with
correlated memorization at a few percent, as real runs have), then runs `evalmem compare` on them in a fresh
process and prints its wall time and peak resident memory.

    .venv/bin/python scripts/bench_compare.py --n 1000000 --runs 6 --work /tmp/bench-compare
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_run(path: Path, ids: pa.Array, hit: np.ndarray, model: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(model))
    match_len = np.where(hit, 50, rng.integers(0, 5, len(hit)))
    table = pa.table({"example_id": ids, "exact_match": hit, "match_len": match_len,
                      "token_accuracy": match_len / 50, "edit_distance": 1 - match_len / 50,
                      "approx_match": hit})
    pq.write_table(table, path / "results.parquet", write_page_checksum=True)
    settings = {"command": "extract", "model": model, "data": "bench", "data_fingerprint": "sha256:bench",
                "prefix_len": 50, "suffix_len": 50, "engine": "vllm", "mode": "decode"}
    (path / "manifest.json").write_text(json.dumps({"settings": settings, "versions": {}}))
    (path / "summary.json").write_text(json.dumps({"model": model, "n_examples": len(hit)}))


def make_runs(work: Path, n: int, runs: int) -> list[str]:
    """A teacher memorizing 5% of the examples and runs-1 others each memorizing part of the teacher's set and a
    few examples of their own."""
    rng = np.random.default_rng(0)
    ids = pa.array(np.arange(n, dtype=np.int64))
    teacher = rng.random(n) < 0.05
    roles = ["teacher", *[f"baseline-seed{i}" for i in range(runs - 3)], "soft", "hard"]
    for role in roles:
        hit = teacher if role == "teacher" else (teacher & (rng.random(n) < 0.5)) | (rng.random(n) < 0.002)
        write_run(work / role, ids, hit, role)
    return roles


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="examples per run")
    parser.add_argument("--runs", type=int, default=6, help="runs: a teacher, runs - 3 baselines, soft and hard")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-compare"), help="folder for the runs")
    args = parser.parse_args()
    if args.runs < 4:
        parser.error("--runs must be at least 4 (a teacher, a baseline, soft and hard)")
    roles = make_runs(args.work, args.n, args.runs)
    command = [sys.executable, "-m", "evalmem", "compare", "--teacher", str(args.work / "teacher"),
               *[f"--baseline={r}={args.work / r}" for r in roles if r.startswith("baseline")],
               "--student", f"soft={args.work / 'soft'}", "--student", f"hard={args.work / 'hard'}",
               "--out", str(args.work / "compare")]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    pairs = len(json.loads((args.work / "compare" / "compare.json").read_text())["paired"])
    print(f"compare of {args.runs} runs x {args.n:,} examples ({pairs} paired tests): {seconds:.1f} s wall, "
          f"peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
