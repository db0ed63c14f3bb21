"""Soft students trained from teacher caches against the online (full-vocabulary) one: the logged loss per step,
the held-out perplexity (`evalmem perplexity` JSON) and the memorized set (`evalmem extract` runs), as Markdown.

    python scripts/compare_teacher_cache.py --online exp/tiny-kjv/soft exp/tiny-kjv/extract/soft \
        --cached k64=exp-cache/soft-k64,exp-cache/extract-k64 ... --utility exp-cache/utility.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def losses(checkpoint: str) -> np.ndarray:
    history = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["log_history"]
    return np.array([entry["loss"] for entry in history if "loss" in entry])


def memorized(run: str) -> set:
    table = pq.read_table(Path(run) / "results.parquet", columns=["example_id", "exact_match"]).to_pydict()
    return {i for i, hit in zip(table["example_id"], table["exact_match"]) if hit}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--online", nargs=2, metavar=("CHECKPOINT", "EXTRACT"), required=True)
    parser.add_argument("--cached", action="append", required=True, metavar="NAME=CHECKPOINT,EXTRACT")
    parser.add_argument("--utility", required=True, help="`evalmem perplexity` JSON naming online and each NAME.")
    args = parser.parse_args()
    ppl = {name: m["perplexity"] for name, m in json.loads(Path(args.utility).read_text())["models"].items()}
    base_loss, base_set = losses(args.online[0]), memorized(args.online[1])
    print("| student | mean / max abs. loss difference per step (relative) | held-out perplexity | memorized | "
          "shared with online (Jaccard) |")
    print("|---|---|---|---|---|")
    print(f"| online | 0 | {ppl['online']:.3f} | {len(base_set)} | {len(base_set)} (1.00) |")
    for spec in args.cached:
        name, paths = spec.split("=", 1)
        checkpoint, run = paths.split(",")
        diff = np.abs(losses(checkpoint) - base_loss) / base_loss
        got = memorized(run)
        shared = len(got & base_set)
        print(f"| {name} | {diff.mean():.3f} / {diff.max():.3f} | {ppl[name]:.3f} | {len(got)} | "
              f"{shared} ({shared / max(len(got | base_set), 1):.2f}) |")


if __name__ == "__main__":
    main()
