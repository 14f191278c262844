"""What every benchmark records beside its numbers: the machine, the versions, and where the JSON goes."""

from __future__ import annotations

import json
import os
import platform


def environment() -> dict:
    import torch

    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "vllm"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(), "gpu": gpu}
    return {"machine": machine, "versions": versions}


def save(result: dict, path: str | None) -> None:
    """Write ``result`` (with the environment added) as JSON to ``path``, if given."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({**result, **environment()}, f, indent=1)
