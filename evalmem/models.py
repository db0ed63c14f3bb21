"""Models and tokenizers as every command reads them: configs, context length, fingerprints, loading.

A model is a local Hugging Face folder or a hub id (at a revision: a branch, tag or commit such as Pythia's training
checkpoints `step143000`), or a PEFT LoRA adapter folder applied to one (the base it names in adapter_config.json,
or the one given beside it): `model_spec` makes a `ModelSpec` of either, and every function here takes one or a
name. Each loader turns a failure into a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evalmem import adapters
from evalmem.errors import InputError, first_line

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelSpec:
    """A full model (`base`, a hub id at `revision` or a folder), or the LoRA adapter folder `adapter` applied to
    it."""

    base: str
    adapter: str | None = None
    revision: str | None = None

    @property
    def name(self) -> str:
        """What the user named: the adapter folder, else the model."""
        return self.adapter or self.base

    def __str__(self) -> str:
        return f"{self.base}@{self.revision}" if self.revision else self.name


def model_spec(model: str | ModelSpec, adapter: str | None = None, revision: str | None = None) -> ModelSpec:
    """`model` as a spec: an adapter folder is applied to the base it names; `adapter` (`--adapter`) is applied
    to `model`; `revision` (`--revision`) is the hub model's revision. An adapter trained on another base, a folder
    of adapter weights without its config, or a revision of a local folder is a one-line error."""
    if isinstance(model, ModelSpec):
        return model if adapter is None else model_spec(model.base, adapter)
    if revision is not None:
        if Path(model).exists() or adapter is not None or adapters.is_adapter(model):
            raise InputError(f"--revision {revision} names a revision of a hub model, and {model} is a local folder "
                             "or has an adapter: give the checkpoint's own folder as --model instead")
        return ModelSpec(model, revision=revision)
    if adapter is not None:
        adapters.adapter_config(adapter)
        if adapters.is_adapter(model):
            raise InputError(f"--model {model} is an adapter folder: give its base model as --model with "
                             f"--adapter {adapter}")
        adapters.check_base(adapter, model)
        return ModelSpec(model, adapter)
    if not adapters.is_adapter(model):
        return ModelSpec(model)
    base = adapters.recorded_base(model)
    if adapters.is_adapter(base):
        raise InputError(f"adapter {model} names another adapter, {base}, as its base: merge that one first")
    adapters.check_fits(model, base)
    return ModelSpec(base, model)


def model_config(model: str | ModelSpec):
    """The (base) model's transformers config; a one-line error when the model cannot be found or read."""
    from transformers import AutoConfig

    spec = model_spec(model)
    try:
        return AutoConfig.from_pretrained(spec.base, revision=spec.revision)
    except Exception as exc:
        raise InputError(f"cannot load model {spec}: {first_line(exc)}") from exc


def context_length(config) -> int | None:
    """The longest sequence the model accepts, from its config."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def vocab_size(config) -> int:
    return config.get_text_config().vocab_size


def model_fingerprint(model: str, revision: str | None = None) -> str:
    """A full model's: local folder: a hash of its config and its weight files' names, sizes and times; hub id:
    the commit its revision (default: the main branch) names, or the revision itself where neither the hub nor the
    cache can say."""
    path = Path(model)
    if not path.is_dir():
        from transformers.utils import cached_file
        from transformers.utils.hub import extract_commit_hash

        try:
            return f"hub:{model}@{extract_commit_hash(cached_file(model, 'config.json', revision=revision), None)}"
        except OSError:
            return f"hub:{model}@{revision or 'main'}"
    return adapters.folder_digest(path, sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")), "config.json")


def model_fingerprints(model: str | ModelSpec) -> dict[str, str]:
    """What identifies a model in a run's settings: `fingerprint` (the base's), and for an adapter `base` and
    `adapter_fingerprint` (its adapter_config.json and weights)."""
    spec = model_spec(model)
    found = {"fingerprint": model_fingerprint(spec.base, spec.revision)}
    if spec.adapter:
        found |= {"base": spec.base, "adapter_fingerprint": adapters.adapter_fingerprint(spec.adapter)}
    return found


def resolve_dtype(config, dtype: str) -> str:
    """`auto` means the dtype the model was saved in (float32 if it does not say)."""
    if dtype != "auto":
        return dtype
    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return str(saved).removeprefix("torch.") if saved else "float32"


def load_tokenizer(name: str | ModelSpec):
    """The tokenizer of a model or tokenizer folder; an adapter's own where its folder holds one, else its
    base's."""
    from transformers import AutoTokenizer

    spec = model_spec(name)
    own = spec.adapter and (Path(spec.adapter) / "tokenizer_config.json").exists()
    try:
        return AutoTokenizer.from_pretrained(spec.adapter if own else spec.base, revision=spec.revision)
    except Exception as exc:
        raise InputError(f"cannot load a tokenizer from {name} ({first_line(exc).rstrip(':')}); "
                         "pass --tokenizer NAME_OR_FOLDER or give pre-tokenized input_ids") from exc


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_causal_lm(name: str | ModelSpec, dtype: str = "auto", to_device: str | None = None, train: bool = False,
                   merge: bool = False):
    """A causal LM in `dtype` ("auto": as saved), on `to_device` (default: the GPU if there is one),
    in eval mode unless `train`; a one-line error if it does not load. An adapter is applied by peft, as trained
    (LoRA beside the base weights), or merged into them (`merge`, and a model to train in full)."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = model_spec(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.base, revision=spec.revision,
                                                     dtype="auto" if dtype == "auto" else getattr(torch, dtype))
        if spec.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, spec.adapter)
            model = model.merge_and_unload() if merge or train else model
    except Exception as exc:
        raise InputError(f"cannot load model {spec}: {first_line(exc)}") from exc
    model = model.to(to_device or device())
    return model.train() if train else model.eval()


def prepack(model):
    """`model` (in eval mode) with its body's nn.Linear layers replaced by oneDNN linears holding pre-packed
    weights: faster matrix products for CPU inference where torch's default BLAS is slower than oneDNN
    (docs/benchmarks.md). The lm_head stays an nn.Linear (evalmem.scores reads its weight). Unchanged on a GPU, in
    16-bit dtypes (oneDNN's bf16 path needs AVX-512), or with an adapter applied by peft (its layers wrap the base
    ones)."""
    import torch
    from torch.utils.mkldnn import MkldnnLinear

    weight = model.get_output_embeddings().weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not torch.backends.mkldnn.is_available() \
            or hasattr(model, "peft_config"):
        return model
    body = model.get_decoder()
    for parent in list(body.modules()):
        for name, child in parent.named_children():
            if type(child) is torch.nn.Linear:
                setattr(parent, name, MkldnnLinear(child, torch.float32))
    return model


def merged_copy(spec: ModelSpec, dtype: str = "auto"):
    """The adapter merged into its base's weights, saved with its tokenizer in a temporary folder (a
    `tempfile.TemporaryDirectory`: `.name`, `.cleanup()`), for an engine that cannot apply it itself."""
    import tempfile

    folder = tempfile.TemporaryDirectory(prefix="evalmem-merged-")
    load_causal_lm(spec, dtype, to_device="cpu", merge=True).save_pretrained(folder.name)
    load_tokenizer(spec).save_pretrained(folder.name)
    return folder
