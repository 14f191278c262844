"""DynSDPB for causal LMs on top of TRL's SFTTrainer: every label token carries a distribution.

:class:`DynSDPBMixin` adds the LM part to :class:`~.core.DynSDPBCore` (overlapping batches, stored targets,
metrics, checkpoints): label positions are aligned to the stored ones token by token, and the loss is the fused
LM-head + CE + KL kernel, which never holds ``[N, V]`` logits. :class:`DynSDPBTrainer` is ``SFTTrainer`` with the
mixin and a :class:`~.config.DynSDPBConfig`; :func:`attach_dynsdpb` turns an already-built ``SFTTrainer`` (or a
``transformers.Trainer`` over a sequence classifier, see :mod:`.classification`) into the same thing by swapping
its class for a subclass with the right mixin, so an existing recipe gains DynSDPB with one line.

The CE is TRL's (normalized by the label tokens of the whole optimizer step, ``num_items_in_batch``, or, for a
model that takes no loss kwargs, the micro-batch mean the Trainer divides by the accumulation steps; weighted, with
the count, by ``distillation_repeated_ce_weight`` on repeated samples), the KL is
normalized by the distilled tokens of the whole step on every model family, and MoE models keep SFTTrainer's
``router_aux_loss_coef * aux_loss``. Families whose logits the fused kernel cannot reproduce are refused at
construction (:mod:`.architectures`).
"""

from __future__ import annotations

import inspect
from dataclasses import fields, replace

import torch
from transformers import Trainer
from trl import SFTTrainer
from trl.trainer.utils import maybe_gather_lm_head_ctx

from .architectures import check_logits_path, router_aux_loss
from .batching import INDEX_COLUMN, MicroBatchPlan, plan_micro_batch
from .config import DistillationArguments, DynSDPBConfig
from .core import TARGETS_FILE, DatasetTooSmallError, DynSDPBCore, last_complete_checkpoint
from .fused import fused_ce_distill, logit_transform
from .losses import Targets, build_targets, teacher_stats_from_softmax

__all__ = [
    "INDEX_COLUMN",
    "TARGETS_FILE",
    "DatasetTooSmallError",
    "DynSDPBMixin",
    "DynSDPBTrainer",
    "attach_dynsdpb",
    "last_complete_checkpoint",
]


