"""Models: config, context, fingerprint and loading, each failure a one-line error."""

import os
import shutil

import pytest

from evalmem.errors import InputError
from evalmem.models import (context_length, load_causal_lm, load_tokenizer, model_config, model_fingerprint,
                            resolve_dtype)


def test_fingerprint_follows_the_weights(tiny, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(tiny.model, copy)
    before = model_fingerprint(str(copy))
    assert before == model_fingerprint(str(copy)) and before.startswith("sha256:")
    os.utime(copy / "model.safetensors", ns=(1, 1))
    assert model_fingerprint(str(copy)) != before
    assert model_fingerprint("EleutherAI/pythia-12b").startswith("hub:EleutherAI/pythia-12b@")


def test_config_dtype_and_context(tiny):
    config = model_config(tiny.model)
    assert context_length(config) == 512 and resolve_dtype(config, "auto") == "float32"
    assert resolve_dtype(config, "bfloat16") == "bfloat16"
    model = load_causal_lm(tiny.model, "bfloat16")
    assert next(model.parameters()).dtype.is_floating_point and not model.training


def test_loading_failures_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="cannot load model"):
        model_config(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="cannot load model"):
        load_causal_lm(str(tmp_path / "empty"))
    with pytest.raises(InputError, match=r"cannot load a tokenizer from .*; pass --tokenizer"):
        load_tokenizer(str(tmp_path / "empty"))
