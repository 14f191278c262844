"""The weights a round hands to the generation engine, and how much of the round's update they keep.

Training updates fp32 master weights and saves them exactly (``round_r/model``). An engine that computes in bf16 or
fp16 loads them rounded to its format, and a round moves a weight far less than one step of that format: a weight of
0.02 has a bf16 step of 1.2e-4, while a round of a few to a few dozen steps at lr 1e-5-3e-5 moves it by ~1e-5. Rounded
to nearest, most changed entries fall back to their start value and the engine serves (nearly) the model the round
started from (measured on the demo: 8% of round 1's update kept, 28% of round 2's).

The share of the update a served copy keeps, with ``w0`` the fp32 weights the round started from, ``w1`` the trained
ones and ``s`` the served copy, summed over every floating-point tensor::

    kept = <s - w0, w1 - w0> / |w1 - w0|^2        (1: all of it; 0: none; the projection on the true update)

``engine.handoff`` picks the copy:

- ``exact``: the engine computes in fp32; it serves ``w1`` itself.
- ``nearest``: the engine rounds ``w1`` to nearest when it loads it (what every engine does by default).
- ``stochastic``: a copy of ``w1`` in the engine's format, each entry rounded up with probability
  ``(w - lo) / (hi - lo)`` between its two neighbours ``lo <= w <= hi``, else down. Unbiased (``E[s] = w1``), so
  ``kept`` is 1 up to noise of order ``ulp / (sqrt(N) * rms(update))``, and every matmul sees the update on average;
  its error per entry is at most one step, as a rounded model's is at most half. Seeded, so a resumed run serves the
  same copy. Written to ``round_r/served`` (half the size of ``round_r/model``), which the engine loads as is.
- ``auto`` (default): ``exact`` for an fp32 engine; else ``nearest`` when it keeps at least ``engine.min_update_share``
  of the update, else ``stochastic``.

Any choice that keeps less than ``min_update_share`` warns (:class:`UpdateLostWarning`) with the measured share.
A LoRA adapter handed over unmerged (``training.lora_handoff: adapter``) is served beside the base weights, its
product never rounded into them: ``adapter``, not measured.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

__all__ = ["UpdateLostWarning", "hand_off", "stochastic_round", "update_share"]

_INDEX = "model.safetensors.index.json"


class UpdateLostWarning(UserWarning):
    """The engine serves a copy of the trained weights that keeps less of the round's update than asked for."""


def stochastic_round(x, dtype, generator):
    """``x`` (any float tensor) rounded to ``dtype`` stochastically: to the neighbour above with probability
    ``(x - lo) / (hi - lo)``, else to the one below, so ``E[result] = x`` (module docstring). Entries exactly
    representable in ``dtype`` stay as they are; non-finite ones round to nearest."""
    import torch

    x = x.float()
    near = x.to(dtype)
    step_to = torch.where(near.float() > x, float("-inf"), float("inf")).to(dtype)
    other = torch.nextafter(near, step_to)
    lo, hi = torch.minimum(near, other).float(), torch.maximum(near, other).float()
    p_up = ((x - lo) / (hi - lo)).nan_to_num(0.0).clamp_(0, 1)
    up = torch.rand(x.shape, generator=generator) < p_up
    out = torch.where(up, hi, lo).to(dtype)
    exact = (near.float() == x) | ~torch.isfinite(x) | ~torch.isfinite(hi - lo)
    return torch.where(exact, near, out)


def _tensor_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    return files


def _load(model_dir: Path) -> dict[str, object]:
    """Every tensor of a safetensors model folder (sharded or not), as stored."""
    from safetensors.torch import load_file

    out: dict[str, object] = {}
    for f in _tensor_files(model_dir):
        out.update(load_file(str(f)))
    return out


def update_share(start: dict, trained: dict, served: dict) -> dict:
    """The share of the update ``trained - start`` that ``served`` keeps (module docstring), over the floating-point
    tensors the three share by name; also the lowest share of any one tensor and which. Computed in float64."""
    dot = norm = 0.0
    worst = (float("inf"), None)
    for name, w1 in trained.items():
        if name not in start or name not in served or not w1.is_floating_point():
            continue
        w0 = start[name].double()
        delta = w1.double() - w0
        d_norm = float((delta * delta).sum())
        if d_norm == 0:
            continue
        d_dot = float(((served[name].double() - w0) * delta).sum())
        dot, norm = dot + d_dot, norm + d_norm
        worst = min(worst, (d_dot / d_norm, name), key=lambda t: t[0])
    return {
        "update_share": dot / norm if norm else 1.0,
        "min_tensor_share": None if worst[1] is None else worst[0],
        "min_tensor": worst[1],
        "update_norm": norm**0.5,
    }


