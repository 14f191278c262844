"""Overlapping mini-batches: half of every optimizer step repeats the previous step's fresh half.

Let ``E`` be the effective batch of one optimizer step (``per_device_batch * grad_accum * world_size``) and
``h = E / 2``. Each epoch shuffles the dataset (seed + epoch) and cuts it into fresh halves ``F_0 .. F_{K-1}`` of
``h`` indices (``K = ceil(N / h)``; the last half is topped up from the start of the same permutation, like
``DistributedSampler`` pads). Optimizer step ``s`` of the epoch sees::

    step s = interleave(F_{s-1}, F_s) = [r_0, f_0, r_1, f_1, ...]      (r from F_{s-1}, f from F_s)

so the odd positions of a step's effective batch are fresh and the even positions repeat the previous step's fresh
rows, position for position. ``F_{-1}`` is the previous epoch's last half: the overlap carries across epoch
boundaries. In the very first epoch ``F_{-1}`` is that epoch's own last half (it is seen once more, without
targets, at step 0), so every step has the same shape and step 0 is plain cross-entropy.

Under gradient accumulation the step's effective batch is cut into consecutive micro-batches; with several ranks,
accelerate deals micro-batch ``j`` to rank ``j % world_size``, and since the halves line up position for position,
each rank's repeats are that rank's own previous fresh rows (for an even per-device batch).

The order depends only on ``(seed, epoch)``, so resuming from a checkpoint at any step replays the same sequence; no
sampler state needs saving.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["OverlapSampler", "is_fresh_position"]


def is_fresh_position(position_in_step: int) -> bool:
    """Whether position ``i`` of an optimizer step's effective batch holds a fresh (first-seen) sample."""
    return position_in_step % 2 == 1


class OverlapSampler(Sampler[int]):
    """Index stream for DynSDPB; feed it to a ``DataLoader`` with ``batch_size = per_device_batch``.

    Args:
        num_samples: dataset size ``N``.
        step_batch_size: effective batch ``E`` of one optimizer step across accumulation and ranks (even, >= 2).
        seed: shuffling seed.
        shuffle: shuffle each epoch (``False`` keeps dataset order, handy for tests).
    """

    def __init__(self, num_samples: int, step_batch_size: int, seed: int = 0, shuffle: bool = True) -> None:
        if step_batch_size < 2 or step_batch_size % 2:
            raise ValueError(
                f"DynSDPB needs an even effective batch (per_device_train_batch_size * gradient_accumulation_steps * "
                f"world_size) of at least 2, got {step_batch_size}"
            )
        half = step_batch_size // 2
        if num_samples < half:
            raise ValueError(
                f"the training set has {num_samples} examples, fewer than half an effective batch ({half}); "
                f"lower per_device_train_batch_size or gradient_accumulation_steps"
            )
        self.num_samples, self.step_batch_size, self.half = num_samples, step_batch_size, half
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.steps_per_epoch = -(-num_samples // half)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def fresh_halves(self, epoch: int) -> list[list[int]]:
        """The ``K`` fresh halves of ``epoch`` (each ``h`` dataset indices)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        padded = order + order[: self.steps_per_epoch * self.half - self.num_samples]
        return [padded[k * self.half : (k + 1) * self.half] for k in range(self.steps_per_epoch)]

    def steps(self, epoch: int) -> list[list[int]]:
        """The effective batch of every optimizer step of ``epoch``."""
        fresh = self.fresh_halves(epoch)
        previous = self.fresh_halves(epoch - 1)[-1] if epoch > 0 else fresh[-1]
        steps = []
        for half in fresh:
            steps.append([i for pair in zip(previous, half, strict=True) for i in pair])
            previous = half
        return steps

    def __iter__(self) -> Iterator[int]:
        for step in self.steps(self.epoch):
            yield from step

    def __len__(self) -> int:
        return self.steps_per_epoch * self.step_batch_size
