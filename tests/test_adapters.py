"""LoRA adapters through every model-reading command: a LoRA adapter on the memorizing model, trained to memorize
windows the model does not (conftest `lora`), gives row for row the results of its merge into the base weights and
of a plain peft + transformers reference, in every mode and engine; an adapter on lm_head is merged for vLLM, and
said so; the fingerprints of base and adapter key the runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from helpers import ADAPTED, PREFIX, SUFFIX

DECIDED = ("example_id", "exact_match", "match_len")  # what every mode computes


def results(out, columns=None) -> list[dict]:
    table = pq.read_table(Path(out) / "results.parquet").to_pylist()
    return [{k: row[k] for k in columns} for row in table] if columns else table


def peft_reference(tiny, adapter) -> np.ndarray:
    """Greedy suffixes of every window under peft's own adapted model (LoRA beside the weights) with a plain
    transformers `generate`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny.model), adapter).eval()
    prefix = torch.tensor([w[:PREFIX] for w in tiny.trained + tiny.unseen])
    model.generation_config.eos_token_id = None
    with torch.inference_mode():
        out = model.generate(prefix, attention_mask=torch.ones_like(prefix), max_new_tokens=SUFFIX, do_sample=False,
                             pad_token_id=0)
    return out[:, PREFIX:].numpy()


def match_lengths(generated: np.ndarray, tiny) -> list[int]:
    suffix = np.array([w[PREFIX:PREFIX + SUFFIX] for w in tiny.trained + tiny.unseen])
    miss = generated != suffix
    return np.where(miss.any(1), miss.argmax(1), SUFFIX).tolist()


@pytest.fixture(scope="module")
def reference(tiny, lora):
    return peft_reference(tiny, lora.adapter)


def extract(invoke, model, data, out, *args) -> dict:
    return json.loads(invoke("extract", "--model", model, "--data", data, "--out", out, "--batch-size", 64,
                             *args).stdout)


def test_the_adapter_memorizes_windows_its_base_does_not(tiny, tiny_runs, reference):
    adapted = range(len(tiny.trained), len(tiny.trained) + ADAPTED)
    adapter = match_lengths(reference, tiny)
    base = [r["match_len"] for r in results(tiny_runs.model)]
    assert sum(adapter[i] == SUFFIX for i in adapted) >= ADAPTED - 2
    assert sum(base[i] == SUFFIX for i in adapted) == 0


RUNS = [("decode", "hf"), ("screen", "hf"), ("verify", "hf"), ("auto", "hf"), ("decode", "vllm"), ("verify", "vllm")]


@pytest.fixture(scope="module")
def runs(tiny, lora, tmp_path_factory):
    """extract in every mode and engine on the adapter folder and on its merge (one vLLM engine each; the merge's
    is kept for the next test)."""
    from helpers import invoke_cli

    root = tmp_path_factory.mktemp("adapter_runs")
    summaries = {}
    for name, model in (("adapter", lora.adapter), ("merged", lora.merged)):
        for mode, engine in RUNS:
            out = root / f"{name}-{mode}-{engine}"
            summaries[out.name] = extract(invoke_cli, model, tiny.data, out, "--mode", mode, "--engine", engine)
    return root, summaries


@pytest.mark.parametrize("mode, engine", RUNS)
def test_extract_on_the_adapter_equals_the_merged_weights(tiny, lora, reference, runs, mode, engine):
    """Each mode and engine on the adapter folder: the rows of the same command on the merged full model, and
    the match lengths (decode: the tokens) of peft's own greedy decoding."""
    root, summaries = runs
    adapter, merged = root / f"adapter-{mode}-{engine}", root / f"merged-{mode}-{engine}"
    columns = DECIDED + (("generated_ids", "token_accuracy") if mode == "decode" else ())
    assert results(adapter, columns) == results(merged, columns)
    assert [r["match_len"] for r in results(adapter)] == match_lengths(reference, tiny)
    if mode == "decode":
        assert [r["generated_ids"] for r in results(adapter)] == reference.tolist()
    assert summaries[adapter.name]["adapter"] == {"applied": "lora" if engine == "vllm" else "peft"}
    assert summaries[adapter.name]["model"] == lora.adapter and "adapter" not in summaries[merged.name]


