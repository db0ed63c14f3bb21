"""What the tests share: the tiny memorizing model's builder, the CLI in and out of process, and hand-built
result directories in evalmem's formats."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq

from evalmem.tiny import build_model, kjv_verses, token_windows, train_tokenizer, write_jsonl

PREFIX, SUFFIX = 50, 50
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


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


ADAPTED = 8  # the adapter's windows: the first ADAPTED unseen ones (w32..w39)


def lora_setup(tiny, root: str | Path, epochs: int = 120, lr: float = 1e-2) -> SimpleNamespace:
    """LoRA adapters on the memorizing model (`tiny.model`): `adapter`, trained by evalmem's own trainer (peft
    through TRL) on the first ADAPTED unseen windows until it memorizes them, and `merged`, those weights merged
    into the base by peft and saved as a full model; `head`, an adapter with LoRA on lm_head and q_proj (random,
    small, not trained). Built once: reused if `root` is done."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from evalmem.models import load_causal_lm
    from evalmem.recipe import Peft
    from train.finetune import finetune

    root = Path(root)
    made = SimpleNamespace(adapter=str(root / "adapter"), merged=str(root / "merged"), head=str(root / "head"),
                           windows=tiny.unseen[:ADAPTED])
    if (root / "done").exists():
        return made
    peft = Peft(enabled=True, r=16, alpha=32.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                 "up_proj", "down_proj"])
    finetune(tiny.model, made.windows, made.adapter, epochs=epochs, lr=lr, batch_size=ADAPTED, scheduler="constant",
             peft=peft)
    base = load_causal_lm(str(Path(tiny.model).resolve()), "float32", to_device="cpu")
    PeftModel.from_pretrained(base, made.adapter).merge_and_unload().save_pretrained(made.merged)
    tiny.tokenizer.save_pretrained(made.merged)
    torch.manual_seed(0)
    base = load_causal_lm(str(Path(tiny.model).resolve()), "float32", to_device="cpu")
    head = get_peft_model(base, LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "lm_head"],
                                           init_lora_weights=False))
    with torch.no_grad():
        for name, param in head.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)  # changes some greedy tokens, keeps most memorized windows
    head.save_pretrained(made.head)
    (root / "done").touch()
    return made


