"""Recipes: one YAML file describes a whole experiment (teacher, baselines, soft and hard students, evaluation).

    out: runs/NAME            # OUT/teacher, OUT/baseline-seedS, OUT/soft, OUT/hard; the corpus in OUT/corpus
    seed: 0
    prepare:  {builder, ...}  # offline recipes: build tokenizer, base models and data (train.prepare)
    data:     {path, config, split, text_column, limit, window_len, heldout, ...}   # heldout: utility
    teacher:  {model, epochs, lr, scheduler, warmup_steps, weight_decay, batch_size, grad_accum}
    student:  {the same keys; used by the baselines and both students}
    soft:     {temperature, teacher, teacher_cache, cache_k}   # teacher: the fine-tuned teacher [default: OUT/teacher];
                                       # teacher_cache: soft students train from its top-cache_k log-probs
    hard:     {prefix_len, corpus}     # corpus: `evalmem generate` output [default: OUT/corpus]
    peft:     {enabled, r, alpha, dropout, target_modules}   # LoRA adapters instead of full models (off)
    evaluate: {prefix_len, suffix_len, engine, mode, ...}   # what `evalmem pipeline` measures
    risk_filter: {enabled, drop, students}   # drop the riskiest examples, distill again, extract (and a control)

The sections are the dataclasses below (OmegaConf structured configs): every key has a default and a type, a key
the recipe does not know or a value of the wrong type is refused in one line, and `${out}` in a value stands
for the recipe's `out` (so a recipe can place what it builds inside its output folder).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from evalmem.errors import InputError, first_line

# every other number must be positive
NON_NEGATIVE = {"seed", "warmup_steps", "weight_decay", "pretrain_tokens", "dropout", "passages", "shift_max",
                "max_words"}


def check_numbers(section, where: str = "") -> None:
    """Refuse a number that must be positive (or, for NON_NEGATIVE keys, non-negative), naming its key."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            check_numbers(value, f"{where}{f.name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if value < 0 or (value == 0 and f.name not in NON_NEGATIVE):
                sign = "non-negative" if f.name in NON_NEGATIVE else "positive"
                raise InputError(f"recipe key {where}{f.name} must be {sign}, got {value}")


@dataclass(frozen=True)
class ModelSize:
    hidden: int = 256
    layers: int = 4
    heads: int = 4



@dataclass(frozen=True)
class Duplication:
    passages: int = 120  # passages copied (Zipf-like counts); 0: every window once
    max_copies: int = 64  # copies of the most copied passage
    exponent: float = 0.8  # the passage of rank r is copied max_copies / r**exponent times (at least twice)
    shift_max: int = 24  # a shifted copy starts up to this many tokens off
    max_words: int = 3  # words changed in a near copy
    kinds: tuple[str, ...] = ("exact", "shifted", "near")  # of the passages by count rank, cyclically


@dataclass(frozen=True)
class Prepare:
    builder: Optional[str] = None  # tiny-kjv | smollm2-kjv
    train_windows: int = 512
    heldout_windows: int = 128
    vocab_size: int = 2048
    pretrain_tokens: int = 200_000
    pretrain_lr: float = 3e-3
    teacher: ModelSize = field(default_factory=ModelSize)
    student: ModelSize = field(default_factory=lambda: ModelSize(hidden=128, layers=2, heads=2))
    duplication: Duplication = field(default_factory=Duplication)



@dataclass(frozen=True)
class Data:
    path: Optional[str] = None
    config: Optional[str] = None
    split: str = "train"
    text_column: str = "text"
    limit: Optional[int] = None
    window_len: int = 256
    heldout: Optional[str] = None
    heldout_config: Optional[str] = None
    heldout_split: str = "train"
    heldout_limit: Optional[int] = None



@dataclass(frozen=True)
class Training:
    model: Optional[str] = None
    epochs: float = 4.0
    lr: float = 5e-5
    scheduler: str = "cosine"
    warmup_steps: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 8
    grad_accum: int = 1
    checkpoints: bool = False  # save the model at the end of every epoch (OUT/checkpoint-STEP; evaluate.series)

    def trainer_settings(self, seed: int) -> dict:
        """What the trainers take (`train.finetune.training_args`): all but the model, and the seed."""
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "model"}, "seed": seed}


