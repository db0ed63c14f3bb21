"""The transformers engine: batched `model.generate` (the reference), and the torch modes of `evalmem.screen`."""

from __future__ import annotations

import torch

from evalmem.engines import EngineOptions
from evalmem.models import load_causal_lm, prepack


class HFEngine:
    name = "hf"

    def __init__(self, options: EngineOptions):
        self.model = prepack(load_causal_lm(options.model, options.dtype))  # an adapter: applied by peft, as trained
        self.info = {"adapter": {"applied": "peft"}} if options.model.adapter else {}
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
        device = next(self.model.parameters()).device
        for i in range(0, len(prompts), self.batch_size):
            batch = torch.tensor(prompts[i:i + self.batch_size], device=device)
            ids = self.model.generate(batch, attention_mask=torch.ones_like(batch), generation_config=config)
            out.extend(ids[:, batch.shape[1]:].tolist())
        return out

    def verify(self, prefix, suffix):
        from evalmem.screen import verify

        return verify(self.model, prefix, suffix, self.batch_size)

    def screen(self, windows, temperature: float = 1.0, top_k: int = 0):
        """Every position's statistics of the windows from one teacher-forced pass (`evalmem.scores`)."""
        from evalmem.screen import profile

        return profile(self.model, windows, self.batch_size, temperature, top_k)

    def auto(self, prefix, suffix, max_distance: float):
        from evalmem.screen import auto

        return auto(self.model, prefix, suffix, self.batch_size, max_distance)