def run_cli(*args, check=True, **kwargs):
    """Run `python -m evalmem ARGS` in a subprocess (for exit codes, stderr and kill tests)."""
    proc = subprocess.run([sys.executable, "-m", "evalmem", *map(str, args)], capture_output=True, text=True,
                          **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"evalmem {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def invoke_cli(*args, code=0, group=None):
    """Run `evalmem ARGS` (or another click `group`, e.g. train.cli.main) in this process, reusing the
    session's vLLM engine; check the exit code."""
    from click.testing import CliRunner

    from evalmem.cli import main

    group = group or main
    result = CliRunner().invoke(group, [str(a) for a in args])
    if result.exit_code != code:
        raise AssertionError(f"{group.name} {' '.join(map(str, args))}: exit {result.exit_code} != {code}\n"
                             f"{result.output[-3000:]}\n{result.exception!r}")
    return result


def write_run(path, ids, memorized, *, data_fingerprint="sha256:test-data", prefix_len=PREFIX, suffix_len=SUFFIX,
              model="model", windows=None, mode="decode"):
    """A hand-built extraction run directory in `evalmem extract`'s format: the examples in `memorized`
    are exact matches (token accuracy 1), the others match their first 5 tokens (token accuracy 0.2).
    `windows`: each example's (prefix ids, suffix ids) [default: 0, 1, ... for every example]; `mode` verify
    leaves the columns that need generated text null, as `--mode verify` does."""
    path = Path(path)
    path.mkdir(parents=True)
    hit = [i in memorized for i in ids]
    windows = windows or [(list(range(prefix_len)), list(range(suffix_len)))] * len(ids)
    suffix = [s for _, s in windows]
    table = pa.table({
        "example_id": ids, "exact_match": hit, "match_len": [suffix_len if h else 5 for h in hit],
        "token_accuracy": [1.0 if h else 0.2 for h in hit], "edit_distance": [0.0 if h else 0.8 for h in hit],
        "approx_match": hit, "generated_ids": [s if h else s[:5] + [t - 1 if t else 1 for t in s[5:]]
                                               for s, h in zip(suffix, hit)],
        "suffix_ids": suffix, "prefix_ids": [p for p, _ in windows]})
    if mode == "verify":
        for column in ("token_accuracy", "edit_distance", "approx_match", "generated_ids"):
            i = table.column_names.index(column)
            table = table.set_column(i, column, pa.nulls(len(ids), table.schema.field(column).type))
    pq.write_table(table, path / "results.parquet", write_page_checksum=True)  # as evalmem writes results
    settings = {"command": "extract", "model": model, "data": "data.jsonl", "data_fingerprint": data_fingerprint,
                "prefix_len": prefix_len, "suffix_len": suffix_len, "engine": "hf", "mode": mode}
    (path / "manifest.json").write_text(json.dumps({"settings": settings, "versions": {}}))
    n, exact = len(ids), sum(hit)
    (path / "summary.json").write_text(json.dumps({
        "model": model, "data": "data.jsonl", "n_examples": n, "prefix_len": prefix_len, "suffix_len": suffix_len,
        "engine": "hf", "mode": mode, "exact_match_count": exact, "exact_match_rate": exact / n}))
    return str(path)


def write_features(path, ids, x, fingerprint="sha256:test-data"):
    """A hand-built `evalmem features` directory."""
    from evalmem.settings import DEFAULT_FEATURES

    path = Path(path)
    path.mkdir(parents=True)
    columns = {"example_id": ids, **{name: x[:, i] for i, name in enumerate(DEFAULT_FEATURES)},
               "min_k_logprob": -x[:, 0]}
    pq.write_table(pa.table(columns), path / "features.parquet")
    settings = {"command": "features", "data_fingerprint": fingerprint, "prefix_len": 50, "suffix_len": 50}
    (path / "manifest.json").write_text(json.dumps({"settings": settings, "versions": {}}))
    (path / "summary.json").write_text(json.dumps({"n_examples": len(ids)}))
    return str(path)


def flip_byte(path, column: str) -> None:
    """Damage a Parquet file under its valid footer: flip the last byte of `column`'s pages (page data, which
    the page CRC covers; not the page header's statistics)."""
    path = Path(path)
    meta = pq.read_metadata(path)
    chunk = meta.row_group(0).column(meta.schema.to_arrow_schema().get_field_index(column))
    damaged = bytearray(path.read_bytes())
    damaged[(chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size - 1] ^= 0xFF
    path.write_bytes(bytes(damaged))




def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parquet(path, columns):
    pq.write_table(pa.table(columns), path)
    return path


def one_line_error(output: str, *words) -> str:
    """The single `Error: ...` line of a refused command, checked to name `words`."""
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in output, output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def rows(out):
    return pq.read_table(out / "results.parquet").to_pylist()


TIMING = {"seconds", "startup_seconds", "examples_per_second", "tokens_per_second"}
KILLED_ARGS = ["--engine", "hf", "--batch-size", 1, "--shard-size", 2, "--limit", 12]  # 6 slow shards
COMMAND_ARGS = {"extract": [], "generate": ["--prefix-len", 50, "--max-new-tokens", 50]}


def same_summary(out, reference):
    """summary.json of two runs, equal but for timings."""
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    return {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}


# Regions of the diagram (ids e0..e99): which runs memorize each example.
REGIONS = {
    range(0, 10): {"teacher", "b0", "b1", "soft", "hard"},  # easy, every seed, both students
    range(10, 15): {"teacher", "b0", "soft"},  # easy by one seed only
    range(15, 17): {"teacher", "soft", "hard"},  # teacher-only, inherited by both
    range(17, 23): {"teacher", "hard"},  # teacher-only, inherited by hard
    range(23, 31): {"teacher"},  # teacher-only, not inherited
    range(31, 34): {"b1", "soft"},  # baseline-only, soft memorizes too
    range(34, 38): {"b0", "b1"},  # both seeds, not the teacher
    range(38, 39): {"hard"},  # hard student only
}  # e39..e99: nobody
IDS = [f"e{i}" for i in range(100)]


def members(name):
    return {f"e{i}" for r, who in REGIONS.items() if name in who for i in r}


def compare_args(runs, out):
    return ["compare", "--teacher", runs["teacher"], "--baseline", f"b0={runs['b0']}", "--baseline",
            f"b1={runs['b1']}", "--student", f"soft={runs['soft']}", "--student", f"hard={runs['hard']}",
            "--out", out]


def synthetic(n=3000, n_pos=90, separation=3.0, seed=0):
    """Labels with `n_pos` positives and the paper's four features, the first shifted by `separation`
    standard deviations for positives, the others pure noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=bool)
    y[rng.choice(n, n_pos, replace=False)] = True
    x = rng.normal(size=(n, 4))
    x[:, 0] += separation * y
    return x, y


def predictor_inputs(tmp_path) -> dict:
    """A data file, features of its 600 examples and labels where 30 are memorized (feature 0 separates)."""
    from evalmem.data import load_source
    from evalmem.settings import DataSpec

    x, y = synthetic(n=600, n_pos=30, separation=6.0)
    ids = [f"d{i}" for i in range(600)]
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": i, "text": f"example {i}"} for i in ids])
    fingerprint = load_source(DataSpec(str(data))).fingerprint
    feats = write_features(tmp_path / "feats", ids, x, fingerprint)
    labels = write_run(tmp_path / "labels", ids, {i for i, hit in zip(ids, y) if hit}, data_fingerprint=fingerprint)
    return {"data": str(data), "feats": feats, "labels": labels, "ids": ids, "y": y, "x": x, "tmp": tmp_path}
