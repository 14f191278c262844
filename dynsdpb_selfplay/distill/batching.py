"""From collated micro-batches to distillation plans: sample identity, real tokens, and what to distill or store.

The training set gets an ``dynsdpb_index`` column (its row position after TRL's preparation, stable for the run);
the collator passes it through as a tensor. :func:`plan_micro_batch` turns a collated micro-batch into a
:class:`MicroBatchPlan`: flat indices (into the micro-batch's label tokens, row-major) of the tokens to distill,
with the stored targets they align to, and of the tokens whose predictions to store for the next step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset as TorchDataset

from .losses import Targets
from .sampler import is_fresh_position
from .store import TargetStore, align_positions

__all__ = [
    "INDEX_COLUMN",
    "IndexCollator",
    "IndexedDataset",
    "MicroBatchPlan",
    "plan_classification_batch",
    "plan_micro_batch",
]

INDEX_COLUMN = "dynsdpb_index"


@dataclass
class MicroBatchPlan:
    """What one micro-batch distills and stores (built in ``get_batch_samples``, used in ``compute_loss``)."""

    kd_rows: torch.Tensor  # [D] flat indices into the micro-batch's label tokens
    kd_sources: list[tuple[Targets, torch.Tensor]]  # (stored targets, rows of them) per sample, in kd_rows order
    store_rows: torch.Tensor  # [S] flat indices of the tokens to store
    store_samples: list[tuple[int, torch.Tensor, torch.Tensor]]  # (key, tokens, positions) per stored sample
    num_distilled: torch.Tensor  # distilled tokens of the whole optimizer step (all ranks when averaged)
    repeated_rows: torch.Tensor  # [R] flat indices of the label tokens of repeated samples (aligned or not)
    num_items: torch.Tensor | None = None  # CE normalizer of the whole step, where the trainer does not give one

    @property
    def label_tokens_repeated(self) -> int:
        return self.repeated_rows.numel()

    def ce_weight(self, num_label_tokens: int, repeated_weight: float, device) -> torch.Tensor | None:
        """``[N]`` CE weights: ``repeated_weight`` on the repeated samples' label tokens, 1 elsewhere; ``None``
        when every weight is 1 (``distillation_repeated_ce_weight``)."""
        if repeated_weight == 1.0:
            return None
        weight = torch.ones(num_label_tokens, dtype=torch.float32, device=device)
        weight[self.repeated_rows.to(device)] = repeated_weight
        return weight


class IndexedDataset(TorchDataset):
    """Adds the row index to each example of a map-style dataset that is not a ``datasets.Dataset``."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[i], INDEX_COLUMN: i}


class IndexCollator:
    """Runs the trainer's collator on the examples without the index and adds the index as a tensor."""

    def __init__(self, collator) -> None:
        self.collator = collator

    def __call__(self, examples: list[dict]) -> dict:
        with_index = sum(INDEX_COLUMN in ex for ex in examples)
        if with_index == 0:  # evaluation batches carry no index
            return self.collator(examples)
        if with_index != len(examples):
            raise KeyError(f"DynSDPB: some examples of a batch lack the '{INDEX_COLUMN}' column")
        index = torch.tensor([int(ex[INDEX_COLUMN]) for ex in examples], dtype=torch.long)
        batch = self.collator([{k: v for k, v in ex.items() if k != INDEX_COLUMN} for ex in examples])
        batch[INDEX_COLUMN] = index
        return batch


def real_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """The non-padding tokens of one row and the offset of the first one (padding on either side)."""
    if attention_mask is None:
        return input_ids, 0
    real = attention_mask.bool().nonzero().squeeze(-1)
    if real.numel() == 0:
        return input_ids[:0], 0
    first, last = int(real[0]), int(real[-1])
    return input_ids[first : last + 1], first


def plan_micro_batch(batch: dict, store: TargetStore, first_position: int) -> MicroBatchPlan:
    """Which label tokens of a collated micro-batch to distill (rows whose sample is in ``store``, aligned) and to
    store (rows at fresh positions of the step; ``first_position`` is the micro-batch's first row's position in the
    optimizer step's effective batch)."""
    if "shift_labels" in batch:
        raise ValueError("DynSDPB does not support pre-shifted labels (context/sequence parallelism)")
    labels, input_ids = batch["labels"], batch["input_ids"]
    attention = batch.get("attention_mask")
    keys = batch[INDEX_COLUMN].tolist()
    rows = labels.shape[0]
    counts = (labels[:, 1:] != -100).sum(-1).tolist()
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)

    kd_rows, kd_sources, store_rows, store_samples, repeated = [], [], [], [], []
    for b in range(rows):
        tokens, first = real_tokens(input_ids[b], None if attention is None else attention[b])
        positions = (labels[b, 1:] != -100).nonzero().squeeze(-1) - first  # t predicts token t + 1
        label_rows = torch.arange(offsets[b], offsets[b + 1], device=labels.device)  # row b's flat label indices
        record = store.get(keys[b])
        if record is not None:
            repeated.append(label_rows)
            cur, prev = align_positions(record, tokens, positions)
            if cur.numel():
                kd_rows.append(cur + offsets[b])
                kd_sources.append((record.targets, prev.to(record.targets.logp.device)))
        if is_fresh_position(first_position + b):
            store_rows.append(label_rows)
            store_samples.append((keys[b], tokens.detach().clone(), positions.detach().clone()))

    def cat(parts):
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=labels.device)

    return MicroBatchPlan(
        kd_rows=cat(kd_rows),
        kd_sources=kd_sources,
        store_rows=cat(store_rows),
        store_samples=store_samples,
        num_distilled=torch.zeros(()),
        repeated_rows=cat(repeated),
    )


def plan_classification_batch(batch: dict, store: TargetStore, first_position: int) -> MicroBatchPlan:
    """:func:`plan_micro_batch` for sequence classification: each row carries one distribution (position 0, its
    class logits), distilled when the row's sample is in ``store`` with exactly the same real tokens."""
    labels, input_ids = batch["labels"], batch.get("input_ids")
    if input_ids is None:
        raise ValueError("DynSDPB needs input_ids in each batch to recognise a repeated sample (got inputs_embeds?)")
    if labels.dim() != 1:
        raise ValueError(
            f"DynSDPB classification needs one class index per sample (labels of shape [batch]), got labels of "
            f"shape {tuple(labels.shape)}; multi-label and token classification are not supported"
        )
    attention = batch.get("attention_mask")
    keys = batch[INDEX_COLUMN].tolist()
    position = torch.zeros(1, dtype=torch.long)
    kd_rows, kd_sources, store_rows, store_samples, repeated = [], [], [], [], []
    for b in range(labels.shape[0]):
        tokens, _ = real_tokens(input_ids[b], None if attention is None else attention[b])
        record = store.get(keys[b])
        if record is not None:
            repeated.append(b)
            if torch.equal(record.tokens.to(tokens.device), tokens):
                kd_rows.append(b)
                kd_sources.append((record.targets, position.to(record.targets.logp.device)))
        if is_fresh_position(first_position + b):
            store_rows.append(b)
            # A tensor of its own per sample: safetensors refuses to save tensors that share memory.
            store_samples.append((keys[b], tokens.detach().clone(), position.clone()))

    def rows(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=labels.device)

    return MicroBatchPlan(
        kd_rows=rows(kd_rows),
        kd_sources=kd_sources,
        store_rows=rows(store_rows),
        store_samples=store_samples,
        num_distilled=torch.zeros(()),
        repeated_rows=rows(repeated),
    )
