"""The number format a machine computes in natively: the one place that decides ``auto``.

Used by training (``bf16: null`` in a run config, ``DynSDPBConfig``'s default, ``dynsdpb sft``), by both generation
engines (``dtype: auto``) and by the benchmarks::

    GPU:  bfloat16 where the device supports it, else float16 (engines) / fp32 (training)
    CPU:  bfloat16 only with AVX-512-BF16 or AMX instructions, else float32

Why the CPU rule looks at the instructions and not at ``torch.backends.cpu.get_cpu_capability()``: without them
PyTorch emulates bf16 matmuls, measured ~20x slower than fp32 on an AVX2 machine (a 4 x 64-token training step of
SmolLM2-135M took 45-65 s under bf16 autocast against 1-3 s in fp32), and "AVX512" alone does not imply the BF16
extension. An explicit choice always wins; asking for bf16 where it is emulated warns once
(:class:`EmulatedBF16Warning`).
"""

from __future__ import annotations

import functools
import os
import platform
import warnings

__all__ = ["EmulatedBF16Warning", "cpu_features", "native_bf16", "resolve_bf16", "resolve_dtype"]

DTYPES = ("auto", "bfloat16", "float16", "float32")


class EmulatedBF16Warning(UserWarning):
    """bf16 was asked for on a CPU that has no bf16 instructions (it works, ~20x slower than fp32)."""


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def cpu_features() -> dict:
    """What this CPU offers for matmuls, as benchmarks record it: PyTorch's kernel capability (``AVX2``,
    ``AVX512``, ...), whether it has native bf16 (AVX-512-BF16 or AMX tiles), the model name and the core count."""
    import torch

    probe = lambda name: bool(getattr(torch.cpu, name, lambda: False)())  # noqa: E731 - private, may vanish
    flags = _cpuinfo_flags()
    avx512_bf16 = probe("_is_avx512_bf16_supported") or "avx512_bf16" in flags
    amx = probe("_is_amx_tile_supported") or "amx_bf16" in flags
    model = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": avx512_bf16,
        "amx_bf16": amx,
        "native_bf16": avx512_bf16 or amx,
        "model": model,
        "cores": os.cpu_count(),
    }


def _on_gpu(use_cpu: bool = False) -> bool:
    import torch

    return not use_cpu and torch.cuda.is_available()


def native_bf16(use_cpu: bool = False) -> bool:
    """Whether the device training or generation runs on computes bf16 natively (module docstring)."""
    import torch

    if _on_gpu(use_cpu):
        return torch.cuda.is_bf16_supported()
    return cpu_features()["native_bf16"]


def _warn_emulated(what: str) -> None:
    cpu = cpu_features()
    warnings.warn(
        f"{what} asks for bfloat16, but this CPU ({cpu['model']}, {cpu['capability']}) has no bf16 instructions, so "
        f"PyTorch emulates them (~20x slower than float32 here); leave it unset ('auto') to get float32",
        EmulatedBF16Warning,
        stacklevel=3,
    )


def resolve_dtype(dtype: str, what: str = "engine.dtype") -> str:
    """An engine's dtype: ``auto`` -> the native format (module docstring); an explicit name is kept, with a
    warning when it is ``bfloat16`` on a CPU that emulates it."""
    if dtype not in DTYPES:
        raise ValueError(f"{what}={dtype!r}: expected one of {DTYPES}")
    if dtype == "auto":
        import torch

        if _on_gpu():
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "bfloat16" if native_bf16(use_cpu=True) else "float32"
    if dtype == "bfloat16" and not _on_gpu() and not native_bf16(use_cpu=True):
        _warn_emulated(f"{what}=bfloat16")
    return dtype


def resolve_bf16(bf16: bool | None, use_cpu: bool = False, what: str = "bf16") -> bool:
    """Training's bf16 autocast switch: ``None`` -> whether the device has native bf16; ``True`` on a CPU that
    emulates it is kept, with a warning."""
    if bf16 is None:
        return native_bf16(use_cpu)
    if bf16 and not _on_gpu(use_cpu) and not native_bf16(use_cpu=True):
        _warn_emulated(f"{what}=True")
    return bool(bf16)
