"""`--engine server`: a running vLLM OpenAI-compatible server (`vllm serve`; serve_configs/).

Each prompt goes as token ids to `/v1/completions` (no re-tokenization), with vLLM's own sampling
defaults made explicit (greedy at temperature 0, `ignore_eos`), and the generated ids come back through
`return_token_ids`: the same tokens as the offline engine. At most `--concurrency` requests are in flight
(the server batches them); the `openai` client retries connection errors, timeouts and 5xx answers with
exponential backoff, and a request that still fails stops the command with a one-line error (finished
shards stay on disk: rerun the command to resume, against any server that serves the same model).

`--model` must name what the server serves: its model id or the path it was started with (`root`); the
local checks (config, context length, vocabulary, fingerprint) read that same path or hub id here. An adapter
(`--model ADAPTER_FOLDER`, or `--adapter` beside the base) must be served on that base as a LoRA module
(`--enable-lora --lora-modules NAME=ADAPTER_FOLDER`): requests then name the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import openai

from evalmem import adapters
from evalmem.engines import EngineOptions
from evalmem.errors import InputError, first_line
from evalmem.models import model_config, vocab_size

MAX_RETRIES = 4  # backoff 0.5, 1, 2, 4 s (+ jitter) before a request is given up


class ServerEngine:
    name = "server"

    def __init__(self, options: EngineOptions):
        if not options.base_url:
            raise InputError("--engine server needs --base-url http://HOST:PORT/v1 (a running vLLM server)")
        self.url, self.concurrency = options.base_url, options.concurrency
        self.client_args = {"base_url": options.base_url, "api_key": options.api_key or "EMPTY",
                            "max_retries": MAX_RETRIES, "timeout": options.request_timeout}
        with self.errors("cannot reach"):
            with openai.OpenAI(**self.client_args) as client:
                served = client.models.list().data
                version = client.get(options.base_url.rstrip("/").removesuffix("/v1") + "/version", cast_to=object)
        self.served_model = self.match(options, served)
        # in the summary, not in the settings: the URL may change between a run and its resumption
        self.info = {"server": {"base_url": self.url, "served_model": self.served_model,
                                "vllm_version": version.get("version") if isinstance(version, dict) else None}}

    def match(self, options: EngineOptions, served: list) -> str:
        """The id under which the server serves `options.model` (an adapter: the LoRA module served on that base);
        refuse another model or adapter, a short context, or an adapter vLLM would not apply as peft does."""
        spec = options.model
        base = self.card(spec.base, [c for c in served if not getattr(c, "parent", None)], options)
        if not spec.adapter:
            return base.id
        unsupported = adapters.vllm_unsupported(spec.adapter, vocab_size(model_config(spec)))
        if unsupported:
            raise InputError(f"the vLLM server does not apply {', '.join(unsupported)} of adapter {spec.adapter} as "
                             "peft does: use --engine vllm (it scores a merged copy) or hf, or serve the merged model")
        return self.card(spec.adapter, [c for c in served if getattr(c, "parent", None) == base.id], options).id

    def card(self, model: str, cards: list, options: EngineOptions):
        """The served model (or LoRA module) whose id or path is `model`, with enough context for the job."""
        for card in cards:
            root = getattr(card, "root", None)
            if model in (card.id, root) or same_folder(model, root):
                limit = getattr(card, "max_model_len", None)
                if limit and options.max_model_len and options.max_model_len > limit:
                    raise InputError(f"the server at {self.url} serves {card.id} with max-model-len {limit}, "
                                     f"shorter than this job's {options.max_model_len} tokens")
                return card
        names = ", ".join(f"{c.id} ({getattr(c, 'root', None)})" for c in cards) or "nothing"
        if model == options.model.adapter:
            raise InputError(f"the server at {self.url} does not serve the adapter {model} on {options.model.base} "
                             f"(its adapters: {names}): start it with --enable-lora --lora-modules NAME={model}")
        raise InputError(f"the server at {self.url} serves {names}, not --model {model}: start it with that model "
                         "or pass the served model's path as --model")

    def generate(self, prompts, max_new_tokens, *, temperature=0.0, top_p=1.0, seed=None):
        body = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
                "extra_body": {"ignore_eos": True, "return_token_ids": True, "top_k": 0, "min_p": 0.0,
                               "repetition_penalty": 1.0}}
        with self.errors("lost"):
            return asyncio.run(self._generate(prompts, body))

    async def _generate(self, prompts, body: dict) -> list[list[int]]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(client, prompt):
            async with gate:
                answer = await client.completions.create(model=self.served_model, prompt=list(map(int, prompt)),
                                                         **body)
            ids = getattr(answer.choices[0], "token_ids", None)
            if ids is None or len(ids) != body["max_tokens"]:
                raise InputError(f"the server at {self.url} returned {'no' if ids is None else len(ids)} token ids "
                                 f"instead of {body['max_tokens']}: is it a vLLM server?")
            return list(ids)

        async with openai.AsyncOpenAI(**self.client_args) as client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    @contextlib.contextmanager
    def errors(self, what: str):
        """Turn the client's failures (after its retries) into one-line errors."""
        try:
            yield
        except openai.APIStatusError as exc:
            message = exc.body.get("message") if isinstance(exc.body, dict) else None
            raise InputError(f"the server at {self.url} answered {exc.status_code}: {first_line(message or exc)}") \
                from exc
        except openai.APIError as exc:  # connection refused or reset, timeouts: already retried
            hint = "; restart it and rerun the same command to resume" if what == "lost" else \
                "; start one (docs/serving.md) or fix --base-url"
            raise InputError(f"{what} the vLLM server at {self.url}: {first_line(exc)} "
                             f"(after {MAX_RETRIES} retries){hint}") from exc


def same_folder(model: str, root: str | None) -> bool:
    """Whether `root` (the server's model path) is the local folder `model`."""
    try:
        return bool(root) and os.path.samefile(model, root)
    except OSError:
        return False
