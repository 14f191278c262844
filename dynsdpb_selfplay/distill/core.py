"""What every DynSDPB trainer shares, whatever carries the distributions: overlapping batches, the stored-target
cache, step-level normalizers, token-weighted metrics and checkpointed targets.

:class:`DynSDPBCore` is a mixin for any ``transformers.Trainer``. A concrete mixin adds the model-specific part,
*which positions carry a distribution*: :class:`~.trainer.DynSDPBMixin` (causal LMs: every label token, through the
fused LM-head kernel) and :class:`~.classification.DynSDPBClassificationMixin` (sequence classifiers: one class
distribution per sample). It implements ``_plan_micro_batch`` and ``compute_loss`` and calls
:meth:`DynSDPBCore._init_core` once the trainer is built.

What "previous step" means: the previous *optimizer* step. Under gradient accumulation the effective batch of one
optimizer step (all its micro-batches, on all ranks) is what overlaps by half with the next one; targets stored while
accumulating step ``s`` (weights ``w_s``) teach step ``s + 1`` (weights ``w_{s+1}``). The KL is normalized by the
distilled positions of the whole step, so (micro-batch 8, accumulation 1) and (micro-batch 2, accumulation 4) give
the same loss, and enters each micro-batch's loss with the weight that undoes what the Trainer does to that loss
afterwards (:meth:`DynSDPBCore._kd_loss_weight`), on every model family.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter

import torch
from torch.utils.data import IterableDataset

from ..errors import NonFiniteLossError
from .batching import INDEX_COLUMN, IndexCollator, IndexedDataset, MicroBatchPlan
from .config import DistillationArguments
from .losses import Targets
from .sampler import OverlapSampler
from .schedules import make_schedule
from .store import StoredSample, TargetStore

__all__ = [
    "PLAN_KEY",
    "TARGETS_FILE",
    "DatasetTooSmallError",
    "DynSDPBCore",
    "NonFiniteLossError",
    "last_complete_checkpoint",
]

logger = logging.getLogger(__name__)

TARGETS_FILE = "dynsdpb_targets_rank{rank}.safetensors"
PLAN_KEY = "dynsdpb_plan"
# Mean tail mass of top-k targets above which the stored KL is known to be badly underestimated (bench_cache).
_TAIL_WARN = 0.2


def last_complete_checkpoint(folder: str) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` that has its ``trainer_state.json``; ``None`` if there is none.

    A checkpoint gets its trainer state last (weights and DynSDPB targets first), so one without it is a save that
    was killed midway. ``transformers.trainer_utils.get_last_checkpoint`` takes any ``checkpoint-N`` folder: resuming
    from a torn one loads its weights but, with no state, restarts the step count at 0."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not os.path.isdir(folder):
        return None
    steps = {}
    for name in os.listdir(folder):
        suffix = name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if suffix != name and suffix.isdigit() and os.path.isfile(os.path.join(folder, name, "trainer_state.json")):
            steps[int(suffix)] = os.path.join(folder, name)
    return steps[max(steps)] if steps else None


class DatasetTooSmallError(ValueError):
    """The (prepared) training set cannot fill one overlapping step."""


class DynSDPBCore:
    """Mixin for a ``transformers.Trainer``; see the module docstring for what a subclass adds."""

    # Names of the per-window sums behind the logged ``dynsdpb/*`` means (see :meth:`_add_dynsdpb_sums`).
    _SUMS = ("label_tokens", "ce", "distilled", "kl", "kd", "alpha", "tau", "tail", "repeated", "skipped")

    # ----------------------------------------------------------------------------------------------- set-up
    def _init_core(self, settings: DistillationArguments, num_outcomes: int, too_small_hint: str = "") -> None:
        """Validate the trainer for DynSDPB and build the schedule, the store and the indexed data.

        Args:
            settings: the distillation fields.
            num_outcomes: size of each stored distribution (vocabulary size, or number of classes).
            too_small_hint: appended to the "dataset too small" message (why rows may have been dropped).
        """
        settings.validate_distillation()
        self.dynsdpb = settings
        args = self.args
        if getattr(args, "label_smoothing_factor", 0.0):
            raise ValueError("label_smoothing_factor > 0 is not supported by DynSDPB; set it to 0")
        if getattr(self, "compute_loss_func", None) is not None:
            raise ValueError("compute_loss_func is set on this trainer; DynSDPB replaces the loss and cannot honour it")
        strategy = getattr(args, "train_sampling_strategy", "random")
        if strategy != "random":
            raise ValueError(
                f"train_sampling_strategy={strategy!r} is not supported by DynSDPB, which builds overlapping "
                f"batches itself; use 'random'"
            )
        ds = self.train_dataset
        if ds is None or isinstance(ds, IterableDataset) or not hasattr(ds, "__len__"):
            raise ValueError(
                "DynSDPB needs a map-style train_dataset with a length (an IterableDataset or streaming dataset "
                "cannot repeat a sample in the next step)"
            )
        world, step_batch = args.world_size, self._dynsdpb_step_batch()
        if len(ds) < step_batch // 2:
            raise DatasetTooSmallError(
                f"the prepared training set has {len(ds)} rows, fewer than half an effective batch "
                f"({step_batch // 2}){too_small_hint}"
            )
        if step_batch % 2 or (world > 1 and args.per_device_train_batch_size % 2):
            raise ValueError(
                f"DynSDPB needs an even per_device_train_batch_size * gradient_accumulation_steps * world_size "
                f"(got {args.per_device_train_batch_size} * {args.gradient_accumulation_steps} * {world}), and an "
                f"even per_device_train_batch_size with several processes"
            )
        if settings.distillation_id_column is not None:
            self._check_id_column(settings.distillation_id_column)

        self._dynsdpb_schedule = make_schedule(settings)
        self._dynsdpb_store = TargetStore(
            int(settings.distillation_store_mb * 2**20), num_outcomes, settings.distillation_topk
        )
        self._dynsdpb_tail_warned = False
        self._dynsdpb_sums, self._dynsdpb_steps = None, 0

        if hasattr(ds, "column_names") and hasattr(ds, "add_column"):
            if INDEX_COLUMN not in ds.column_names:
                self.train_dataset = ds.add_column(INDEX_COLUMN, list(range(len(ds))))
        elif not isinstance(ds, IndexedDataset):
            self.train_dataset = IndexedDataset(ds)
        if not isinstance(self.data_collator, IndexCollator):
            self.data_collator = IndexCollator(self.data_collator)
        self._keep_index_column()

    def _scheduled(self, stats) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, tau)`` of the targets stored now: the schedule's, with ``alpha`` scaled by ``s / S`` under
        ``distillation_progress='linear'``, where ``s = global_step + 2`` is the (1-based) optimizer step these
        targets teach and ``S`` the run's total steps."""
        alpha, tau = self._dynsdpb_schedule(stats)
        if self.dynsdpb.distillation_progress == "linear":
            alpha = alpha * min(1.0, (self.state.global_step + 2) / max(self.state.max_steps, 1))
        return alpha, tau

    def _warn_topk_temperature(self, vocabulary: str) -> None:
        settings = self.dynsdpb
        if settings.distillation_topk is not None and settings.distillation_temperature > 1.5:
            warnings.warn(
                f"distillation_topk={settings.distillation_topk} with distillation_temperature="
                f"{settings.distillation_temperature}: over {vocabulary} a softened distribution keeps most "
                f"of its mass outside the top-k, and the stored KL is underestimated (measured -75..-88% at "
                f"temperature 3 with k=256 on a 49k vocabulary). Prefer the full store (distillation_topk=None) "
                f"or a temperature near 1; the logged dynsdpb/tail_mass shows the mass outside the top-k.",
                stacklevel=4,
            )

    def _check_id_column(self, name: str) -> None:
        ds = self.train_dataset
        columns = getattr(ds, "column_names", None)
        if columns is None or name not in columns:
            raise ValueError(
                f"distillation_id_column={name!r}: no such column in the prepared training set "
                f"(columns: {columns}); add it to the dataset or unset distillation_id_column"
            )
        dup = next((i for i, n in Counter(ds[name]).items() if n > 1), None)
        if dup is not None:
            raise ValueError(f"distillation_id_column={name!r}: ids must be unique, {dup!r} appears more than once")

    def _keep_index_column(self) -> None:
        """``remove_unused_columns`` keeps only the signature columns: add the index to them."""
        if self._signature_columns is not None and INDEX_COLUMN not in self._signature_columns:
            self._signature_columns.append(INDEX_COLUMN)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._keep_index_column()

    def _dynsdpb_step_batch(self) -> int:
        """Rows of one optimizer step across accumulation and processes."""
        a = self.args
        return a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size

    # --------------------------------------------------------------------------------------------- batches
    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return OverlapSampler(len(dataset), self._dynsdpb_step_batch(), seed=seed)

    def _plan_micro_batch(self, batch: dict, micro_index: int) -> MicroBatchPlan:
        raise NotImplementedError

    def _first_position(self, micro_index: int, rows: int) -> int:
        """Position of a micro-batch's first row in the optimizer step's effective batch."""
        return (micro_index * self.args.world_size + self.args.process_index) * rows

    def _step_total(self, value: float, device) -> torch.Tensor:
        """``value`` summed over the step's processes when losses are averaged across devices."""
        total = torch.tensor(float(value), device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total).sum()
        return total

    def _data_parallel_processes(self) -> int:
        """Processes DDP averages gradients over (tensor-parallel ranks share a batch), as transformers counts them."""
        tp = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
        return self.accelerator.num_processes // tp

    def _kd_loss_weight(self, num_items_in_batch) -> float:
        """Factor on a micro-batch's KD term ``sum alpha tau^2 KL / D`` so that it reaches the gradients whole.

        ``D`` counts the distilled tokens of the whole optimizer step (of every process when tokens are averaged
        across devices), so the KD terms of a step already add up to the step's KD loss. Two things transformers does
        to the returned loss would shrink it again, both where the model takes no loss kwargs (``num_items_in_batch``
        is then ``None``; e.g. Gemma 3/4 and Qwen-VL conditional-generation classes): ``training_step`` divides the
        loss by the accumulation steps (``loss_is_scaled_for_ga`` false), and nothing multiplies it back by the
        number of processes before DDP averages the gradients. The CE keeps TRL's handling (per-micro-batch mean)."""
        weight = 1.0
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:  # transformers' own rule in training_step (compute_loss_func is refused)
            scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        if not scaled:
            weight *= self.current_gradient_accumulation_steps
        if num_items_in_batch is None and self.args.average_tokens_across_devices and self.args.world_size > 1:
            weight *= self._data_parallel_processes()
        return weight

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # Called once at the start of every optimizer step: last step's writes become this step's targets.
        self._dynsdpb_store.advance()
        self._dynsdpb_steps += 1
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        plans = [self._plan_micro_batch(b, g) for g, b in enumerate(batches)]
        num_distilled = self._step_total(sum(p.kd_rows.numel() for p in plans), device)
        for batch, plan in zip(batches, plans, strict=True):
            plan.num_distilled = num_distilled
            batch[PLAN_KEY] = plan
        return batches, self._ce_normalizer(num_items, plans, device)

    def _ce_normalizer(self, count, plans: list[MicroBatchPlan], device):
        """The step's CE normalizer ``sum_t w_t``: ``count`` label tokens (or samples), less ``1 - w`` for each one
        of a repeated sample under ``distillation_repeated_ce_weight = w``."""
        w = self.dynsdpb.distillation_repeated_ce_weight
        if w == 1.0 or count is None:
            return count
        repeated = self._step_total(sum(p.label_tokens_repeated for p in plans), device)
        return count - (1.0 - w) * repeated.to(torch.as_tensor(count).device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        plan: MicroBatchPlan | None = inputs.pop(PLAN_KEY, None)
        if plan is None or not model.training:  # evaluation, or a batch that did not come through the sampler
            inputs.pop(INDEX_COLUMN, None)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return self._dynsdpb_loss(model, inputs, plan, return_outputs, num_items_in_batch)

    def _dynsdpb_loss(self, model, inputs: dict, plan: MicroBatchPlan, return_outputs: bool, num_items_in_batch):
        """The training loss of one planned micro-batch (``inputs`` still holds the row index)."""
        raise NotImplementedError

    def _gathered_targets(self, plan: MicroBatchPlan) -> Targets | None:
        # Gathered here, not when planning, so accumulation does not hold every micro-batch's copy at once.
        return Targets.cat([t.select(rows) for t, rows in plan.kd_sources]) if plan.kd_sources else None

    def _store_new_targets(self, plan: MicroBatchPlan, stored: list[Targets]) -> None:
        if not plan.store_samples or not stored:
            return
        targets = Targets.cat(stored)
        start = 0
        for key, tokens, positions in plan.store_samples:
            n = positions.numel()
            rows = torch.arange(start, start + n, device=targets.logp.device)
            self._dynsdpb_store.put(key, StoredSample(tokens, positions, targets.select(rows)))
            start += n

    def _nonfinite_loss(self, model, loss: torch.Tensor, inputs: dict, plan: MicroBatchPlan) -> torch.Tensor:
        """Handle a NaN/inf micro-batch loss: stop with a saved state, or skip it with zero gradient."""
        rows = inputs.get(INDEX_COLUMN)
        rows = rows.tolist() if rows is not None else "?"
        step = self.state.global_step + 1
        if self.dynsdpb.distillation_on_nonfinite == "stop":
            folder = self._save_state_before_step()
            raise NonFiniteLossError(
                f"DynSDPB: loss is {loss.item()} at optimizer step {step} (training-set rows {rows}). The state "
                f"before this step is saved in {folder} (resume_from_checkpoint resumes from it). Look for "
                f"inf/NaN in the data or lower the learning rate; distillation_on_nonfinite='skip' skips such "
                f"micro-batches instead."
            )
        logger.warning("DynSDPB: loss is %s at step %d (rows %s); micro-batch skipped", loss.item(), step, rows)
        self._add_dynsdpb_sums([0.0] * (len(self._SUMS) - 1) + [1.0], loss.device)
        # Zero gradient on every trainable parameter (not a detached zero): DDP expects a gradient for each.
        return sum((p * 0.0).sum() for p in model.parameters() if p.requires_grad)

    def _save_state_before_step(self) -> str:
        """A checkpoint of the weights, optimizer and schedule before the step in progress (nothing of it has been
        applied) with the targets that step reads, so resuming replays it exactly."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        self._dynsdpb_saving_buffer = "previous"
        try:
            self._save_checkpoint(self.model, trial=None)
        finally:
            self._dynsdpb_saving_buffer = "current"
        return folder

    # ---------------------------------------------------------------------------------------------- metrics
    def _add_dynsdpb_sums(self, values, device) -> None:
        """Accumulate one micro-batch's sums (in :attr:`_SUMS` order) over the logging window."""
        if len(values) == len(self._SUMS) - 1:
            values = [*values, 0.0]  # not a skipped micro-batch
        sums = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values])
        self._dynsdpb_sums = sums if self._dynsdpb_sums is None else self._dynsdpb_sums + sums

    def log(self, logs: dict, start_time: float | None = None) -> None:
        sums = getattr(self, "_dynsdpb_sums", None)  # log() may run before _init_core (attach after train)
        if sums is not None and self.model.training and "loss" in logs:
            sums = self.accelerator.reduce(sums, reduction="sum") if self.args.world_size > 1 else sums
            s = dict(zip(self._SUMS, sums.tolist(), strict=True))
            kd = max(s["distilled"], 1.0)
            logs["dynsdpb/ce"] = s["ce"] / max(s["label_tokens"], 1.0)
            logs["dynsdpb/kl"] = s["kl"] / kd
            logs["dynsdpb/kd_loss"] = s["kd"] / kd
            logs["dynsdpb/alpha"] = s["alpha"] / kd
            logs["dynsdpb/temperature"] = s["tau"] / kd
            logs["dynsdpb/distilled_tokens"] = s["distilled"] / max(self._dynsdpb_steps, 1)
            logs["dynsdpb/aligned_fraction"] = s["distilled"] / s["repeated"] if s["repeated"] else 1.0
            logs["dynsdpb/store_mib"] = self._dynsdpb_store.nbytes / 2**20
            if s["skipped"]:
                logs["dynsdpb/skipped_nonfinite"] = s["skipped"]
            if self.dynsdpb.distillation_topk is not None:
                logs["dynsdpb/tail_mass"] = s["tail"] / kd
                self._warn_tail_mass(logs["dynsdpb/tail_mass"], s["distilled"])
            self._dynsdpb_sums, self._dynsdpb_steps = None, 0
        super().log(logs, start_time)

    def _warn_tail_mass(self, tail: float, distilled: float) -> None:
        if tail > _TAIL_WARN and distilled > 0 and not self._dynsdpb_tail_warned:
            self._dynsdpb_tail_warned = True
            logger.warning(
                "DynSDPB: the top-%d stored targets leave %.0f%% of the teacher mass in the tail bucket; the KL is "
                "underestimated. Use distillation_topk=None or a lower distillation_temperature.",
                self.dynsdpb.distillation_topk,
                100 * tail,
            )

    # ------------------------------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        # Written before the trainer state, so a checkpoint that has its state has its targets too.
        buffer = getattr(self, "_dynsdpb_saving_buffer", "current")
        self._dynsdpb_store.save(os.path.join(folder, TARGETS_FILE.format(rank=self.args.process_index)), buffer)
        super()._save_checkpoint(model, trial)

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        checkpoint = resume_from_checkpoint
        if isinstance(checkpoint, bool) and checkpoint:
            checkpoint = last_complete_checkpoint(self.args.output_dir)
            if checkpoint is None:
                raise ValueError(f"no complete checkpoint (one with its trainer_state.json) in {self.args.output_dir}")
            resume_from_checkpoint = checkpoint  # not transformers' own pick, which may be a torn checkpoint
        if isinstance(checkpoint, str):
            path = os.path.join(checkpoint, TARGETS_FILE.format(rank=self.args.process_index))
            if os.path.exists(path):
                self._dynsdpb_store.load(path, device=self.args.device)
            else:
                logger.warning(
                    "DynSDPB: %s holds no stored targets; warm restart: the first step after resuming distills "
                    "nothing and stores targets for the next one.",
                    checkpoint,
                )
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
            **kwargs,
        )
