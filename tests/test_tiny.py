"""The locally built tiny models: a tokenizer trained on the KJV that round-trips its text, windows cut from the
token stream, and a saved Llama the Hugging Face loaders read back."""

from __future__ import annotations

import json

import pytest
import torch

from evalmem.tiny import EOS, build_model, kjv_verses, token_windows, train_tokenizer, write_jsonl


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(kjv_verses()[:2000], tmp_path_factory.mktemp("tok"), vocab_size=512)


def test_kjv_verses():
    verses = kjv_verses()
    assert len(verses) > 30000 and verses[0].startswith("In the beginning God created")


def test_tokenizer_round_trips_text(tokenizer):
    assert len(tokenizer) == 512 and tokenizer.eos_token == EOS == tokenizer.pad_token
    text = kjv_verses()[5000]
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_windows_are_consecutive_or_overlapping(tokenizer):
    texts = kjv_verses()[:50]
    stream = [t for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]
              for t in ids + [tokenizer.eos_token_id]]
    windows = token_windows(texts, tokenizer, 20)
    assert len(windows) == len(stream) // 20 and sum(windows, []) == stream[:20 * len(windows)]
    spaced = token_windows(texts, tokenizer, 20, count=7)
    stride = min(20, (len(stream) - 20) // 6)  # the first 7 windows: consecutive where the stream is long
    assert spaced == [stream[i * stride:i * stride + 20] for i in range(7)]
    overlapping = token_windows(texts, tokenizer, 20, count=len(windows) * 3)
    assert len(overlapping) == len(windows) * 3 and all(len(w) == 20 for w in overlapping)


def test_built_model_loads_and_is_seeded(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    build_model(tmp_path / "a", tokenizer, hidden=32, layers=1, heads=1)
    build_model(tmp_path / "b", tokenizer, hidden=32, layers=1, heads=1)
    a, b = (AutoModelForCausalLM.from_pretrained(tmp_path / n) for n in "ab")
    assert a.config.vocab_size == 512 and a.config.num_hidden_layers == 1 and a.dtype == torch.float32
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    ids = torch.tensor([[1, 2, 3]])
    assert a(input_ids=ids).logits.shape == (1, 3, 512)


def test_write_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ({"id": i, "input_ids": [i]} for i in range(3)))
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"id": i, "input_ids": [i]}
                                                                           for i in range(3)]
