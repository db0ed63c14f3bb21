"""The stages of `evalmem pipeline`: each one command a user could type, and the file that says it finished."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from evalmem.analysis import checkpoint_dirs
from evalmem.recipe import Data, Evaluate, Recipe


@dataclass
class Stage:
    name: str
    argv: list[str]  # after `python -m`: a module (evalmem, train) and its arguments
    done: Path  # exists once the stage has finished
    optional: bool = False  # the pipeline goes on without it (e.g. a predictor with no positive example)
    after: list[str] = field(default_factory=list)  # the stages whose outputs it reads: it starts once they end


def data_args(data: Data, heldout: bool = False) -> list[str]:
    """--data/--split/--config/--text-column/--limit of the recipe's training data or held-out data."""
    path, config, split, limit = ((data.heldout, data.heldout_config, data.heldout_split, data.heldout_limit)
                                  if heldout else (data.path, data.config, data.split, data.limit))
    args = ["--data", path, "--split", split, "--text-column", data.text_column]
    return args + (["--config", config] if config else []) + (["--limit", str(limit)] if limit else [])


def engine_args(ev: Evaluate) -> list[str]:
    return (["--engine", ev.engine] if ev.engine else []) + ["--dtype", ev.dtype, "--tensor-parallel-size",
                                                             str(ev.tensor_parallel_size)]


def training_stages(recipe: Recipe, rec: list[str], baselines: dict[str, int]) -> list[Stage]:
    """prepare (offline recipes), teacher, baselines, corpus, soft, hard."""
    out, train = recipe.out_path, ["train"]
    found = [Stage("prepare", [*train, "prepare", *rec], out / "base" / "prepared.json")] \
        if recipe.prepare.builder else []
    base = [s.name for s in found]  # the recipe's base models and data
    found.append(Stage("teacher", [*train, "finetune", "--run", "teacher", *rec], out / "teacher", after=base))
    found += [Stage(b, [*train, "finetune", "--run", "baseline", "--seed", str(s), *rec], out / b, after=base)
              for b, s in baselines.items()]
    corpus = recipe.hard.corpus or str(out / "corpus")
    new_tokens = recipe.data.window_len - recipe.hard.prefix_len
    found.append(Stage("corpus", ["evalmem", "generate", "--model", str(out / "teacher"), *data_args(recipe.data),
                                  "--prefix-len", str(recipe.hard.prefix_len), "--max-new-tokens", str(new_tokens),
                                  "--out", corpus, *engine_args(recipe.evaluate)], Path(corpus) / "summary.json",
                       after=["teacher"]))
    found += cache_stage(recipe)
    return found + [Stage(s, [*train, f"distill-{s}", *rec, *student_cache(recipe, s)], out / s,
                          after=[*base, *student_needs(recipe, s)]) for s in ("soft", "hard")]


def student_needs(recipe: Recipe, student: str) -> list[str]:
    """What a student's training reads besides the data: the teacher (and its cache) or the teacher's corpus."""
    if student == "hard":
        return ["corpus"]
    return ["teacher", *(["teacher-cache"] if recipe.soft.teacher_cache else [])]


def cache_path(recipe: Recipe) -> Path:
    return recipe.out_path / "teacher-cache"


def cache_stage(recipe: Recipe) -> list[Stage]:
    """The teacher's top-k cache of the training windows (soft.teacher_cache), computed once before the soft
    student."""
    if not recipe.soft.teacher_cache:
        return []
    teacher, cache = recipe.soft.teacher or str(recipe.out_path / "teacher"), cache_path(recipe)
    return [Stage("teacher-cache", ["evalmem", "teacher-cache", "--model", teacher, *data_args(recipe.data),
                                    "--window-len", str(recipe.data.window_len), "--k", str(recipe.soft.cache_k),
                                    "--out", str(cache)], cache / "summary.json", after=["teacher"])]


def student_cache(recipe: Recipe, student: str) -> list[str]:
    """`--teacher-cache` for a soft student where the recipe computes the cache (every soft student reads it)."""
    return ["--teacher-cache", str(cache_path(recipe))] if student == "soft" and recipe.soft.teacher_cache else []