class DynSDPBMixin(DynSDPBCore):
    """Mixin for ``SFTTrainer``; call :meth:`_init_dynsdpb` once the trainer is built."""

    # ----------------------------------------------------------------------------------------------- set-up
    def _init_dynsdpb(self, settings: DistillationArguments) -> None:
        args = self.args
        unsupported = {
            "packing": getattr(args, "packing", False),
            "padding_free": getattr(args, "padding_free", False),
            "use_liger_kernel": getattr(args, "use_liger_kernel", False),
        }
        for name, value in unsupported.items():
            if value:
                raise ValueError(
                    f"{name}=True is not supported by DynSDPB: it mixes several examples into one row, so the "
                    f"per-example stored targets cannot be kept. Set {name}=False."
                )
        if getattr(args, "loss_type", "nll") != "nll":
            raise ValueError(f"loss_type={args.loss_type!r} is not supported by DynSDPB; use loss_type='nll'")
        model = self.accelerator.unwrap_model(self.model)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None or not hasattr(head, "weight"):
            raise ValueError("DynSDPB needs a causal LM with an output embedding (LM head) exposing .weight")
        hint = (
            f"; lower per_device_train_batch_size * gradient_accumulation_steps, add data, or, if the raw dataset "
            f"is larger, note that SFTTrainer drops rows whose completion does not fit "
            f"max_length={getattr(args, 'max_length', None)}"
        )
        self._init_core(settings, int(head.weight.shape[0]), too_small_hint=hint)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # The model projects only the last position itself; the fused kernel projects the label positions.
        accepts = "logits_to_keep" in inspect.signature(base.forward).parameters
        self._dynsdpb_forward_kwargs = {"logits_to_keep": 1} if accepts else {}
        self._dynsdpb_transform = logit_transform(model.config)
        self._warn_topk_temperature("a large vocabulary")
        row = self.train_dataset[0]
        probe = list(row["input_ids"][:32]) if "input_ids" in row else list(range(min(16, head.weight.shape[0])))
        check_logits_path(self.model, head, self._dynsdpb_transform, probe, router_logits=self._dynsdpb_aux_loss())

    def _dynsdpb_aux_loss(self) -> bool:
        """SFTTrainer adds the MoE load-balancing loss (``aux_loss_enabled``, set from ``router_aux_loss_coef``)."""
        return bool(getattr(self, "aux_loss_enabled", False))

    def _plan_micro_batch(self, batch: dict, micro_index: int) -> MicroBatchPlan:
        return plan_micro_batch(batch, self._dynsdpb_store, self._first_position(micro_index, batch["labels"].shape[0]))

    # ------------------------------------------------------------------------------------------------ loss
    def _make_targets(self, z, p, lse, labels) -> Targets:
        stats = teacher_stats_from_softmax(z, p, lse, labels, self.dynsdpb.distillation_uncertainty_topk)
        alpha, tau = self._scheduled(stats)
        return build_targets(z, tau.to(z.device), alpha.to(z.device), self.dynsdpb.distillation_topk)

    def _dynsdpb_loss(self, model, inputs, plan, return_outputs, num_items_in_batch):
        labels = inputs["labels"]
        forward = {k: v for k, v in inputs.items() if k not in ("labels", INDEX_COLUMN)}
        forward.update(use_cache=False, output_hidden_states=True, **self._dynsdpb_forward_kwargs)
        aux_loss = self._dynsdpb_aux_loss()
        if aux_loss:  # as SFTTrainer.compute_loss: MoE models return their router logits
            forward["output_router_logits"] = True
        outputs = model(**forward)
        hidden = outputs.hidden_states[-1][:, :-1]
        shifted = labels[:, 1:]
        mask = shifted != -100

        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        weight, bias = head.weight, head.bias
        if hasattr(weight, "full_tensor"):  # FSDP2 DTensor: gather the head, as TRL's fused head does
            weight = weight.full_tensor()
            bias = None if bias is None else bias.full_tensor()
        settings = self.dynsdpb
        ce_weight = plan.ce_weight(int(mask.sum()), settings.distillation_repeated_ce_weight, weight.device)
        if num_items_in_batch is not None:
            num_items = num_items_in_batch  # the step's, already weighted in get_batch_samples
        else:
            num_items = mask.sum() if ce_weight is None else ce_weight.sum()
        scale, softcap = self._dynsdpb_transform
        # ZeRO-3 partitions the head outside its module's forward: gather it for the kernel, as TRL's fused head does.
        with maybe_gather_lm_head_ctx(weight, bias):
            loss, out = fused_ce_distill(
                hidden[mask].to(weight.device),
                weight,
                bias,
                shifted[mask].to(weight.device),
                num_items=num_items,
                kd_rows=plan.kd_rows,
                kd_targets=self._gathered_targets(plan),
                num_distilled=plan.num_distilled,
                kd_weight=self._kd_loss_weight(num_items_in_batch),
                # alpha = 0 stores nothing, so nothing is ever distilled: plain CE at no extra cost.
                store_rows=plan.store_rows if settings.distillation_alpha > 0 else None,
                make_targets=self._make_targets,
                logit_scale=scale,
                softcap=softcap,
                chunk_size=settings.distillation_chunk_size,
                ce_weight=ce_weight,
            )
        # From here on, exactly SFTTrainer.compute_loss: the token-normalised loss times the processes DDP averages
        # over, then the weighted MoE aux loss, a per-micro-batch mean (over the accumulation steps when the Trainer
        # leaves accumulation to the loss).
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self._data_parallel_processes()
        aux = None
        if aux_loss:
            aux = router_aux_loss(self.accelerator.unwrap_model(model), outputs, forward.get("attention_mask"))
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + self.router_aux_loss_coef * aux.to(loss.device) / steps
        if not torch.isfinite(loss):
            return self._nonfinite_loss(model, loss, inputs, plan)

        self._store_new_targets(plan, out.stored)
        self._log_dynsdpb(plan, out, mask, inputs, aux)
        return (loss, outputs) if return_outputs else loss

    def _log_dynsdpb(self, plan: MicroBatchPlan, out, mask: torch.Tensor, inputs: dict, aux=None) -> None:
        """TRL's per-micro-batch metrics, as ``SFTTrainer.compute_loss`` keeps them, plus the DynSDPB sums."""
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics["train"]
        n_label = mask.sum()
        n_all = gather(n_label.reshape(1)).sum().clamp(min=1)
        metrics["entropy"].append((gather(out.entropy_sum.reshape(1)).sum() / n_all).item())
        metrics["mean_token_accuracy"].append((gather(out.num_correct.reshape(1).float()).sum() / n_all).item())
        if "attention_mask" in inputs:
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item()
            metrics["num_tokens"] = [self._total_train_tokens]
        if aux is not None:
            metrics["aux_loss"].append(gather(aux.detach()).mean().item())
        values = (
            n_label,
            out.ce_sum,
            plan.kd_rows.numel(),
            out.kl_sum,
            out.kd_sum,
            out.alpha_sum,
            out.tau_sum,
            out.tail_mass_sum,
            plan.label_tokens_repeated,
        )
        self._add_dynsdpb_sums(values, mask.device)