@dataclass(frozen=True)
class Soft:
    temperature: float = 2.0
    teacher: Optional[str] = None
    teacher_cache: bool = False  # the pipeline computes the teacher's top-k cache once; every soft student reads it
    cache_k: int = 64  # log-probabilities kept per position (the rest: one tail bucket)



@dataclass(frozen=True)
class Hard:
    prefix_len: int = 50
    corpus: Optional[str] = None



@dataclass(frozen=True)
class Peft:
    """LoRA (peft) for every trainer: each checkpoint is an adapter folder whose adapter_config.json names its
    base model, and every later stage reads it as a model."""

    enabled: bool = False
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])  # all-linear: every linear but lm_head


@dataclass(frozen=True)
class Evaluate:
    prefix_len: int = 50
    suffix_len: int = 50
    engine: Optional[str] = None  # the mode's default engine
    mode: str = "decode"
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    baseline_seeds: int = 3
    series: tuple[str, ...] = ()  # models whose checkpoints are extracted: memorization over training
    predict_student: str = "soft"
    trials: int = 100
    neg_ratio: float = 3.0
    test_size: float = 0.3


@dataclass(frozen=True)
class RiskFilter:
    enabled: bool = True  # the risk-filtering experiment after the predictor (needs one)
    drop: Optional[int] = None  # examples dropped [default: as many as evaluate.predict_student memorized]
    students: tuple[str, ...] = ("soft", "hard")  # re-distilled on what is left, and on a random removal


@dataclass(frozen=True)
class Recipe:
    out: Optional[str] = None
    seed: int = 0
    prepare: Prepare = field(default_factory=Prepare)
    data: Data = field(default_factory=Data)
    teacher: Training = field(default_factory=Training)
    student: Training = field(default_factory=Training)
    soft: Soft = field(default_factory=Soft)
    hard: Hard = field(default_factory=Hard)
    peft: Peft = field(default_factory=Peft)
    evaluate: Evaluate = field(default_factory=Evaluate)
    risk_filter: RiskFilter = field(default_factory=RiskFilter)

    def __post_init__(self):
        check_numbers(self)
        for key, value in (("out", self.out), ("data.path", self.data.path)):
            if value is None:
                raise InputError(f"the recipe does not set {key}")
        for model in self.evaluate.series:
            section = "teacher" if model == "teacher" else "student"
            if model not in ("teacher", "soft", "hard") and not model.startswith("baseline-seed"):
                raise InputError(f"evaluate.series names {model!r}: name teacher, soft, hard or baseline-seedS")
            if not getattr(self, section).checkpoints:
                raise InputError(f"evaluate.series names {model}, whose training saves no checkpoints: set "
                                 f"{section}.checkpoints=true")

    @property
    def out_path(self) -> Path:
        return Path(self.out)


def load_recipe(path: str | Path, sets: Sequence[str] = ()) -> Recipe:
    """Read a recipe, apply `section.key=value` overrides (`--set`; values as YAML reads them), fill in
    defaults; unknown keys, wrong types and out-of-range numbers are an InputError naming the key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    try:
        given = OmegaConf.load(path)
    except Exception as exc:  # a missing file, broken YAML
        raise InputError(f"cannot read recipe {path}: {first_line(exc)}") from exc
    if not OmegaConf.is_dict(given):
        raise InputError(f"recipe {path} is not a mapping of settings")
    for item in sets:
        if "=" not in item:
            raise InputError(f"--set takes KEY=VALUE, got {item!r}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Recipe), given, OmegaConf.from_dotlist(list(sets)))
        return OmegaConf.to_object(merged)
    except ConfigKeyError as exc:
        raise InputError(f"{path}: unknown recipe key {exc.full_key}") from exc
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise InputError(f"{path}: recipe key {key}: {first_line(exc.msg if hasattr(exc, 'msg') else exc)}"
                         if key else f"{path}: {first_line(exc)}") from exc


def recipe_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (what OUT/recipe.yaml holds)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(recipe))


def recipe_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def with_seed(recipe: Recipe, seed: int | None) -> Recipe:
    return recipe if seed is None else dataclasses.replace(recipe, seed=seed)
