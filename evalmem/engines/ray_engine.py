"""Ray Data engine for clusters: `ray.data.llm` with vLLM replicas, token-id prompts passed as-is.

Each `generate` call is one Ray Data job: the prompts (token ids, `tokenized_prompt`, so no re-tokenization)
stream through an autoscaling pool of vLLM engine replicas, one per `tensor_parallel_size` GPUs of the
cluster (one CPU replica where the cluster has no GPU), and come back in order. Replicas start per call:
give `extract --engine ray` a large `--shard-size` so that each job amortizes their start-up. Connects to
the cluster named by RAY_ADDRESS (`ray start --head` prints it; `auto`: the one started on this machine), else
starts a local one of its own. Needs the optional extra: `pip install 'evalmem[ray]'`.
"""

from __future__ import annotations

import logging
import os
import socket

from evalmem.engines import EngineOptions
from evalmem.errors import InputError, first_line

PROBE_SECONDS = 10  # Ray itself retries an unreachable head for about 13 minutes before it gives up


def probe(address: str) -> None:
    """A one-line InputError unless something listens at RAY_ADDRESS when it names a head's host:port."""
    host, _, port = address.rpartition(":")
    if not host or "://" in address or not port.isdigit():  # auto, local, ray://: Ray resolves them
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        raise InputError(f"no Ray cluster at RAY_ADDRESS={address} ({first_line(exc)}): start one with "
                         "`ray start --head` or unset RAY_ADDRESS") from exc


def connect(ray, address: str) -> None:
    """Join the cluster at `address`, else (empty) start a local instance, never one found by guessing."""
    try:  # logging_level: Ray's progress lines are INFO; evalmem reports its own
        ray.init(address=address or "local", log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise InputError(f"cannot join the Ray cluster at RAY_ADDRESS={address}: {first_line(exc)} (a cluster "
                         "with token authentication also needs RAY_AUTH_MODE=token and its token)") from exc


class RayEngine:
    name = "ray"

    def __init__(self, options: EngineOptions):
        if options.model.adapter:
            raise InputError(f"--engine ray does not apply LoRA adapters ({options.model.adapter}): use --engine vllm "
                             "or hf, or a merged copy of the adapter as --model")
        address = os.environ.get("RAY_ADDRESS", "").strip()
        probe(address)
        try:
            import ray
            from ray.data.llm import build_processor, vLLMEngineProcessorConfig
        except ImportError as exc:
            raise InputError(f"--engine ray needs Ray Data: pip install 'evalmem[ray]' ({exc})") from exc
        if not ray.is_initialized():
            connect(ray, address)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        replicas = max(1, gpus // options.tensor_parallel_size)
        engine_kwargs = dict(dtype=options.dtype, tensor_parallel_size=options.tensor_parallel_size,
                             revision=options.model.revision, tokenizer_revision=options.model.revision,
                             max_model_len=options.max_model_len, max_num_seqs=options.max_num_seqs,
                             seed=options.seed)
        if options.kv_cache_gb is not None:
            engine_kwargs["kv_cache_memory_bytes"] = int(options.kv_cache_gb * 2**30)
        placement = None
        if not gpus:  # CPU: the same settings as the in-process vLLM engine (vllm_engine.py)
            from evalmem.engines.vllm_engine import cpu_kv_cache_bytes

            engine_kwargs.setdefault("kv_cache_memory_bytes", cpu_kv_cache_bytes(options))
            engine_kwargs["enforce_eager"] = True
            placement = {"bundles": [{"CPU": 1}]}
        self.config = vLLMEngineProcessorConfig(
            model_source=options.model.base, engine_kwargs=engine_kwargs, batch_size=options.batch_size,
            concurrency=replicas, placement_group_config=placement, chat_template_stage=False,
            tokenize_stage=False, detokenize_stage=False, log_engine_metrics=False)
        self.build_processor, self.ray = build_processor, ray

    def generate(self, prompts, max_new_tokens, *, temperature=0.0, top_p=1.0, seed=None):
        sampling = dict(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                        ignore_eos=True, detokenize=False, **({"seed": seed} if seed is not None else {}))
        processor = self.build_processor(
            self.config,
            preprocess=lambda row: dict(index=row["index"], tokenized_prompt=row["ids"], sampling_params=sampling),
            postprocess=lambda row: dict(index=row["index"], generated=list(row["generated_tokens"])))
        rows = self.ray.data.from_items([{"index": i, "ids": list(map(int, p))} for i, p in enumerate(prompts)])
        out = sorted(processor(rows).take_all(), key=lambda row: row["index"])
        return [list(map(int, row["generated"])) for row in out]
