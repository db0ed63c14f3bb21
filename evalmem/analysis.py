"""Memorized sets across checkpoints (DESIGN.md, "The paper's protocol").

Extraction runs are loaded from their directories, checked to share data and protocol, joined on
`example_id` (only the examples every run holds are compared), and reduced to memorized sets
M(x) = the examples run x reproduces exactly. With several baseline seeds, "baseline" means the
union over seeds (memorized by any seed) unless a name says `every_seed`:

    easy          M(teacher) ∩ M(any baseline)     easy_every_seed   M(teacher) ∩ M(every baseline)
    teacher_only  M(teacher) \\ M(any baseline)    saturated         M(teacher) ∩ M(every baseline) ∩ M(every student)
    inherited(s)  M(s) ∩ teacher_only              inheritance rate  |inherited(s)| / |teacher_only|

A student's memorized set splits exactly into easy, inherited and neither (not memorized by the teacher).
sets.json holds the example ids of each set, `memorized:RUN` of every run, and `easy:S`, `inherited:S`,
`neither:S` of every student S.

Every rate carries its 95% interval and every pair of runs its paired test (evalmem.stats): the runs share their
examples, so two runs differ by the examples one memorized and the other did not. A series is one model's
checkpoints in training order: its rate per checkpoint, and per step the examples newly memorized (onset) and no
longer memorized (forgotten); sets.json names them `onset:SERIES@STEP`, `forgotten:SERIES@STEP`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from evalmem import stats
from evalmem.errors import InputError, first_line
from evalmem.settings import longest_prefix
from evalmem.store import read_results

PROTOCOL = ("data_fingerprint", "prefix_len", "suffix_len")
# The paper's regime, where a memorized example is a marginal one: the teacher memorizes 1-10% of at least 2,048
# examples and at most 30% of what it memorizes is memorized by every model (the saturated share).
MARGIN = {"teacher_rate": (0.01, 0.10), "max_saturated_share": 0.30, "min_examples": 2048}
RUN_COLUMNS = ("example_id", "exact_match", "approx_match", "token_accuracy")
ROLES = ("teacher", "baseline", "student", "run", "series")


@dataclass
class Run:
    """One result directory: its settings, summary and the columns the analysis needs."""

    name: str
    role: str
    path: Path
    settings: dict
    table: pa.Table
    profile: list | None = None  # each prefix length's rates (extract --mode screen with several lengths)
    point: dict | None = None  # a series' checkpoint: series, step, epoch

    @property
    def ids(self) -> list:
        return self.table["example_id"].to_pylist()

    def memorized(self) -> set:
        return set(self.table.filter(self.table["exact_match"])["example_id"].to_pylist())

    def hits(self) -> np.ndarray:
        """exact_match as a boolean vector, in the order of the (joined, sorted) table."""
        return self.table["exact_match"].to_numpy(zero_copy_only=False).astype(bool)


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
              prefix_len: int | None = None, series: list[str] = ()) -> list[Run]:
    """Load the runs named on the command line (each `[NAME=]DIR`, at `prefix_len` where they hold several;
    each series `NAME=DIR,DIR,...`) and check they can be compared."""
    specs = [("teacher", *parse_spec(teacher, "teacher"))] if teacher else []
    specs += [("baseline", *parse_spec(s, "baseline" if len(baselines) == 1 else f"baseline_{i}"))
              for i, s in enumerate(baselines)]
    specs += [("student", *parse_spec(s, Path(s).name)) for s in students]
    specs += [("run", *parse_spec(s, Path(s).name)) for s in others]
    if len(specs) < 2 and not series:  # a series holds two runs at least
        raise InputError("compare needs at least two runs (--teacher, --baseline, --student, --run, --series)")
    if students and not (teacher and baselines):
        raise InputError("--student needs --teacher and at least one --baseline (inheritance is relative to them)")
    runs = [load_run(name, role, path, prefix_len) for role, name, path in specs]
    runs += [point for spec in series for point in load_series(spec, prefix_len)]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise InputError(f"run names must differ, got {', '.join(names)}; name runs as NAME=DIR")
    check_protocol([(r.name, r.settings) for r in runs])
    return runs


CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def checkpoint_dirs(path: Path) -> list[Path]:
    """The checkpoint-N folders in `path`, in step order (a trainer's checkpoints, or their extraction runs)."""
    found = [p for p in path.iterdir() if CHECKPOINT.fullmatch(p.name)] if path.is_dir() else []
    return sorted(found, key=lambda p: int(CHECKPOINT.fullmatch(p.name).group(1)))


def series_dirs(path: Path) -> list[Path]:
    """A run directory, or the checkpoint-N run directories a folder holds (in step order)."""
    if (path / "manifest.json").exists() or not path.is_dir():
        return [path]
    found = checkpoint_dirs(path)
    if not found:
        raise InputError(f"{path} is neither a run directory nor a folder of checkpoint-N run directories")
    return found


def checkpoint_step(run: Run, index: int) -> dict:
    """Where a run's model sits in training: the global step and epoch of its trainer_state.json, else the N of a
    checkpoint-N folder or a hub revision such as step143000, else its place in the series."""
    model = Path(str(run.settings.get("model")))
    try:
        state = json.loads((model / "trainer_state.json").read_text())
        return {"step": int(state["global_step"]), "epoch": state.get("epoch")}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for text in (run.settings.get("revision"), model.name, run.path.name):
        found = re.fullmatch(r"(?:checkpoint-|step)(\d+)", str(text or ""))
        if found:
            return {"step": int(found.group(1)), "epoch": None}
    return {"step": index, "epoch": None}


def load_series(spec: str, prefix_len: int | None = None) -> list[Run]:
    """The runs of a series `NAME=DIR,DIR,...` (a DIR may be a folder of checkpoint-N runs), in training order,
    each named NAME@STEP."""
    name, sep, dirs = spec.partition("=")
    if not sep or not name or not dirs:
        raise InputError(f"--series takes NAME=DIR,DIR,... (one model's checkpoints in training order), got {spec!r}")
    paths = [p for d in dirs.split(",") if d for p in series_dirs(Path(d))]
    if len(paths) < 2:
        raise InputError(f"series {name} needs at least two checkpoints' runs, got {len(paths)}")
    points = []
    for i, path in enumerate(paths):
        run = load_run(name, "series", path, prefix_len)
        where = checkpoint_step(run, i + 1)
        points.append(replace(run, name=f"{name}@{where['step']}", point={"series": name, **where}))
    steps = [p.point["step"] for p in points]
    if steps != sorted(set(steps)):
        raise InputError(f"series {name} is not in training order (steps {', '.join(map(str, steps))}): give its "
                         "checkpoints' runs from first to last")
    return points


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
    return [replace(r, table=r.table.filter(pc.is_in(r.table["example_id"], value_set=value_set)).sort_by("example_id"))
            for r in runs]


def ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def interval(k: int, n: int) -> dict | None:
    """The 95% interval of a rate k / n, without its estimate (stored beside it)."""
    r = stats.rate(k, n)
    return None if r is None else {"low": r["low"], "high": r["high"]}


def run_stats(run: Run) -> dict:
    t = run.table
    n = t.num_rows
    exact = int(pc.sum(t["exact_match"]).as_py() or 0)
    approx = int(pc.sum(t["approx_match"]).as_py() or 0) if known(run, "approx_match") else None
    return {"role": run.role, "dir": str(run.path.resolve()), "model": run.settings.get("model"),
            "mode": run.settings.get("mode"), "n": n,
            "exact_match_count": exact, "exact_match_rate": exact / n, "exact_match_interval": interval(exact, n),
            "approx_match_rate": None if approx is None else approx / n,
            "approx_match_interval": None if approx is None else interval(approx, n),
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
    out["easy_share_interval"] = interval(len(parts["easy"]), len(student))
    out["inheritance_rate"] = ratio(len(parts["inherited"]), len(sets["teacher_only"]))
    out["inheritance_interval"] = interval(len(parts["inherited"]), len(sets["teacher_only"]))
    return out


def paired_tests(runs: list[Run]) -> list[dict]:
    """Every pair of runs: the paired 2x2 table, the difference of rates with its interval, the exact McNemar
    p-value and its Holm adjustment over all the pairs."""
    hits = {r.name: r.hits() for r in runs}
    tests = [{"a": a, "b": b, **stats.paired(hits[a], hits[b])} for a, b in combinations(hits, 2)]
    for test, adjusted in zip(tests, stats.holm([t["p_value"] for t in tests])):
        test |= {"p_holm": adjusted, "distinguishable": stats.distinguishable(adjusted)}
    return tests


def regime(teacher: int, saturated: int, n: int) -> dict:
    """Where the experiment sits against MARGIN: the teacher's rate and the saturated share (the teacher's memorized
    examples memorized by every model, over the teacher's)."""
    share = ratio(saturated, teacher)
    low, high = MARGIN["teacher_rate"]
    return {"teacher_rate": teacher / n, "saturated": saturated, "saturated_share": share, "criterion": MARGIN,
            "at_margin": low <= teacher / n <= high and share is not None and share <= MARGIN["max_saturated_share"]
            and n >= MARGIN["min_examples"]}


def hard_vs_soft(hard: Run, soft: Run, teacher_only: np.ndarray) -> dict:
    """The hard and soft students on the teacher-only examples: inherited counts, the paired test and the
    hard/soft inheritance ratio with its interval."""
    test = stats.paired(hard.hits()[teacher_only], soft.hits()[teacher_only])
    hard_n, soft_n = test["both"] + test["a_only"], test["both"] + test["b_only"]
    return {"hard_inherited": hard_n, "soft_inherited": soft_n, "ratio": ratio(hard_n, soft_n),
            "ratio_interval": stats.ratio(test) if test["n"] else None,
            "paired": {**test, "distinguishable": stats.distinguishable(test["p_value"])}}


def series_stats(points: list[Run], teacher_only: np.ndarray | None) -> tuple[list[dict], dict[str, list]]:
    """One series: each checkpoint's rate with its interval and, from the second on, the examples it memorizes
    that the one before did not (onset) and those it no longer memorizes (forgotten), with the McNemar test of
    that change; how many teacher-only examples each checkpoint memorizes, given the teacher's sets."""
    rows, ids, before = [], {}, None
    for run in points:
        hit, n = run.hits(), run.table.num_rows
        k = int(hit.sum())
        row = {"name": run.name, "dir": str(run.path.resolve()), "step": run.point["step"], "epoch": run.point["epoch"],
               "n": n, "exact_match_count": k, "exact_match_rate": k / n, "exact_match_interval": interval(k, n)}
        if teacher_only is not None:
            row["teacher_only"] = int((hit & teacher_only).sum())
        if before is not None:
            onset, forgotten = hit & ~before, before & ~hit
            row |= {"onset": int(onset.sum()), "forgotten": int(forgotten.sum()),
                    "p_value": stats.mcnemar(int(onset.sum()), int(forgotten.sum()))}
            example = run.table["example_id"].to_numpy(zero_copy_only=False)
            ids |= {f"onset:{run.name}": example[onset].tolist(), f"forgotten:{run.name}": example[forgotten].tolist()}
        rows.append(row)
        before = hit
    return rows, ids


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
            out[run.name][name] = {"n": n, "memorized": k, "rate": ratio(k, n), "interval": interval(k, n)}
    return out


def compare(joined: list[Run], counts: pa.Table | None = None) -> tuple[dict, dict[str, list]]:
    """Compare joined runs: per-run statistics with intervals, pairwise overlaps and paired tests, (given a teacher
    and baselines) the paper's sets and each student's inheritance, (given duplicate counts) memorization by copy
    count, and each series over training. Returns the result and the example ids of each set (and of each run's
    memorized set, `memorized:NAME`)."""
    runs = [r for r in joined if r.role != "series"]
    memorized = {r.name: r.memorized() for r in runs}
    first = joined[0]
    result = {"n_examples": first.table.num_rows, "data": first.settings.get("data"),
              "protocol": {k: first.settings.get(k) for k in PROTOCOL}, "statistics": stats.METHODS,
              "runs": {r.name: run_stats(r) for r in runs},
              "overlaps": [{"a": a, "b": b, **overlap(memorized[a], memorized[b])}
                           for a, b in combinations(memorized, 2)],
              "paired": paired_tests(runs)}
    ids: dict[str, list] = {f"memorized:{name}": sorted(m) for name, m in memorized.items()}
    if counts is not None:
        result["by_copies"] = by_copies(runs, counts)
    teacher = next((r for r in runs if r.role == "teacher"), None)
    baselines = [r for r in runs if r.role == "baseline"]
    teacher_only = None
    if teacher and baselines:
        teacher_only = teacher.hits() & ~np.any([b.hits() for b in baselines], axis=0)
        paper, found = paper_sets(runs, memorized, teacher, baselines, teacher_only)
        result |= paper
        ids |= found
    points: dict[str, list[Run]] = {}
    for run in joined:
        if run.role == "series":
            points.setdefault(run.point["series"], []).append(run)
    if points:
        result["series"] = {}
        for name, series in points.items():
            result["series"][name], found = series_stats(series, teacher_only)
            ids |= found
    return result, ids


def paper_sets(runs: list[Run], memorized: dict[str, set], teacher: Run, baselines: list[Run],
               teacher_only: np.ndarray) -> tuple[dict, dict[str, list]]:
    """The paper's sets (easy, teacher-only, ...), each student's inheritance and, given students named hard and
    soft, their paired comparison on the teacher-only examples; and the example ids of those sets."""
    sets = teacher_sets(memorized[teacher.name], [memorized[b.name] for b in baselines])
    students = [r for r in runs if r.role == "student"]
    sets["saturated"] = sets["easy_every_seed"].intersection(*(memorized[s.name] for s in students))
    result = {"sets": {k: len(v) for k, v in sets.items()},
              "students": {s.name: inheritance(memorized[s.name], sets) for s in students},
              "regime": regime(len(sets["teacher"]), len(sets["saturated"]), teacher.table.num_rows)}
    ids = {k: sorted(v) for k, v in sets.items()}
    for s in (s.name for s in students):
        ids |= {f"easy:{s}": sorted(memorized[s] & sets["easy"]),
                f"inherited:{s}": sorted(memorized[s] & sets["teacher_only"]),
                f"neither:{s}": sorted(memorized[s] - sets["teacher"])}
    named = {s.name: s for s in students}
    if {"hard", "soft"} <= set(named):
        result["hard_vs_soft"] = hard_vs_soft(named["hard"], named["soft"], teacher_only)
    return result, ids


def token_accuracies(runs: list[Run]) -> dict[str, np.ndarray]:
    return {r.name: r.table["token_accuracy"].to_numpy() for r in runs if known(r, "token_accuracy")}
