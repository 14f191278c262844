"""Generation engines behind one interface: ``vllm`` (main), ``hf`` (fallback and reference), ``auto``.

from dynsdpb_selfplay.engines import EngineConfig, SamplingConfig, make_engine

with make_engine("smollm2-135m-instruct", EngineConfig(backend="auto")) as engine:
    outs = engine.generate([[{"role": "user", "content": "2+2?"}]], SamplingConfig(max_new_tokens=32))
"""

from __future__ import annotations

import importlib.util

from ..errors import EngineUnavailableError
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
]


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


def make_engine(model: str, config: EngineConfig | None = None) -> Engine:
    """An engine for ``model`` (known name, directory, .gguf file or hub id; see ``dynsdpb_selfplay.models``)."""
    config = config or EngineConfig()
    backend = pick_backend(config.backend)
    if backend == "vllm":
        from .vllm import VLLMEngine

        return VLLMEngine(model, config)
    from .hf import HFEngine

    return HFEngine.from_pretrained(model, config)
