"""The engine registry and the engines at their interface: every engine greedy-decodes the tiny model's
windows as transformers does, the modes each engine runs, the job's limits checked before any engine starts,
and the pool that keeps one engine between jobs."""

import numpy as np
import pytest

from evalmem.engines import ENGINES, EngineOptions, EnginePool, engine_for, for_job
from evalmem.errors import InputError
from evalmem.models import ModelSpec
from helpers import PREFIX, SUFFIX


@pytest.fixture(scope="module")
def windows(tiny):
    rows = np.array(tiny.trained[:8] + tiny.unseen[:8])
    return rows[:, :PREFIX], rows[:, PREFIX:PREFIX + SUFFIX]


def options(tiny, engine, mode="decode"):
    return for_job(EngineOptions(engine=engine), model=tiny.model, mode=mode, dtype="float32",
                   seq_len=PREFIX + SUFFIX)


def test_engines_decode_and_verify_like_transformers(tiny, windows):
    """vllm and hf give transformers' greedy tokens, and verify gives the match_len of those tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    prefix, suffix = windows
    model = AutoModelForCausalLM.from_pretrained(tiny.model).eval()
    with torch.inference_mode():
        ids = torch.from_numpy(prefix)
        model.generation_config.eos_token_id = None  # no stop at EOS: the suffix length is fixed
        reference = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=SUFFIX, do_sample=False,
                                   pad_token_id=0)[:, PREFIX:].numpy()
    match_len = np.where((reference != suffix).any(1), (reference != suffix).argmax(1), SUFFIX)
    from evalmem.cli.run import ENGINES as pool  # the CLI's: the tests' later jobs reuse its vLLM engine

    for name in ("vllm", "hf"):
        engine = pool.get(options(tiny, name))
        assert np.array_equal(np.array(engine.generate(prefix.tolist(), SUFFIX)), reference), name
        assert engine.verify(prefix, suffix)["match_len"].tolist() == match_len.tolist(), name
    assert (match_len == SUFFIX).any() and (match_len < SUFFIX).any()


def test_each_mode_runs_on_the_engines_that_declare_it():
    assert engine_for("decode", None) == "vllm" and engine_for("verify", None) == "vllm"
    assert engine_for("screen", None) == engine_for("auto", None) == "hf"
    for name, info in ENGINES.items():
        for mode in ("decode", "screen", "verify", "auto"):
            if mode in info.modes:
                assert engine_for(mode, name) == name
            else:
                with pytest.raises(InputError, match=f"--mode {mode} does not run on --engine {name}: use --engine"):
                    engine_for(mode, name)


def test_job_limits_are_checked_before_any_engine_starts(tiny):
    with pytest.raises(InputError, match="--max-model-len 64 is shorter than the job's prefix"):
        for_job(EngineOptions(max_model_len=64), model=tiny.model, mode="decode", dtype="float32", seq_len=100)
    resolved = options(tiny, None, "screen")
    assert (resolved.engine, resolved.max_model_len, resolved.model) == ("hf", 100, ModelSpec(tiny.model))
    assert resolved.batch_size == 16  # on CPU: screen's windows per pass that stay in cache


def test_pool_keeps_one_engine_for_the_same_model_and_options(tiny):
    pool = EnginePool()
    first = pool.get(options(tiny, "hf"))
    assert pool.get(options(tiny, "hf")) is first
    assert pool.get(options(tiny, "hf", "verify")) is not first  # another batch size: another engine
    pool.close()
    assert pool.engine is None
