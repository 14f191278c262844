"""DynSDPB for sequence classifiers (BERT, RoBERTa, DeBERTa, ... ``AutoModelForSequenceClassification``) on a plain
``transformers.Trainer``: each sample carries one distribution, its class probabilities.

Everything but that is shared with the causal-LM path (:class:`~.core.DynSDPBCore`): the overlapping sampler,
the stored-target cache and its checkpoints, the dynamic alpha/tau rules (entropy normalized by ``log C`` for ``C``
classes) and the ``dynsdpb/*`` metrics, where a "token" is a sample. With ``B`` samples in the optimizer step of
which ``D`` are distilled (repeated, identical tokens, targets stored one step earlier)::

    L = (1/B) sum_{b <= B} CE(z_b, y_b)  +  (1/D) sum_{i <= D} alpha_i * tau_i^2 * KL(p_i || softmax(z_i / tau_i))

(with ``distillation_repeated_ce_weight = w < 1``: ``sum_b w_b CE_b / sum_b w_b``, ``w_b = w`` on repeated samples)

computed by :func:`~.losses.distillation_loss` on the ``[B, C]`` logits (small enough that no fused kernel is
needed). Regression (one output) and multi-label heads have no class distribution and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Trainer, TrainingArguments
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

from .batching import INDEX_COLUMN, MicroBatchPlan, plan_classification_batch
from .config import DistillationArguments
from .core import PLAN_KEY, DynSDPBCore
from .losses import build_targets, distillation_loss, teacher_stats

__all__ = [
    "DynSDPBClassificationConfig",
    "DynSDPBClassificationMixin",
    "DynSDPBClassificationTrainer",
    "check_classifier",
]

_CLASSIFIERS = frozenset(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values())


@dataclass
class DynSDPBClassificationConfig(TrainingArguments, DistillationArguments):
    """``TrainingArguments`` plus the ``distillation_*`` fields of :class:`~.config.DistillationArguments`."""

    def __post_init__(self) -> None:
        TrainingArguments.__post_init__(self)
        self.validate_distillation()


def check_classifier(model) -> int:
    """The number of classes of a single-label sequence classifier; a clear error for anything else."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    config = getattr(base, "config", None)
    if name not in _CLASSIFIERS and not name.endswith("ForSequenceClassification"):
        raise TypeError(
            f"DynSDPB on a transformers.Trainer needs a sequence classifier (AutoModelForSequenceClassification), "
            f"got {name}; for causal LMs use trl.SFTTrainer with DynSDPBTrainer or attach_dynsdpb"
        )
    num_labels = int(getattr(config, "num_labels", 0))
    problem = getattr(config, "problem_type", None)
    if num_labels < 2 or problem == "regression":
        raise ValueError(
            f"{name} has a regression head (num_labels={num_labels}, problem_type={problem!r}): a single output has "
            f"no class distribution to distill. DynSDPB needs num_labels >= 2 and single-label classification."
        )
    if problem == "multi_label_classification":
        raise ValueError(
            f"{name} has problem_type='multi_label_classification': independent sigmoids have no softmax "
            f"distribution to distill; DynSDPB supports single_label_classification"
        )
    return num_labels


class DynSDPBClassificationMixin(DynSDPBCore):
    """Mixin for ``transformers.Trainer`` over a sequence classifier; call :meth:`_init_dynsdpb` once built."""

    def _init_dynsdpb(self, settings: DistillationArguments) -> None:
        model = self.accelerator.unwrap_model(self.model)
        self._init_core(settings, check_classifier(model))
        # compute_loss normalizes by the step's samples itself: the Trainer must not divide by accumulation again.
        self.loss_is_scaled_for_ga = True
        self._warn_topk_temperature("many classes")

    def _plan_micro_batch(self, batch: dict, micro_index: int) -> MicroBatchPlan:
        return plan_classification_batch(
            batch, self._dynsdpb_store, self._first_position(micro_index, batch["labels"].shape[0])
        )

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        num_samples = self._step_total(sum(b["labels"].shape[0] for b in batches), device)
        num_samples = self._ce_normalizer(num_samples, [b[PLAN_KEY] for b in batches], device)
        for batch in batches:
            batch[PLAN_KEY].num_items = num_samples
        return batches, num_items

    def _dynsdpb_loss(self, model, inputs, plan, return_outputs, num_items_in_batch):
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k not in ("labels", INDEX_COLUMN)})
        logits = outputs.logits
        if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
            raise ValueError(f"expected class logits of shape [batch, classes], got {tuple(logits.shape)}")
        targets = self._gathered_targets(plan)
        ce_weight = plan.ce_weight(labels.shape[0], self.dynsdpb.distillation_repeated_ce_weight, logits.device)
        loss, sums = distillation_loss(
            logits, labels, plan.kd_rows, targets, plan.num_items, plan.num_distilled, ce_weight=ce_weight
        )
        if not torch.isfinite(loss):
            return self._nonfinite_loss(model, loss, inputs, plan)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over ranks; the sums are global

        if self.dynsdpb.distillation_alpha > 0 and plan.store_rows.numel():
            z, y = logits.detach()[plan.store_rows].float(), labels[plan.store_rows]
            alpha, tau = self._scheduled(teacher_stats(z, y, self.dynsdpb.distillation_uncertainty_topk))
            new = build_targets(z, tau.to(z.device), alpha.to(z.device), self.dynsdpb.distillation_topk)
            self._store_new_targets(plan, [new])

        tail = 0.0 if targets is None or targets.tail_logp is None else targets.tail_logp.exp().sum()
        alpha_sum = 0.0 if targets is None else targets.alpha.sum()
        tau_sum = 0.0 if targets is None else targets.tau.sum()
        values = (
            labels.numel(),
            sums["ce_sum"],
            plan.kd_rows.numel(),
            sums["kl_sum"],
            sums["kd_sum"],
            alpha_sum,
            tau_sum,
            tail,
            plan.label_tokens_repeated,
        )
        self._add_dynsdpb_sums(values, logits.device)
        return (loss, outputs) if return_outputs else loss


class DynSDPBClassificationTrainer(DynSDPBClassificationMixin, Trainer):
    """``transformers.Trainer`` with DynSDPB; takes a :class:`DynSDPBClassificationConfig`."""

    def __init__(self, *args, **kwargs) -> None:
        config = kwargs.get("args")
        if config is None and len(args) > 1:
            config = args[1]
        if not isinstance(config, DynSDPBClassificationConfig):
            raise TypeError(
                f"DynSDPBClassificationTrainer takes args=DynSDPBClassificationConfig(...), got "
                f"{type(config).__name__}; to keep TrainingArguments, build a Trainer and call attach_dynsdpb(trainer)"
            )
        super().__init__(*args, **kwargs)
        self._init_dynsdpb(DistillationArguments.from_object(self.args))
