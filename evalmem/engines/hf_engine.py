"""The transformers reference engine: batched `model.generate`, prompts of equal length."""

from __future__ import annotations

import torch

from evalmem.engines import EngineOptions


class HFEngine:
    name = "hf"

    def __init__(self, options: EngineOptions):
        from transformers import AutoModelForCausalLM

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = "auto" if options.dtype == "auto" else getattr(torch, _TORCH_DTYPES[options.dtype])
        self.model = AutoModelForCausalLM.from_pretrained(options.model, dtype=dtype).to(self.device).eval()
        self.model.generation_config.eos_token_id = None  # never stop early (generate merges the model's own)
        self.batch_size = options.batch_size

    @torch.inference_mode()
    def generate(self, prompts, max_new_tokens, *, temperature=0.0, top_p=1.0, seed=None):
        from transformers import GenerationConfig

        sampling = temperature > 0
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sampling,
                                  temperature=temperature if sampling else None,
                                  top_p=top_p if sampling else None, top_k=None, pad_token_id=0)
        if seed is not None:
            torch.manual_seed(seed)
        out: list[list[int]] = []
        for i in range(0, len(prompts), self.batch_size):
            batch = torch.tensor(prompts[i:i + self.batch_size], device=self.device)
            ids = self.model.generate(batch, attention_mask=torch.ones_like(batch), generation_config=config)
            out.extend(ids[:, batch.shape[1]:].tolist())
        return out

    def verify(self, prefix, suffix):
        """Early-exit greedy decoding against the true suffix: `evalmem.screen.verify`."""
        from evalmem.screen import verify

        return verify(self.model, prefix, suffix, self.batch_size)


_TORCH_DTYPES = {"float32": "float32", "float": "float32", "bfloat16": "bfloat16",
                 "float16": "float16", "half": "float16"}
