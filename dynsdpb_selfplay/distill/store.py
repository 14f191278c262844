"""Stored targets of the samples that will repeat, keyed by sample, with explicit position alignment.

Two buffers: ``current`` receives the targets written during optimizer step ``s`` (the fresh half), ``previous``
serves step ``s`` the targets written during step ``s - 1``. :meth:`TargetStore.advance` at the start of each
optimizer step makes ``current`` the new ``previous`` and drops the old one, so the store never holds more than two
steps' fresh halves.

Alignment. A record keeps the sample's real tokens (padding removed) and the positions ``t`` whose logits were stored
(position ``t`` predicts token ``t + 1``). When the sample comes back, position ``t`` is distilled only if it carries
a label now, carried one then, and the tokens ``0 .. t + 1`` are identical in both sequences: the stored prediction
had the same context and the same target. Anything else (re-tokenized text, a different truncation, a changed row)
is dropped from the KL and counted, never matched by guesswork.

Checkpoints hold ``current`` as safetensors (no pickle), so a resumed run distills its first step exactly as the
uninterrupted run would have.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file

from ..errors import UserInputError
from .losses import Targets

__all__ = ["StoredSample", "TargetStore", "StoreBudgetError", "align_positions"]

_FIELDS = ("logp", "tau", "alpha", "indices", "tail_logp")


class StoreBudgetError(RuntimeError):
    pass


@dataclass
class StoredSample:
    """Targets of one sample: ``tokens`` ``[L]`` real token ids, ``positions`` ``[n]`` sorted, and ``n`` targets."""

    tokens: torch.Tensor
    positions: torch.Tensor
    targets: Targets

    def nbytes(self) -> int:
        return self.targets.nbytes() + self.tokens.numel() * 4 + self.positions.numel() * 8


def align_positions(
    stored: StoredSample, tokens: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match the current label positions of a sample to its stored ones.

    Args:
        stored: the record from the previous step.
        tokens: ``[L']`` the sample's real tokens now.
        positions: ``[n']`` sorted positions that carry a label now.

    Returns:
        ``(cur, prev)``: indices into ``positions`` and into ``stored.positions`` of the distillable positions.
    """
    a, b = stored.tokens.to(tokens.device), tokens
    n = min(a.numel(), b.numel())
    diff = (a[:n] != b[:n]).nonzero()
    common = int(diff[0]) if diff.numel() else n  # length of the common token prefix
    prev_pos = stored.positions.to(positions.device)
    if prev_pos.numel() == 0 or positions.numel() == 0:
        empty = positions.new_zeros(0, dtype=torch.long)
        return empty, empty
    j = torch.searchsorted(prev_pos, positions).clamp(max=prev_pos.numel() - 1)
    hit = (prev_pos[j] == positions) & (positions + 1 < common)
    cur = hit.nonzero().squeeze(-1)
    return cur, j[cur]


class TargetStore:
    """Double-buffered per-sample targets within a byte budget.

    Args:
        budget_bytes: the most the two buffers may hold together.
        vocab_size: vocabulary the targets are over (checked on load and on use).
        topk: ``None`` for full targets, else ``k``.
    """

    def __init__(self, budget_bytes: int, vocab_size: int, topk: int | None) -> None:
        self.budget_bytes, self.vocab_size, self.topk = int(budget_bytes), int(vocab_size), topk
        self.previous: dict[int, StoredSample] = {}
        self.current: dict[int, StoredSample] = {}
        self._bytes = {"previous": 0, "current": 0}

    def advance(self) -> None:
        """Start a new optimizer step: last step's writes become readable, older ones are dropped."""
        self.previous, self.current = self.current, {}
        self._bytes = {"previous": self._bytes["current"], "current": 0}

    def get(self, key: int) -> StoredSample | None:
        return self.previous.get(key)

    def put(self, key: int, sample: StoredSample) -> None:
        old = self.current.get(key)
        size = sample.nbytes() - (old.nbytes() if old is not None else 0)
        if self.nbytes + size > self.budget_bytes:
            raise StoreBudgetError(
                f"DynSDPB stored targets need more than distillation_store_mb="
                f"{self.budget_bytes / 2**20:.0f} MiB ({(self.nbytes + size) / 2**20:.0f} MiB). Raise "
                f"distillation_store_mb, lower per_device_train_batch_size or max_length, or set distillation_topk "
                f"(e.g. 64) for the compact store."
            )
        self.current[key] = sample
        self._bytes["current"] += size

    @property
    def nbytes(self) -> int:
        return self._bytes["previous"] + self._bytes["current"]

    def save(self, path: str, buffer: str = "current") -> None:
        """Write ``current`` (or ``previous``: the targets the step in progress reads) to ``path`` (safetensors),
        atomically."""
        tensors, keys = {}, []
        for key, s in getattr(self, buffer).items():
            keys.append(key)
            tensors[f"{key}.tokens"] = s.tokens.to(torch.int32).cpu().contiguous()
            tensors[f"{key}.positions"] = s.positions.cpu().contiguous()
            for name in _FIELDS:
                t = getattr(s.targets, name)
                if t is not None:
                    tensors[f"{key}.{name}"] = t.cpu().contiguous()
        meta = {
            "format": "dynsdpb-targets-v1",
            "vocab_size": str(self.vocab_size),
            "topk": json.dumps(self.topk),
            "keys": json.dumps(keys),
        }
        tmp = f"{path}.tmp"
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)

    def load(self, path: str, device: torch.device | str = "cpu") -> None:
        """Read targets saved by :meth:`save` into ``current`` (they serve the next optimizer step)."""
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "dynsdpb-targets-v1":
            raise UserInputError(f"{path}: not a DynSDPB target file (format={meta.get('format')!r})")
        if int(meta["vocab_size"]) != self.vocab_size:
            raise UserInputError(
                f"{path}: stored targets are over a vocabulary of {meta['vocab_size']} tokens, the model has "
                f"{self.vocab_size}"
            )
        if json.loads(meta["topk"]) != self.topk:
            raise UserInputError(
                f"{path}: targets were stored with distillation_topk={json.loads(meta['topk'])}, the run now uses "
                f"distillation_topk={self.topk}"
            )
        # safetensors accepts "cpu" but not the "cpu:0" a distributed run reports: load on CPU, then move.
        tensors = {k: v.to(device) for k, v in load_file(path, device="cpu").items()}
        self.current, self._bytes["current"] = {}, 0
        for key in json.loads(meta["keys"]):
            parts = {name: tensors.get(f"{key}.{name}") for name in _FIELDS}
            sample = StoredSample(tensors[f"{key}.tokens"].long(), tensors[f"{key}.positions"], Targets(**parts))
            self.put(int(key), sample)