def features_cache(recipe: Recipe) -> list[str]:
    """`--teacher-cache` for features where the cache holds its windows (the same teacher and window length)."""
    ev = recipe.evaluate
    same = recipe.soft.teacher is None and ev.prefix_len + ev.suffix_len == recipe.data.window_len
    return ["--teacher-cache", str(cache_path(recipe))] if recipe.soft.teacher_cache and same else []


def evaluation_stages(recipe: Recipe, baselines: list[str]) -> list[Stage]:
    """dupcount, extract-MODEL for every checkpoint, features, predict."""
    out, ev, data, extract = recipe.out_path, recipe.evaluate, recipe.data, recipe.out_path / "extract"
    lengths = ["--prefix-len", str(ev.prefix_len), "--suffix-len", str(ev.suffix_len)]
    found = [Stage("dupcount", ["evalmem", "dupcount", *data_args(data), "--tokenizer", str(out / "teacher"),
                                *lengths, "--out", str(out / "dupcount")], out / "dupcount" / "summary.json",
                   after=["teacher"])]
    found += [extract_stage(recipe, m, out / m, data_args(data)) for m in models(baselines)]
    found.append(Stage("features", ["evalmem", "features", "--teacher", str(out / "teacher"), "--baseline",
                                    str(out / baselines[0]), *data_args(data), *lengths, "--dtype", ev.dtype,
                                    *features_cache(recipe), "--out", str(out / "features")],
                       out / "features" / "summary.json",
                       after=["teacher", baselines[0], *(["teacher-cache"] if features_cache(recipe) else [])]))
    found.append(Stage("predict", ["evalmem", "predict", "--features", str(out / "features"), "--labels",
                                   str(extract / ev.predict_student), "--out", str(out / "predict"),
                                   "--trials", str(ev.trials), "--neg-ratio", str(ev.neg_ratio),
                                   "--test-size", str(ev.test_size), "--seed", str(recipe.seed)],
                       out / "predict" / "predict.json", optional=True,
                       after=["features", f"extract-{ev.predict_student}"]))
    return found


def models(baselines: list[str]) -> list[str]:
    return ["teacher", *baselines, "soft", "hard"]


def extract_stage(recipe: Recipe, name: str, model: Path, data: list[str], out: Path | None = None,
                  after: list[str] | None = None) -> Stage:
    """`evalmem extract` of one model (by default the stage of that name, e.g. `soft`, made it)."""
    ev, out = recipe.evaluate, out or recipe.out_path / "extract" / name
    return Stage(f"extract-{name}", ["evalmem", "extract", "--model", str(model), *data, "--prefix-len",
                                     str(ev.prefix_len), "--suffix-len", str(ev.suffix_len), "--mode", ev.mode,
                                     "--out", str(out), *engine_args(ev)], out / "summary.json",
                 after=[name] if after is None else after)


def risk_stages(recipe: Recipe, recipe_file: Path) -> list[Stage]:
    """The risk-filtering experiment: drop the riskiest examples (cross-fitted risk) and, as a control, as many
    random ones; distill each student again on what is left, extract it there; then the effect, per student."""
    out, rf = recipe.out_path, recipe.risk_filter
    where, size = out / "risk_filter", (["--top-n", str(rf.drop)] if rf.drop is not None else
                                        ["--as-many-as", str(out / "extract" / recipe.evaluate.predict_student)])
    found = []
    for kind, extra in (("filtered", []), ("random", ["--random", "--seed", str(recipe.seed)])):
        kept = where / f"{kind}.jsonl"
        found.append(Stage(f"select-{kind}", ["evalmem", "filter", "--predictor", str(out / "predict"), "--features",
                                              str(out / "features"), *data_args(recipe.data), *size, *extra,
                                              "--out", str(kept)], kept, after=["predict", "features"]))
        for student in rf.students:
            model = where / f"{student}-{kind}"
            local = [f"data.path={kept}", "data.config=null", "data.limit=null"]  # the kept rows, all of them
            found.append(Stage(f"{student}-{kind}", ["train", f"distill-{student}", "--recipe",
                                                     str(recipe_file), *[x for v in local for x in ("--set", v)],
                                                     *student_cache(recipe, student), "--out", str(model)], model,
                               after=[f"select-{kind}", *student_needs(recipe, student)]))
            found.append(extract_stage(recipe, f"{student}-{kind}", model,
                                       ["--data", str(kept), "--text-column", recipe.data.text_column],
                                       after=[f"{student}-{kind}", f"select-{kind}"]))
    runs = {role: [f"{s}={out / 'extract' / (s + suffix)}" for s in rf.students]
            for role, suffix in (("before", ""), ("after", "-filtered"), ("control", "-random"))}
    found.append(Stage("filter-effect", ["evalmem", "filter-effect", *[x for role, specs in runs.items()
                                                                        for s in specs for x in (f"--{role}", s)],
                                         "--out", str(out / "risk_filter.json")], out / "risk_filter.json",
                       after=[f"extract-{s}{suffix}" for s in rf.students for suffix in ("", "-filtered", "-random")]))
    return found


