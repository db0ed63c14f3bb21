"""PEFT LoRA adapters as models: reading an adapter folder, checking that it fits the base it is applied to,
fingerprints, and which parts of an adapter vLLM does not apply as peft does.

An adapter folder holds adapter_config.json (its base model: `base_model_name_or_path`) and
adapter_model.safetensors (or .bin); `evalmem.models.ModelSpec` pairs it with the base it is applied to.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from evalmem.errors import InputError, first_line

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
SAMPLE = 1 << 20  # bytes read at the start, middle and end of each weight file to tell two bases apart


def is_adapter(path: str) -> bool:
    """Whether `path` is an adapter folder (or a folder of adapter weights without its config)."""
    folder = Path(path)
    return folder.is_dir() and any((folder / name).exists() for name in (ADAPTER_CONFIG, *ADAPTER_WEIGHTS))


def adapter_config(adapter: str) -> dict:
    """adapter_config.json of a LoRA adapter folder; a one-line error for anything else."""
    folder = Path(adapter)
    path = folder / ADAPTER_CONFIG
    if not folder.is_dir():
        raise InputError(f"no such adapter folder: {adapter}")
    if not path.exists():
        held = "holds adapter weights but" if any((folder / w).exists() for w in ADAPTER_WEIGHTS) else "has"
        raise InputError(f"{adapter} {held} no {ADAPTER_CONFIG}: not a PEFT adapter folder (save it with "
                         "peft's save_pretrained)")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {first_line(exc)}") from exc
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise InputError(f"{adapter} is a {kind or 'unknown'} PEFT adapter: only LoRA adapters are read")
    if not weights_file(adapter):
        raise InputError(f"{adapter} has no {' or '.join(ADAPTER_WEIGHTS)}")
    return config


def weights_file(folder: str | Path) -> Path | None:
    return next((Path(folder) / w for w in ADAPTER_WEIGHTS if (Path(folder) / w).exists()), None)


def recorded_base(adapter: str) -> str:
    """The base model an adapter folder names; a one-line error if it names none or one that is not here."""
    base = adapter_config(adapter).get("base_model_name_or_path")
    if not base:
        raise InputError(f"{adapter}/{ADAPTER_CONFIG} names no base model (base_model_name_or_path): pass "
                         f"--model BASE --adapter {adapter}")
    if not Path(base).is_dir() and (Path(base).is_absolute() or base.startswith(".")):
        raise InputError(f"the base model {base} that {adapter} was trained on is not here: pass --model BASE "
                         f"--adapter {adapter}")
    return base


def folder_digest(path: Path, files: list[Path], config: str, sample: bool = False) -> str:
    """sha256 of a folder's `config` file and of each file's name and size, then its mtime, or (`sample`) bytes
    from its start, middle and end (equal for copies of the same weights)."""
    h = hashlib.sha256((path / config).read_bytes() if (path / config).exists() else b"")
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}".encode())
        if not sample:
            h.update(f":{st.st_mtime_ns}".encode())
            continue
        with open(f, "rb") as data:
            for offset in (0, max(0, st.st_size // 2 - SAMPLE // 2), max(0, st.st_size - SAMPLE)):
                data.seek(offset)
                h.update(data.read(SAMPLE))
    return "sha256:" + h.hexdigest()


def model_weight_files(path: Path) -> list[Path]:
    """A full model folder's weights: its safetensors files, else its pytorch_model*.bin files."""
    return sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))


def adapter_fingerprint(adapter: str) -> str:
    """A hash of adapter_config.json and the adapter weights' names, sizes and times."""
    return folder_digest(Path(adapter), [weights_file(adapter)], ADAPTER_CONFIG)


def same_model(a: str, b: str) -> bool:
    """Whether two model names are the same model: the same name or folder, or folders with the same config and
    weight files that agree in size and in the bytes sampled from them."""
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    if not (pa.is_dir() and pb.is_dir()):
        return False
    if os.path.samefile(pa, pb):
        return True
    digest = [folder_digest(p, model_weight_files(p), "config.json", sample=True) for p in (pa, pb)]
    return [f.name for f in model_weight_files(pa)] == [f.name for f in model_weight_files(pb)] \
        and digest[0] == digest[1]


def tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of safetensors files, from their headers (no weights read); .bin files are
    memory-mapped."""
    import torch
    from safetensors import safe_open

    shapes = {}
    for f in files:
        if f.suffix == ".safetensors":
            with safe_open(str(f), framework="pt") as st:
                shapes |= {k: tuple(st.get_slice(k).get_shape()) for k in st.keys()}
        else:
            shapes |= {k: tuple(v.shape) for k, v in torch.load(f, map_location="cpu", mmap=True,
                                                                weights_only=True).items()}
    return shapes


def lora_modules(adapter: str) -> dict[str, dict[str, tuple[int, ...]]]:
    """The modules an adapter changes (names as in the base model's weights) and its tensors' shapes for each:
    `A`, `B` (LoRA on a linear layer), `embedding_A`, `embedding_B` (LoRA on an embedding) or `full` (a module
    saved whole: modules_to_save, or the base weights peft saves beside LoRA on an embedding or lm_head)."""
    modules: dict[str, dict] = {}
    for key, shape in tensor_shapes([weights_file(adapter)]).items():
        name = key.removeprefix("base_model.model.")
        for suffix, kind in ((".lora_A.weight", "A"), (".lora_B.weight", "B"), (".lora_embedding_A", "embedding_A"),
                             (".lora_embedding_B", "embedding_B"), (".base_layer.weight", "full"), (".weight", "full")):
            if name.endswith(suffix):
                modules.setdefault(name.removesuffix(suffix), {})[kind] = shape
                break
    return modules


def check_fits(adapter: str, base: str) -> None:
    """Refuse an adapter whose modules the base does not have in the sizes it was trained on (an adapter for
    another base model); a base without local safetensors/bin weights (a hub id) is not checked."""
    folder = Path(base)
    files = model_weight_files(folder) if folder.is_dir() else []
    if not files:
        return
    weights = tensor_shapes(files)
    modules = lora_modules(adapter)
    found = 0
    for module, tensors in modules.items():
        shape = weights.get(module + ".weight")
        if shape is None:
            continue
        found += 1
        embedding = "embedding_A" in tensors
        fan_in, fan_out = (shape[0], shape[1]) if embedding else (shape[1], shape[0])
        a, b = tensors.get("embedding_A" if embedding else "A"), tensors.get("embedding_B" if embedding else "B")
        wrong = tensors.get("full", shape) != shape or (a and a[-1] != fan_in) or (b and b[0] != fan_out)
        if wrong:
            raise InputError(f"adapter {adapter} does not fit base model {base}: its {module} has other sizes "
                             f"than the base's {tuple(shape)} (an adapter trained on another base model)")
    if modules and not found:
        raise InputError(f"adapter {adapter} does not fit base model {base}: the base has none of the modules it "
                         f"adapts (e.g. {next(iter(modules))}): an adapter trained on another base model")


def check_base(adapter: str, base: str) -> None:
    """`--adapter` beside `--model BASE`: refuse an adapter trained on another model than BASE (where the base
    it names is here to compare with) or whose modules BASE does not have in the same sizes."""
    check_fits(adapter, base)
    named = adapter_config(adapter).get("base_model_name_or_path")
    if named and Path(named).is_dir() and Path(base).is_dir() and not same_model(named, base):
        raise InputError(f"adapter {adapter} was trained on {named}, not on --model {base}")


def vllm_unsupported(adapter: str, vocab_size: int) -> list[str]:
    """What of the adapter vLLM would not apply as peft does: LoRA on the input embeddings or on the output
    projection to the vocabulary (lm_head), modules saved whole, and peft features vLLM lacks; [] if none."""
    config = adapter_config(adapter)
    found = []
    for module, tensors in lora_modules(adapter).items():
        if "embedding_A" in tensors or "full" in tensors or tensors.get("B", (0,))[0] == vocab_size:
            found.append(module.rsplit(".", 1)[-1])
    features = {"use_dora": "DoRA", "lora_bias": "lora_bias", "layer_replication": "layer_replication",
                "trainable_token_indices": "trainable_token_indices", "alora_invocation_tokens": "aLoRA"}
    found += [name for key, name in features.items() if config.get(key)]
    if config.get("bias", "none") != "none":
        found.append(f"bias={config['bias']}")
    if isinstance(config.get("init_lora_weights"), str) and config["init_lora_weights"].lower() not in (
            "gaussian", "eva", "orthogonal"):
        found.append(f"init_lora_weights={config['init_lora_weights']}")
    return sorted(set(found), key=found.index)


def max_rank(adapter: str) -> int:
    """The largest LoRA rank in the adapter (rank_pattern included)."""
    config = adapter_config(adapter)
    return max([int(config.get("r") or 1), *map(int, (config.get("rank_pattern") or {}).values())])
