"""Recipes (OmegaConf structured configs): every shipped recipe loads with the paper's settings; unknown keys,
wrong types and out-of-range numbers are refused in one line naming the key; `${out}` is the recipe's out."""

import pytest
import yaml

from evalmem.errors import InputError
from evalmem.recipe import load_recipe, recipe_yaml
from helpers import RECIPES


def test_recipes_load_and_set_the_papers_settings():
    recipes = {p.stem: load_recipe(p) for p in RECIPES.glob("*.yaml")}
    pythia = recipes["pythia-fineweb"]
    assert (pythia.teacher.model, pythia.student.model) == ("EleutherAI/pythia-12b", "EleutherAI/pythia-1.4b")
    assert (pythia.teacher.epochs, pythia.student.epochs) == (3, 4)
    assert pythia.student.lr == 5e-5 and pythia.student.scheduler == "cosine"
    assert (pythia.data.window_len, pythia.data.limit, pythia.soft.temperature) == (256, 10**6, 2.0)
    assert recipes["olmo2-fineweb"].student.epochs == recipes["qwen3-fineweb"].student.epochs == 5
    assert recipes["tiny"].teacher.lr == pytest.approx(3e-3)
    kjv = load_recipe(RECIPES / "tiny-kjv.yaml", ["out=/tmp/elsewhere"])
    assert kjv.data.path == "/tmp/elsewhere/data/train.jsonl" and kjv.teacher.model == "/tmp/elsewhere/base/teacher"
    assert yaml.safe_load(recipe_yaml(kjv))["data"]["path"] == kjv.data.path
    assert not kjv.peft.enabled and kjv.peft.target_modules == ["all-linear"]
    lora = load_recipe(RECIPES / "tiny.yaml", ["peft.enabled=true", "peft.r=4", "peft.target_modules=[q_proj,v_proj]"])
    assert lora.peft.enabled and lora.peft.r == 4 and lora.peft.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize("sets, message", [
    (["teacher.colour=blue"], "unknown recipe key teacher.colour"),
    (["soft.temp=1"], "unknown recipe key soft.temp"),
    (["teacher.batch_size=abc"], "recipe key teacher.batch_size"),
    (["teacher.epochs=-1"], "recipe key teacher.epochs must be positive, got -1.0"),
    (["evaluate.trials=0"], "recipe key evaluate.trials must be positive"),
    (["peft.r=0"], "recipe key peft.r must be positive"),
    (["peft.dropout=-0.1"], "recipe key peft.dropout must be non-negative"),
    (["teacher.lr"], "--set takes KEY=VALUE"),
    (["evaluate.series=[teacher]"], "evaluate.series names teacher, whose training saves no checkpoints: set "
                                    "teacher.checkpoints=true"),
    (["evaluate.series=[student]", "student.checkpoints=true"], "evaluate.series names 'student'"),
])
def test_bad_recipe_values_are_refused(sets, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(RECIPES / "tiny.yaml", sets)


def test_unknown_key_in_a_recipe_file(tmp_path):
    recipe = yaml.safe_load((RECIPES / "tiny.yaml").read_text())
    recipe["student"]["learning_rate"] = 1e-3
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(InputError, match="unknown recipe key student.learning_rate"):
        load_recipe(tmp_path / "r.yaml")
    (tmp_path / "list.yaml").write_text("[1, 2]")
    with pytest.raises(InputError, match="is not a mapping"):
        load_recipe(tmp_path / "list.yaml")
    with pytest.raises(InputError, match="cannot read recipe"):
        load_recipe(tmp_path / "missing.yaml")
