"""Models: config, context, fingerprint and loading, each failure a one-line error."""

import os
import shutil

import pytest

from evalmem.errors import InputError
from evalmem.models import (context_length, load_causal_lm, load_tokenizer, model_config, model_fingerprint, prepack,
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


def test_prepacked_body_gives_the_same_logits(tiny, lora):
    import torch

    ids = torch.arange(1, 60)[None].repeat(3, 1) % 200
    with torch.inference_mode():
        plain = load_causal_lm(tiny.model, "float32")(input_ids=ids).logits
        packed = prepack(load_causal_lm(tiny.model, "float32"))
        assert not any(type(m) is torch.nn.Linear for m in packed.get_decoder().modules())
        assert type(packed.get_output_embeddings()) is torch.nn.Linear  # evalmem.scores reads its weight
        torch.testing.assert_close(packed(input_ids=ids).logits, plain, rtol=1e-4, atol=1e-4)
        half = load_causal_lm(tiny.model, "bfloat16")  # oneDNN's bf16 path needs AVX-512: left as it is
        assert any(type(m) is torch.nn.Linear for m in prepack(half).get_decoder().modules())
        with_adapter = load_causal_lm(lora.adapter, "float32")  # peft's layers wrap the base ones: left as they are
        assert prepack(with_adapter) is with_adapter and any(
            type(m) is torch.nn.Linear for m in with_adapter.get_base_model().model.modules())


def test_loading_failures_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="cannot load model"):
        model_config(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="cannot load model"):
        load_causal_lm(str(tmp_path / "empty"))
    with pytest.raises(InputError, match=r"cannot load a tokenizer from .*; pass --tokenizer"):
        load_tokenizer(str(tmp_path / "empty"))


def test_an_adapter_folder_is_applied_to_the_base_it_names(tiny, lora):
    from pathlib import Path

    from evalmem.models import ModelSpec, model_fingerprints, model_spec

    spec = model_spec(lora.adapter)
    assert spec == ModelSpec(str(Path(tiny.model).resolve()), lora.adapter) and str(spec) == lora.adapter
    assert model_spec(tiny.model, lora.adapter) == ModelSpec(tiny.model, lora.adapter)
    assert model_spec(tiny.model) == ModelSpec(tiny.model)
    found = model_fingerprints(lora.adapter)
    assert set(found) == {"fingerprint", "base", "adapter_fingerprint"}
    assert found["fingerprint"] == model_fingerprint(tiny.model) and model_fingerprints(tiny.model) == {
        "fingerprint": model_fingerprint(tiny.model)}
    assert context_length(model_config(lora.adapter)) == 512
    assert len(load_tokenizer(lora.adapter)) == len(tiny.tokenizer)


def test_the_adapter_fingerprint_follows_its_weights(lora, tmp_path):
    from evalmem.models import model_fingerprints

    copy = tmp_path / "adapter"
    shutil.copytree(lora.adapter, copy)
    before = model_fingerprints(str(copy))
    os.utime(copy / "adapter_model.safetensors", ns=(1, 1))
    after = model_fingerprints(str(copy))
    assert after["adapter_fingerprint"] != before["adapter_fingerprint"]
    assert after["fingerprint"] == before["fingerprint"]


def bad_adapter(tmp_path, lora, name, change):
    folder = tmp_path / name
    shutil.copytree(lora.adapter, folder)
    change(folder)
    return str(folder)


def test_bad_adapters_are_one_line_errors(tiny, lora, tmp_path):
    import json

    from evalmem.models import model_spec
    from evalmem.tiny import build_model

    no_config = bad_adapter(tmp_path, lora, "no-config", lambda f: (f / "adapter_config.json").unlink())
    with pytest.raises(InputError, match="holds adapter weights but no adapter_config.json"):
        model_spec(no_config)
    with pytest.raises(InputError, match="holds adapter weights but no adapter_config.json"):
        model_spec(tiny.model, no_config)
    with pytest.raises(InputError, match=f"was trained on .*memorized, not on --model {tiny.base}"):
        model_spec(tiny.base, lora.adapter)  # the same architecture, other weights
    other = build_model(tmp_path / "small", tiny.tokenizer, hidden=64, layers=2)
    with pytest.raises(InputError, match="does not fit base model .*small: its model.layers.0"):
        model_spec(str(other), lora.adapter)

    def elsewhere(folder):
        config = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/gone"}))

    moved = bad_adapter(tmp_path, lora, "moved", elsewhere)
    with pytest.raises(InputError, match=f"base model /gone that {moved} was trained on is not here: pass --model"):
        model_spec(moved)
    assert model_spec(tiny.model, moved).adapter == moved  # given beside its base, it is read
    with pytest.raises(InputError, match="is an adapter folder: give its base model as --model"):
        model_spec(lora.adapter, lora.adapter)
    with pytest.raises(InputError, match="no such adapter folder"):
        model_spec(tiny.model, str(tmp_path / "nothing"))
