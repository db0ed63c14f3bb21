"""How `evalmem extract --mode verify` scales with the number of windows, in one process and split over parts.

    .venv/bin/python scripts/bench_scale.py --model exp/tiny-kjv/teacher --n 10000 100000 --work runs/scale
    .venv/bin/python scripts/bench_scale.py --model exp/tiny-kjv/teacher --n 100000 --parts 2 --work runs/scale

For each N: N evenly spaced (overlapping) 100-token windows of the KJV token stream, tokenized with the model's
tokenizer, in WORK/windows-N.parquet; one run over all of them; with --parts P also the same run as P `--shard I/P`
processes, at the same time and then one after another, each into its own directory, then `evalmem merge` of each
set; every merged results.parquet must equal the single run's. Prints, per process: its seconds (summary.json,
engine start-up apart), wall seconds and peak RSS (/usr/bin/time -v), and the load average before it started.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def windows_file(work: Path, model: str, n: int) -> Path:
    from transformers import AutoTokenizer

    from evalmem.tiny import kjv_verses, token_windows

    path = work / f"windows-{n}.parquet"
    if not path.exists():
        windows = token_windows(kjv_verses(), AutoTokenizer.from_pretrained(model), 100, count=n)
        assert len(windows) == n, f"the KJV stream gives {len(windows)} windows, not {n}"
        pq.write_table(pa.table({"id": [f"k{i}" for i in range(n)], "input_ids": windows}), path)
    return path


def timed(args: list, log: Path) -> subprocess.Popen:
    """`python -m evalmem ARGS` under /usr/bin/time -v, its output in LOG; its --out (or merge's OUT) starts
    empty, so that nothing resumes."""
    shutil.rmtree(args[args.index("--out") + 1] if "--out" in args else args[1], ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as out:
        return subprocess.Popen(["/usr/bin/time", "-v", sys.executable, "-m", "evalmem", *map(str, args)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def measure(procs: dict[str, tuple[subprocess.Popen, Path, Path | None, float]]) -> None:
    """Wait for every process; print its seconds, wall time and peak RSS."""
    for name, (proc, log, out, load) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"{name} failed: {log.read_text()[-3000:]}")
        text = log.read_text()
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1e6
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1)
        wall_s = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
        seconds = json.loads((out / "summary.json").read_text())["seconds"] if out and \
            (out / "summary.json").exists() else None
        shown = f"{seconds:.1f} s" if seconds is not None else "-"
        print(f"| {name} | {shown} | {wall_s:.1f} s | {rss:.2f} GB | {load:.2f} |", flush=True)


def load() -> float:
    return os.getloadavg()[0]


def run_parts(extract: list, work: Path, tag: str, parts: int, together: bool) -> Path:
    outs = [work / f"{tag}-part{i}" for i in range(1, parts + 1)]
    procs = {}
    for i, out in enumerate(outs, 1):
        procs[f"{tag} part {i}/{parts}"] = (timed([*extract, "--shard", f"{i}/{parts}", "--out", out],
                                                  work / f"{out.name}.log"), work / f"{out.name}.log", None, load())
        if not together:
            measure(procs)
            procs = {}
    measure(procs)
    merged = work / f"{tag}-merged"
    measure({f"{tag} merge": (timed(["merge", merged, *outs], work / f"{tag}-merge.log"), work / f"{tag}-merge.log",
                              merged, load())})
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--parts", type=int, default=0, help="also split each run over this many --shard parts")
    parser.add_argument("--work", type=Path, default=Path("runs/scale"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs\n\n| run | seconds | wall | peak RSS | load |\n"
          "|---|---|---|---|---|", flush=True)
    for n in args.n:
        work = args.work / f"n{n}"
        work.mkdir(exist_ok=True)
        extract = ["extract", "--model", args.model, "--data", windows_file(args.work, args.model, n),
                   "--mode", "verify"]
        single = work / "single"
        measure({f"{n:,} windows, one process": (timed([*extract, "--out", single], work / "single.log"),
                                                 work / "single.log", single, load())})
        reference = pq.read_table(single / "results.parquet")
        for together in (True, False) if args.parts > 1 else ():
            tag = f"{n:,} in {args.parts} parts, " + ("together" if together else "one after another")
            merged = run_parts(extract, work, "together" if together else "sequential", args.parts, together)
            same = pq.read_table(merged / "results.parquet").equals(reference)
            print(f"| {tag}: results.parquet equal to the single run's: {same} | | | | |", flush=True)
            if not same:
                raise SystemExit("the merged parts differ from the single run")


if __name__ == "__main__":
    main()