class DynSDPBTrainer(DynSDPBMixin, SFTTrainer):
    """``SFTTrainer`` with DynSDPB; takes a :class:`~.config.DynSDPBConfig` (``SFTConfig`` + ``distillation_*``)."""

    def __init__(self, *args, **kwargs) -> None:
        config = kwargs.get("args")
        if config is None and len(args) > 1:
            config = args[1]
        if config is not None and not isinstance(config, DynSDPBConfig):
            raise TypeError(
                f"DynSDPBTrainer takes args=DynSDPBConfig(...), got {type(config).__name__}; to keep an SFTConfig, "
                f"build an SFTTrainer and call attach_dynsdpb(trainer, ...)"
            )
        super().__init__(*args, **kwargs)
        if config is None:  # SFTTrainer made a default SFTConfig: take the distillation defaults
            self._init_dynsdpb(DistillationArguments())
        else:
            self._init_dynsdpb(DistillationArguments.from_object(self.args))


def attach_dynsdpb(trainer: Trainer, args: DistillationArguments | None = None, **overrides) -> Trainer:
    """Turn a built trainer into a DynSDPB trainer in place (and return it).

    A ``trl.SFTTrainer`` gets the causal-LM hook (a distribution per label token); a plain ``transformers.Trainer``
    over an ``AutoModelForSequenceClassification`` gets the classification hook (a class distribution per sample).
    The settings are ``args`` (a :class:`~.config.DistillationArguments`, or any object carrying its fields such as a
    :class:`~.config.DynSDPBConfig`; default: the defaults), with ``overrides`` by field name::

        attach_dynsdpb(trainer, distillation_temperature=2.0, distillation_schedule="static")
    """
    from .classification import DynSDPBClassificationMixin, check_classifier

    if isinstance(trainer, DynSDPBCore):
        raise ValueError("DynSDPB is already attached to this trainer")
    if isinstance(trainer, SFTTrainer):
        mixin = DynSDPBMixin
    elif isinstance(trainer, Trainer):
        check_classifier(trainer.accelerator.unwrap_model(trainer.model))
        mixin = DynSDPBClassificationMixin
    else:
        raise TypeError(
            f"attach_dynsdpb expects a trl.SFTTrainer or a transformers.Trainer, got {type(trainer).__name__}"
        )
    settings = DistillationArguments.from_object(args) if args is not None else DistillationArguments()
    known = [f.name for f in fields(DistillationArguments)]
    for key in overrides:
        if key not in known:
            hint = f"; did you mean distillation_{key}?" if f"distillation_{key}" in known else ""
            raise TypeError(f"attach_dynsdpb: unknown option {key!r}{hint} (options: {', '.join(known)})")
    settings = replace(settings, **overrides)  # validated again by DistillationArguments.__post_init__
    cls = type(trainer)
    trainer.__class__ = type(f"DynSDPB{cls.__name__}", (mixin, cls), {"__module__": cls.__module__})
    trainer._init_dynsdpb(settings)
    return trainer