def test_adapter_beside_its_base_is_the_same_run(tiny, lora, tmp_path, invoke):
    """`--model BASE --adapter DIR` gives the adapter folder's rows; the manifest holds the base, its fingerprint
    and the adapter's, so a changed adapter is another run."""
    folder = tmp_path / "folder"
    extract(invoke, lora.adapter, tiny.data, folder, "--mode", "screen")
    beside = tmp_path / "beside"
    invoke("extract", "--model", tiny.model, "--adapter", lora.adapter, "--data", tiny.data, "--mode", "screen",
           "--batch-size", 64, "--out", beside)
    assert results(beside) == results(folder)
    settings = json.loads((beside / "manifest.json").read_text())["settings"]
    assert settings["model"] == lora.adapter and settings["model_base"] == tiny.model
    assert settings["model_adapter_fingerprint"].startswith("sha256:") and "peft" in \
        json.loads((beside / "manifest.json").read_text())["versions"]


def test_generate_on_the_adapter_equals_the_merged_weights(tiny, lora, reference, tmp_path, invoke):
    args = ["--data", tiny.data, "--prefix-len", PREFIX, "--max-new-tokens", SUFFIX, "--batch-size", 64]
    for name, model in (("merged", lora.merged), ("adapter", lora.adapter)):
        invoke("generate", "--model", model, *args, "--engine", "vllm", "--out", tmp_path / name)
    rows = {name: results(tmp_path / name, ("example_id", "input_ids")) for name in ("adapter", "merged")}
    assert rows["adapter"] == rows["merged"]
    assert [r["input_ids"][PREFIX:] for r in rows["adapter"]] == reference.tolist()


def test_features_and_perplexity_on_the_adapter_equal_the_merged_weights(tiny, lora, tmp_path, invoke):
    for name, teacher in (("adapter", lora.adapter), ("merged", lora.merged)):
        invoke("features", "--teacher", teacher, "--baseline", tiny.model, "--data", tiny.data,
               "--out", tmp_path / name)
        invoke("perplexity", "--model", f"m={teacher}", "--model", f"base={tiny.model}", "--data", tiny.data,
               "--out", tmp_path / f"{name}.json")
    adapter, merged = (pq.read_table(tmp_path / n / "features.parquet").to_pandas() for n in ("adapter", "merged"))
    assert adapter.example_id.tolist() == merged.example_id.tolist()
    for column in adapter.columns.drop("example_id"):
        assert np.allclose(adapter[column], merged[column], rtol=1e-4, atol=1e-5), column
    ppl = {n: json.loads((tmp_path / f"{n}.json").read_text())["models"] for n in ("adapter", "merged")}
    assert ppl["adapter"]["m"]["perplexity"] == pytest.approx(ppl["merged"]["m"]["perplexity"], rel=1e-4)
    assert ppl["adapter"]["m"]["perplexity"] != pytest.approx(ppl["adapter"]["base"]["perplexity"], rel=1e-2)


def test_an_adapter_on_lm_head_is_merged_for_vllm_and_said_so(tiny, lora, tiny_runs, tmp_path, invoke, monkeypatch):
    """vLLM does not apply LoRA on lm_head as peft does: the engine scores a temporary merged copy (removed once
    loaded), says so on stderr and in the summary, and its rows are peft's."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    result = invoke("extract", "--model", lora.head, "--data", tiny.data, "--batch-size", 64, "--out",
                    tmp_path / "vllm")
    assert "note: vLLM does not apply lm_head of adapter" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["adapter"] == {"applied": "merged", "because": ["lm_head"]}
    assert not list((tmp_path / "tmp").glob("evalmem-merged-*")), "the merged copy is removed"
    generated = [r["generated_ids"] for r in results(tmp_path / "vllm")]
    assert generated == peft_reference(tiny, lora.head).tolist()
    assert generated != [r["generated_ids"] for r in results(tiny_runs.model)], "not the base model's"


def test_bad_adapters_are_refused_in_one_line(tiny, lora, tmp_path, invoke):
    import shutil

    from helpers import one_line_error

    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    shutil.copy(Path(lora.adapter) / "adapter_model.safetensors", weights_only)
    for args, words in ((["--model", weights_only], ["no adapter_config.json"]),
                        (["--model", tiny.base, "--adapter", lora.adapter], ["was trained on", tiny.base]),
                        (["--model", lora.adapter, "--engine", "ray"], ["--engine ray does not apply LoRA"])):
        result = invoke("extract", *args, "--data", tiny.data, "--out", tmp_path / "out", code=2)
        one_line_error(result.output, *words)
        assert not (tmp_path / "out" / "results.parquet").exists()
