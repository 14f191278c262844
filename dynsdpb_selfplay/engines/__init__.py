"""Generation engines behind one interface: ``vllm`` (main), ``hf`` (fallback and reference), ``auto``.

from dynsdpb_selfplay.engines import EngineConfig, SamplingConfig, make_engine

with make_engine("smollm2-135m-instruct", EngineConfig(backend="auto")) as engine:
    outs = engine.generate([[{"role": "user", "content": "2+2?"}]], SamplingConfig(max_new_tokens=32))
"""

from __future__ import annotations

import dataclasses
import importlib.util

from ..errors import EngineUnavailableError, UserInputError
from .base import Completion, Engine, EngineConfig, Generation, SamplingConfig, resolve_dtype

__all__ = [
    "Completion",
    "Engine",
    "EngineConfig",
    "EngineUnavailableError",
    "Generation",
    "SamplingConfig",
    "make_engine",
    "pick_backend",
    "resolve_dtype",
    "vllm_available",
    "with_lora",
]

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks


def vllm_available() -> bool:
    """Whether the ``vllm`` module is installed (checked without importing it, which takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


def pick_backend(backend: str = "auto") -> str:
    """``auto`` -> ``vllm`` when importable, else ``hf``; an explicit ``vllm`` without the package is an error."""
    if backend == "auto":
        return "vllm" if vllm_available() else "hf"
    if backend == "vllm" and not vllm_available():
        from .vllm import VLLM_INSTALL_HINT

        raise EngineUnavailableError(VLLM_INSTALL_HINT)
    if backend == "hf" and importlib.util.find_spec("transformers") is None:
        raise EngineUnavailableError("the hf backend needs transformers: pip install 'transformers>=5.19'")
    if backend not in ("vllm", "hf"):
        raise ValueError(f"backend={backend!r}: expected 'auto', 'vllm' or 'hf'")
    return backend


def with_lora(config: EngineConfig, rank: int) -> EngineConfig:
    """``config`` able to serve LoRA adapters of rank ``rank`` (vLLM takes only some ranks: the next one up)."""
    ranks = [r for r in VLLM_LORA_RANKS if r >= max(rank, config.max_lora_rank)]
    if not ranks:
        raise UserInputError(f"LoRA rank {rank} is above the largest vLLM serves ({VLLM_LORA_RANKS[-1]})")
    return dataclasses.replace(config, enable_lora=True, max_lora_rank=ranks[0])


def make_engine(model: str, config: EngineConfig | None = None) -> Engine:
    """An engine for ``model`` (known name, directory, .gguf file or hub id; see ``dynsdpb_selfplay.models``), or
    for a LoRA adapter directory: its base model serving the adapter (``Engine.update_weights``)."""
    config = config or EngineConfig()
    from ..models import adapter_info

    adapter = adapter_info(model)
    if adapter is not None:
        engine = make_engine(adapter["base_model_name_or_path"], with_lora(config, int(adapter.get("r") or 1)))
        engine.update_weights(str(model))
        return engine
    backend = pick_backend(config.backend)
    if backend == "vllm":
        from .vllm import VLLMEngine

        return VLLMEngine(model, config)
    from .hf import HFEngine

    return HFEngine.from_pretrained(model, config)
