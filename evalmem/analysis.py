"""Memorized sets across checkpoints (DESIGN.md, "The paper's protocol").

Extraction runs are loaded from their directories, checked to share data and protocol, joined on
`example_id` (only the examples every run holds are compared), and reduced to memorized sets
M(x) = the examples run x reproduces exactly. With several baseline seeds, "baseline" means the
union over seeds (memorized by any seed) unless a name says `every_seed`:

    easy          M(teacher) ∩ M(any baseline)     easy_every_seed   M(teacher) ∩ M(every baseline)
    teacher_only  M(teacher) \\ M(any baseline)
    inherited(s)  M(s) ∩ teacher_only              inheritance rate  |inherited(s)| / |teacher_only|

A student's memorized set splits exactly into easy, inherited and neither (not memorized by the teacher).
sets.json holds the example ids of each set, `memorized:RUN` of every run, and `easy:S`, `inherited:S`,
`neither:S` of every student S.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from evalmem.errors import InputError, first_line
from evalmem.settings import longest_prefix
from evalmem.store import read_results

PROTOCOL = ("data_fingerprint", "prefix_len", "suffix_len")
RUN_COLUMNS = ("example_id", "exact_match", "approx_match", "token_accuracy")
ROLES = ("teacher", "baseline", "student", "run")


@dataclass
class Run:
    """One result directory: its settings, summary and the columns the analysis needs."""

    name: str
    role: str
    path: Path
    settings: dict
    table: pa.Table
    profile: list | None = None  # each prefix length's rates (extract --mode screen with several lengths)

    @property
    def ids(self) -> list:
        return self.table["example_id"].to_pylist()

    def memorized(self) -> set:
        return set(self.table.filter(self.table["exact_match"])["example_id"].to_pylist())


def read_settings(path: Path, parquet: str) -> dict:
    """The settings of a complete result directory made by an evalmem command."""
    if not path.is_dir():
        raise InputError(f"no such run directory: {path}")
    for name in ("manifest.json", parquet, "summary.json"):
        if not (path / name).exists():
            raise InputError(f"{path} is not a complete evalmem run (no {name}); finish it by rerunning "
                             "the command that made it")
    try:
        return json.loads((path / "manifest.json").read_text())["settings"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path / 'manifest.json'} is unreadable: {first_line(exc)}") from exc


def load_run(name: str, role: str, path: str | Path, prefix_len: int | None = None) -> Run:
    """A complete extraction run; a run of several prefix lengths (--mode screen) at `prefix_len`, which it must
    hold (its settings then read as of that length)."""
    path = Path(path)
    settings = read_settings(path, "results.parquet")
    lengths = settings.get("prefix_len")
    lengths = lengths if isinstance(lengths, list) else [lengths]
    if prefix_len is None and len(lengths) > 1:
        raise InputError(f"{path} holds prefix lengths {', '.join(map(str, lengths))}: pass --prefix-len K for one")
    if prefix_len is not None and prefix_len not in lengths:
        raise InputError(f"{path} holds no results at prefix length {prefix_len} (it holds "
                         f"{', '.join(map(str, lengths))})")
    chosen = longest_prefix(lengths) if prefix_len is None else prefix_len
    table = read_results(path / "results.parquet", RUN_COLUMNS, prefix_len=chosen)
    summary = json.loads((path / "summary.json").read_text())
    return Run(name, role, path, {**settings, "prefix_len": chosen}, table, summary.get("profile"))


def parse_spec(spec: str, default_name: str) -> tuple[str, str]:
    """`NAME=DIR` or `DIR` (named `default_name`)."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name:
        return name, path
    return default_name, spec


def load_runs(teacher: str | None, baselines: list[str], students: list[str], others: list[str],
              prefix_len: int | None = None) -> list[Run]:
    """Load the runs named on the command line (each `[NAME=]DIR`, at `prefix_len` where they hold several)
    and check they can be compared."""
    specs = [("teacher", *parse_spec(teacher, "teacher"))] if teacher else []
    specs += [("baseline", *parse_spec(s, "baseline" if len(baselines) == 1 else f"baseline_{i}"))
              for i, s in enumerate(baselines)]
    specs += [("student", *parse_spec(s, Path(s).name)) for s in students]
    specs += [("run", *parse_spec(s, Path(s).name)) for s in others]
    if len(specs) < 2:
        raise InputError("compare needs at least two runs (--teacher, --baseline, --student, --run)")
    if students and not (teacher and baselines):
        raise InputError("--student needs --teacher and at least one --baseline (inheritance is relative to them)")
    names = [name for _, name, _ in specs]
    if len(set(names)) != len(names):
        raise InputError(f"run names must differ, got {', '.join(names)}; name runs as NAME=DIR")
    runs = [load_run(name, role, path, prefix_len) for role, name, path in specs]
    check_protocol([(r.name, r.settings) for r in runs])
    return runs


def check_protocol(named_settings: list[tuple[str, dict]]) -> None:
    """Refuse results made on different data or with a different prefix/suffix protocol."""
    first, ref = named_settings[0]
    for name, settings in named_settings[1:]:
        for key in PROTOCOL:
            if settings.get(key) != ref.get(key):
                raise InputError(f"{first} and {name} differ in {key} ({ref.get(key)} vs {settings.get(key)}): "
                                 "they were made on different data or protocol")


def join(runs: list[Run]) -> list[Run]:
    """Restrict every run to the example ids all of them hold."""
    common = set(runs[0].ids)
    for run in runs[1:]:
        common &= set(run.ids)
    if not common:
        sizes = ", ".join(f"{r.name}: {r.table.num_rows}" for r in runs)
        raise InputError(f"the runs share no example_id ({sizes} examples): they cover different examples")
    value_set = pa.array(sorted(common), type=runs[0].table["example_id"].type)
    return [replace(r, table=r.table.filter(pc.is_in(r.table["example_id"], value_set=value_set))) for r in runs]


def ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def run_stats(run: Run) -> dict:
    t = run.table
    n = t.num_rows
    exact = int(pc.sum(t["exact_match"]).as_py() or 0)
    return {"role": run.role, "dir": str(run.path.resolve()), "model": run.settings.get("model"), "n": n,
            "exact_match_count": exact, "exact_match_rate": exact / n,
            "approx_match_rate": int(pc.sum(t["approx_match"]).as_py() or 0) / n if known(run, "approx_match")
            else None,
            "mean_token_accuracy": pc.mean(t["token_accuracy"]).as_py() if known(run, "token_accuracy") else None}


def known(run: Run, column: str) -> bool:
    """Whether every row has `column`: runs made without full decoding (`--mode screen/verify/auto`) leave
    the columns that need generated text null (auto: only token accuracy and edit distance, in some rows)."""
    return run.table[column].null_count == 0


def overlap(a: set, b: set) -> dict:
    inter = len(a & b)
    return {"intersection": inter, "jaccard": ratio(inter, len(a | b)),
            "overlap_coefficient": ratio(inter, min(len(a), len(b)))}


def teacher_sets(teacher: set, baselines: list[set]) -> dict[str, set]:
    any_seed, every_seed = set().union(*baselines), set.intersection(*baselines)
    return {"teacher": teacher, "baseline_any_seed": any_seed, "baseline_every_seed": every_seed,
            "easy": teacher & any_seed, "easy_every_seed": teacher & every_seed, "teacher_only": teacher - any_seed}


def inheritance(student: set, sets: dict[str, set]) -> dict:
    parts = {"easy": student & sets["easy"], "inherited": student & sets["teacher_only"],
             "neither": student - sets["teacher"]}
    out = {"memorized": len(student), **{k: len(v) for k, v in parts.items()}}
    out.update({f"{k}_share": ratio(len(v), len(student)) for k, v in parts.items()})
    out["inheritance_rate"] = ratio(len(parts["inherited"]), len(sets["teacher_only"]))
    return out


def load_counts(path: str | Path, runs: list[Run]) -> pa.Table:
    """The duplicate counts of `evalmem dupcount` in `path`, checked to be of the runs' data and protocol."""
    path = Path(path)
    settings = read_settings(path, "counts.parquet")
    check_protocol([(runs[0].name, runs[0].settings), (str(path), settings)])
    return read_results(path / "counts.parquet", ["example_id", "suffix_count", "window_count"])


def by_copies(runs: list[Run], counts: pa.Table) -> dict:
    """Each run's memorization rate per suffix_count bucket (the examples the counts and the run share)."""
    from evalmem.dupcount import BUCKETS, bucket_name, buckets

    copies = dict(zip(counts["example_id"].to_pylist(), buckets(counts["suffix_count"].to_numpy())))
    out = {}
    for run in runs:
        ids, hit = run.ids, run.table["exact_match"].to_numpy(zero_copy_only=False)
        names = np.array([copies.get(i) for i in ids], dtype=object)
        out[run.name] = {}
        for low, high in BUCKETS:
            name = bucket_name(low, high)
            n, k = int((names == name).sum()), int(hit[names == name].sum())
            out[run.name][name] = {"n": n, "memorized": k, "rate": ratio(k, n)}
    return out


def compare(runs: list[Run], counts: pa.Table | None = None) -> tuple[dict, dict[str, list]]:
    """Compare joined runs: per-run statistics, pairwise overlaps, (given a teacher and baselines) the paper's
    sets and each student's inheritance, and (given duplicate counts) memorization by copy count. Returns the
    result and the example ids of each set (and of each run's memorized set, `memorized:NAME`)."""
    memorized = {r.name: r.memorized() for r in runs}
    result = {"n_examples": runs[0].table.num_rows, "data": runs[0].settings.get("data"),
              "protocol": {k: runs[0].settings.get(k) for k in PROTOCOL},
              "runs": {r.name: run_stats(r) for r in runs},
              "overlaps": [{"a": a, "b": b, **overlap(memorized[a], memorized[b])}
                           for a, b in combinations(memorized, 2)]}
    ids: dict[str, list] = {f"memorized:{name}": sorted(m) for name, m in memorized.items()}
    if counts is not None:
        result["by_copies"] = by_copies(runs, counts)
    teacher = [r.name for r in runs if r.role == "teacher"]
    baselines = [memorized[r.name] for r in runs if r.role == "baseline"]
    if teacher and baselines:
        sets = teacher_sets(memorized[teacher[0]], baselines)
        result["sets"] = {k: len(v) for k, v in sets.items()}
        students = [r.name for r in runs if r.role == "student"]
        result["students"] = {s: inheritance(memorized[s], sets) for s in students}
        ids.update({k: sorted(v) for k, v in sets.items()})
        for s in students:
            ids.update({f"easy:{s}": sorted(memorized[s] & sets["easy"]),
                        f"inherited:{s}": sorted(memorized[s] & sets["teacher_only"]),
                        f"neither:{s}": sorted(memorized[s] - sets["teacher"])})
        if {"hard", "soft"} <= set(students):
            hard, soft = (result["students"][s]["inherited"] for s in ("hard", "soft"))
            result["hard_vs_soft"] = {"hard_inherited": hard, "soft_inherited": soft, "ratio": ratio(hard, soft)}
    return result, ids


def token_accuracies(runs: list[Run]) -> dict[str, np.ndarray]:
    return {r.name: r.table["token_accuracy"].to_numpy() for r in runs if known(r, "token_accuracy")}