def _seed(seed: int, round_index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"handoff/{seed}/{round_index}".encode()).digest()[:8], "little") >> 1


def _write_served(trained_dir: Path, out_dir: Path, tensors: dict, dtype) -> None:
    """``out_dir``: ``trained_dir``'s files with its weights replaced by ``tensors`` (one file per shard, as there),
    written to a temporary folder and renamed into place."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in trained_dir.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != _INDEX:
            shutil.copy2(f, tmp / f.name)
    for f in _tensor_files(trained_dir):
        with safe_open(str(f), "pt") as fh:
            names, metadata = list(fh.keys()), fh.metadata()
        save_file({n: tensors[n].contiguous() for n in names}, str(tmp / f.name), metadata=metadata)
    if (trained_dir / _INDEX).is_file():
        index = json.loads((trained_dir / _INDEX).read_text())
        index.setdefault("metadata", {})["total_size"] = sum(t.numel() * t.element_size() for t in tensors.values())
        (tmp / _INDEX).write_text(json.dumps(index, indent=2))
    config = tmp / "config.json"
    if config.is_file():  # the dtype the copy holds, for loaders that follow the config
        data = json.loads(config.read_text())
        data["dtype" if "dtype" in data else "torch_dtype"] = str(dtype).removeprefix("torch.")
        config.write_text(json.dumps(data, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def hand_off(
    start_dir: str | Path,
    trained_dir: str | Path,
    out_dir: str | Path,
    engine_dtype: str,
    handoff: str = "auto",
    min_update_share: float = 0.95,
    seed: int = 0,
    round_index: int = 0,
) -> dict:
    """Choose and, for ``stochastic``, write the copy of ``trained_dir`` the engine serves (module docstring).

    ``engine_dtype`` is the engine's resolved dtype (``float32``, ``bfloat16``, ``float16``). Returns ``served`` (the
    folder to load), ``handoff`` (the copy: ``exact``, ``nearest``, ``stochastic`` or ``adapter``), ``dtype``, the
    kept share of each copy measured (``nearest_share``, ``served_share``) and the worst tensor of the served copy."""
    import torch

    from ..models import adapter_info

    start_dir, trained_dir, out_dir = Path(start_dir), Path(trained_dir), Path(out_dir)
    info = {"served": str(trained_dir), "dtype": engine_dtype}
    if adapter_info(trained_dir) is not None:
        return {**info, "handoff": "adapter", "served_share": None}
    if engine_dtype == "float32":
        return {**info, "handoff": "exact", "served_share": 1.0, "nearest_share": 1.0}
    dtype = getattr(torch, engine_dtype)
    start = {k: v.float() for k, v in _load(start_dir).items() if v.is_floating_point()}
    trained = _load(trained_dir)
    nearest = update_share(start, trained, {k: v.to(dtype) for k, v in trained.items()})
    info["nearest_share"] = nearest["update_share"]
    if handoff == "nearest" or (handoff == "auto" and nearest["update_share"] >= min_update_share):
        info.update(
            handoff="nearest",
            served_share=nearest["update_share"],
            min_tensor=nearest["min_tensor"],
            min_tensor_share=nearest["min_tensor_share"],
        )
    else:
        generator = torch.Generator().manual_seed(_seed(seed, round_index))
        served = {
            k: stochastic_round(v, dtype, generator) if v.is_floating_point() else v for k, v in sorted(trained.items())
        }
        measured = update_share(start, trained, served)
        _write_served(trained_dir, out_dir, served, dtype)
        info.update(
            served=str(out_dir),
            handoff="stochastic",
            served_share=measured["update_share"],
            min_tensor=measured["min_tensor"],
            min_tensor_share=measured["min_tensor_share"],
        )
    if info["served_share"] < min_update_share:
        warnings.warn(
            f"round {round_index}: the engine ({engine_dtype}, engine.handoff={handoff}) serves {info['handoff']}-"
            f"rounded weights that keep {100 * info['served_share']:.1f}% of the round's update (below "
            f"engine.min_update_share={min_update_share}); engine.handoff: auto (or stochastic) keeps it",
            UpdateLostWarning,
            stacklevel=2,
        )
    return info
