"""The default engine: vLLM offline (`LLM` + `TokensPrompt`), greedy, no stop at EOS.

CPU defaults were chosen by measurement (docs/benchmarks.md): the engine core runs in this
process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), eager mode, up to 512 sequences at once and a KV cache
sized to the job instead of a fraction of host memory.

`verify` (extract --mode verify) is early-exit greedy decoding inside vLLM: a v1 logits processor,
`SuffixCheck`, reads each request's expected suffix from `SamplingParams.extra_args` and ends the
request at its first mismatch by forcing one of the request's stop tokens.

A LoRA adapter runs as vLLM's LoRA (`enable_lora`, one `LoRARequest` on every request; the logits processor sees
the adapted logits), or, where vLLM would not apply part of it as peft does (LoRA on the embeddings or lm_head,
modules saved whole), as its merge into the base weights, in a temporary folder removed once loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import get_args

import click
import numpy as np
import torch

from evalmem import adapters
from evalmem.engines import EngineOptions
from evalmem.models import merged_copy, model_config, vocab_size
from evalmem.screen import decide, near_tie_tolerance

ON_CPU = not torch.cuda.is_available()
if ON_CPU:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its CPU start-up warnings are noise to users

from vllm import LLM, SamplingParams  # noqa: E402
from vllm.config.lora import MaxLoRARanks  # noqa: E402
from vllm.inputs import TokensPrompt  # noqa: E402
from vllm.lora.request import LoRARequest  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor  # noqa: E402
from vllm.v1.sample.logits_processor.builtin import process_dict_updates  # noqa: E402

SUFFIX_KEY = "evalmem_suffix"  # SamplingParams.extra_args keys read by SuffixCheck
MARKS_KEY = "evalmem_marks"
MISS, MISS_TIE, EXACT_TIE = range(3)  # the meaning of a request's three stop tokens (marks)


class VLLMEngine:
    name = "vllm"

    def __init__(self, options: EngineOptions):
        lora, self.info, merged = adapter_plan(options) if options.model.adapter else ({}, {}, None)
        self.lora = LoRARequest("adapter", 1, str(Path(options.model.adapter).resolve())) if lora else None
        kwargs = dict(model=merged.name if merged else options.model.base, dtype=options.dtype,
                      revision=options.model.revision, tokenizer_revision=options.model.revision,
                      tensor_parallel_size=options.tensor_parallel_size, seed=options.seed,
                      max_num_seqs=options.max_num_seqs, max_model_len=options.max_model_len,
                      logits_processors=[SuffixCheck],
                      enable_chunked_prefill=False)  # SuffixCheck reads every sampled row as a real step
        if options.kv_cache_gb is not None:
            kwargs["kv_cache_memory_bytes"] = int(options.kv_cache_gb * 2**30)
        elif ON_CPU:
            kwargs["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(options)
        if ON_CPU:
            kwargs["enforce_eager"] = True
        try:
            self.llm = LLM(**kwargs, **lora)
            self.generate([[0]], 1)  # surface an unsupported model configuration now, as a load error
        finally:
            if merged:  # the engine holds the weights now
                merged.cleanup()

    def generate(self, prompts, max_new_tokens, *, temperature=0.0, top_p=1.0, seed=None):
        params = SamplingParams(temperature=temperature, top_p=top_p, seed=seed, max_tokens=max_new_tokens,
                                ignore_eos=True, detokenize=False)
        requests = [TokensPrompt(prompt_token_ids=list(map(int, p))) for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False, lora_request=self.lora)
        return [list(o.outputs[0].token_ids) for o in outputs]

    def verify(self, prefix: np.ndarray, suffix: np.ndarray) -> dict[str, np.ndarray]:
        """Early-exit greedy decoding of prefix (n, P) against suffix (n, L): match_len and near_tie,
        as `evalmem.screen.verify` defines them."""
        length = suffix.shape[1]
        marks = [stop_marks(s) for s in suffix.tolist()]
        params = [SamplingParams(temperature=0.0, max_tokens=length, ignore_eos=True, detokenize=False,
                                 stop_token_ids=m, extra_args={SUFFIX_KEY: s, MARKS_KEY: m})
                  for s, m in zip(suffix.tolist(), marks)]
        requests = [TokensPrompt(prompt_token_ids=p) for p in prefix.tolist()]
        outputs = self.llm.generate(requests, params, use_tqdm=False, lora_request=self.lora)
        match_len, near_tie = np.zeros(len(outputs), np.int64), np.zeros(len(outputs), bool)
        for i, (out, m) in enumerate(zip(outputs, marks)):
            tokens, stop = out.outputs[0].token_ids, out.outputs[0].stop_reason
            match_len[i] = length if stop in (None, m[EXACT_TIE]) else len(tokens) - 1
            near_tie[i] = stop in (m[MISS_TIE], m[EXACT_TIE])
        return {"match_len": match_len, "near_tie": near_tie}


def adapter_plan(options: EngineOptions) -> tuple[dict, dict, object]:
    """How vLLM runs the adapter: LoRA (the engine's LoRA settings), or, where vLLM would not apply part of it as
    peft does (`evalmem.adapters.vllm_unsupported`), a merged copy in a temporary folder, said on stderr. Returns
    (LoRA settings, the summary's `adapter` entry, the temporary folder or None)."""
    adapter = options.model.adapter
    ranks = sorted(get_args(MaxLoRARanks))
    rank = adapters.max_rank(adapter)
    unsupported = adapters.vllm_unsupported(adapter, vocab_size(model_config(options.model)))
    unsupported += [f"rank {rank} (vLLM's largest is {ranks[-1]})"] if rank > ranks[-1] else []
    if not unsupported:
        return ({"enable_lora": True, "max_loras": 1, "max_lora_rank": next(r for r in ranks if r >= rank)},
                {"adapter": {"applied": "lora"}}, None)
    click.echo(f"note: vLLM does not apply {', '.join(unsupported)} of adapter {adapter} as peft does: scoring "
               "its merge into the base weights (a temporary copy)", err=True)
    return {}, {"adapter": {"applied": "merged", "because": unsupported}}, merged_copy(options.model, options.dtype)


def stop_marks(suffix: list[int]) -> list[int]:
    """Three token ids that do not occur in `suffix`: the stop tokens SuffixCheck forces."""
    present = set(suffix)
    marks = []
    token = 0
    while len(marks) < 3:
        if token not in present:
            marks.append(token)
        token += 1
    return marks


class SuffixCheck(LogitsProcessor):
    """Ends a greedy request at the first step whose arg-max is not its expected suffix token.

    A request takes part when its `extra_args` hold `evalmem_suffix` (the expected tokens) and
    `evalmem_marks` (three stop tokens absent from them). At step j (j tokens generated) the row's
    arg-max is compared with suffix[j] (`evalmem.screen.decide`): on a mismatch the row is forced to
    mark MISS (MISS_TIE if any decisive logit gap so far was a near tie), so the output holds the
    match_len matched tokens and the mark; a full match ends by length (EXACT_TIE forced in place of
    the last token when a near tie occurred). Rows of other requests are left alone."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.device = device
        self.tolerance = near_tie_tolerance(vllm_config.model_config.dtype)
        self.requests: dict[int, list] = {}  # batch row -> [suffix, marks, output ids (live), tied]

    @classmethod
    def validate_params(cls, params: SamplingParams):
        args = params.extra_args or {}
        if SUFFIX_KEY in args and (params.temperature != 0 or len(args.get(MARKS_KEY, ())) != 3):
            raise ValueError(f"{SUFFIX_KEY} needs temperature 0 and three {MARKS_KEY}")

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None):
        def new(params, _prompt, output_ids):
            args = params.extra_args or {}
            return [args[SUFFIX_KEY], args[MARKS_KEY], output_ids, False] if SUFFIX_KEY in args else None

        process_dict_updates(self.requests, batch_update, new)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.requests:
            return logits
        rows = [row for row, (suffix, _, out, _) in self.requests.items() if len(out) < len(suffix)]
        if not rows:
            return logits
        states = [self.requests[row] for row in rows]
        expected = torch.tensor([s[0][len(s[2])] for s in states], device=logits.device)
        hit, gap, _ = decide(logits[torch.tensor(rows, device=logits.device)], expected)
        for row, state, h, near in zip(rows, states, hit.tolist(), (gap < self.tolerance).tolist()):
            suffix, marks, out, tied = state
            tied = state[3] = tied or near
            last = len(out) == len(suffix) - 1
            mark = marks[MISS_TIE if tied else MISS] if not h else marks[EXACT_TIE] if last and tied else None
            if mark is not None:
                logits[row] = float("-inf")
                logits[row, mark] = 0.0
        return logits


CPU_BLOCK = 128  # vLLM's CPU KV-cache block size (tokens): a sequence holds whole blocks


def cpu_kv_cache_bytes(options: EngineOptions) -> int:
    """Enough KV cache for `max_num_seqs` full-length sequences in whole blocks (+20%), between 64 MiB and
    8 GiB: a sequence holds whole blocks, so a cache sized in tokens would hold fewer sequences than asked."""
    config = model_config(options.model).get_text_config()
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dtype_bytes = 2 if options.dtype in ("bfloat16", "float16", "half") else 4
    per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes
    blocks = -(-(options.max_model_len or 2048) // CPU_BLOCK)
    need = int(1.2 * options.max_num_seqs * blocks * CPU_BLOCK * per_token)
    return min(max(need, 64 << 20), 8 << 30)
