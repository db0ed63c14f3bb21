"""The default engine: vLLM offline (`LLM` + `TokensPrompt`), greedy, no stop at EOS.

CPU defaults were chosen by measurement (ENVIRONMENT.md, scripts/bench_extract.py): the engine core
runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), eager mode, up to 512 sequences at once
and a KV cache sized to the job instead of a fraction of host memory.
"""

from __future__ import annotations

import os

import torch

from evalmem.engines import EngineOptions, model_config

ON_CPU = not torch.cuda.is_available()
if ON_CPU:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its CPU start-up warnings are noise to users

from vllm import LLM, SamplingParams  # noqa: E402
from vllm.inputs import TokensPrompt  # noqa: E402


class VLLMEngine:
    name = "vllm"

    def __init__(self, options: EngineOptions):
        kwargs = dict(model=options.model, dtype=options.dtype,
                      tensor_parallel_size=options.tensor_parallel_size, seed=options.seed,
                      max_num_seqs=options.max_num_seqs, max_model_len=options.max_model_len)
        if options.kv_cache_gb is not None:
            kwargs["kv_cache_memory_bytes"] = int(options.kv_cache_gb * 2**30)
        elif ON_CPU:
            kwargs["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(options)
        if ON_CPU:
            kwargs["enforce_eager"] = True
        self.llm = LLM(**kwargs)
        self.generate([[0]], 1)  # surface an unsupported model configuration now, as a load error

    def generate(self, prompts, max_new_tokens, *, temperature=0.0, top_p=1.0, seed=None):
        params = SamplingParams(temperature=temperature, top_p=top_p, seed=seed, max_tokens=max_new_tokens,
                                ignore_eos=True, detokenize=False)
        requests = [TokensPrompt(prompt_token_ids=list(map(int, p))) for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outputs]


def cpu_kv_cache_bytes(options: EngineOptions) -> int:
    """Enough KV cache for `max_num_seqs` full-length sequences (+20%), between 64 MiB and 8 GiB."""
    config = model_config(options.model).get_text_config()
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dtype_bytes = 2 if options.dtype in ("bfloat16", "float16", "half") else 4
    per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes
    need = int(1.2 * options.max_num_seqs * (options.max_model_len or 2048) * per_token)
    return min(max(need, 64 << 20), 8 << 30)