def series_stages(recipe: Recipe) -> tuple[list[Stage], list[str]]:
    """For each model of evaluate.series, the extraction of every checkpoint its training saved (every epoch but
    the last, which is the model itself), and compare's `--series` of them and the model; read once the models
    are trained."""
    out, stages, specs = recipe.out_path, [], []
    for model in recipe.evaluate.series:
        found = checkpoint_dirs(out / model)
        where = out / "extract" / "series" / model
        stages += [extract_stage(recipe, f"{model}-{c.name}", c, data_args(recipe.data), where / c.name,
                                 after=[model]) for c in found]
        if found:
            specs.append(f"{model}={','.join([*(str(where / c.name) for c in found), str(out / 'extract' / model)])}")
    return stages, specs


def final_stages(recipe: Recipe, recipe_file: Path, baselines: list[str], predicted: bool) -> list[Stage]:
    """What follows the predictor: the checkpoints' extractions, the risk-filtering experiment (given a predictor),
    utility, compare, report."""
    out, data, extract = recipe.out_path, recipe.data, recipe.out_path / "extract"
    found, series = series_stages(recipe)
    extracts = ["dupcount", *(f"extract-{m}" for m in models(baselines)), *(s.name for s in found)]
    found += risk_stages(recipe, recipe_file) if predicted and recipe.risk_filter.enabled else []
    if data.heldout:
        found.append(Stage("utility", ["evalmem", "perplexity", *[f"--model={m}={out / m}" for m in models(baselines)],
                                       *data_args(data, heldout=True), "--window-len", str(data.window_len),
                                       "--dtype", recipe.evaluate.dtype, "--out", str(out / "utility.json")],
                           out / "utility.json", after=models(baselines)))
    found.append(Stage("compare", ["evalmem", "compare", "--teacher", f"teacher={extract / 'teacher'}",
                                   *[f"--baseline={b}={extract / b}" for b in baselines],
                                   "--student", f"soft={extract / 'soft'}", "--student", f"hard={extract / 'hard'}",
                                   *[f"--series={s}" for s in series],
                                   "--counts", str(out / "dupcount"), "--out", str(out / "compare")],
                       out / "compare" / "compare.json", after=extracts))
    return found + [report_stage(recipe, predicted)]


def baseline_seeds(recipe: Recipe) -> dict[str, int]:
    return {f"baseline-seed{recipe.seed + i}": recipe.seed + i for i in range(recipe.evaluate.baseline_seeds)}


def stages(recipe: Recipe, recipe_file: Path) -> list[Stage]:
    """The recipe's stages up to the predictor, in order (`final_stages` follow)."""
    baselines = baseline_seeds(recipe)
    return (training_stages(recipe, ["--recipe", str(recipe_file)], baselines)
            + evaluation_stages(recipe, list(baselines)))


def report_stage(recipe: Recipe, predicted: bool) -> Stage:
    """The report: with the predictor and utility where those stages produced them."""
    out, risk = recipe.out_path, predicted and recipe.risk_filter.enabled
    extra = ["--predict", str(out / "predict")] if predicted else []
    extra += ["--utility", str(out / "utility.json")] if recipe.data.heldout else []
    extra += ["--risk-filter", str(out / "risk_filter.json")] if risk else []
    after = ["compare", *(["predict"] if predicted else []), *(["utility"] if recipe.data.heldout else []),
             *(["filter-effect"] if risk else [])]
    return Stage("report", ["evalmem", "report", "--compare", str(out / "compare"), *extra,
                            "--out", str(out / "report.html")], out / "report.html", after=after)


