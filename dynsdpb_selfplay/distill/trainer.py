"""DynSDPB as a trainer: overlapping batches, stored targets and the fused CE + KL loss on top of TRL's SFTTrainer.

:class:`DynSDPBMixin` holds all of it; :class:`DynSDPBTrainer` is ``SFTTrainer`` with the mixin and a
:class:`~.config.DynSDPBConfig`, and :func:`attach_dynsdpb` turns an already-built ``SFTTrainer`` into the same thing
(its class is swapped for a subclass with the mixin), so an existing recipe gains DynSDPB with one line.

What "previous step" means: the previous *optimizer* step. Under gradient accumulation the effective batch of one
optimizer step (all its micro-batches, on all ranks) is what overlaps by half with the next one; targets stored while
accumulating step ``s`` (weights ``w_s``) teach step ``s + 1`` (weights ``w_{s+1}``). The CE is normalized by the
label tokens of the whole step (``num_items_in_batch``) and the KL by the distilled tokens of the whole step, so
(micro-batch 8, accumulation 1) and (micro-batch 2, accumulation 4) give the same loss.
"""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from collections import Counter

import torch
from torch.utils.data import IterableDataset
from trl import SFTTrainer
from trl.trainer.utils import maybe_gather_lm_head_ctx

from .batching import INDEX_COLUMN, IndexCollator, IndexedDataset, MicroBatchPlan, plan_micro_batch
from .config import DistillationArguments, DynSDPBConfig
from .fused import fused_ce_distill, logit_transform
from .losses import Targets, build_targets, teacher_stats_from_softmax
from .sampler import OverlapSampler
from .schedules import make_schedule
from .store import StoredSample, TargetStore

__all__ = [
    "INDEX_COLUMN",
    "DatasetTooSmallError",
    "DynSDPBMixin",
    "DynSDPBTrainer",
    "attach_dynsdpb",
    "last_complete_checkpoint",
]

logger = logging.getLogger(__name__)

TARGETS_FILE = "dynsdpb_targets_rank{rank}.safetensors"
_PLAN = "dynsdpb_plan"
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


class DynSDPBMixin:
    """Mixin for ``SFTTrainer``; call :meth:`_init_dynsdpb` once the trainer is built."""

    # ----------------------------------------------------------------------------------------------- set-up
    def _init_dynsdpb(self, settings: DistillationArguments) -> None:
        settings.validate_distillation()
        self.dynsdpb = settings
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
                f"({step_batch // 2}); SFTTrainer drops rows whose completion does not fit max_length="
                f"{getattr(args, 'max_length', None)}"
            )
        if step_batch % 2 or (world > 1 and args.per_device_train_batch_size % 2):
            raise ValueError(
                f"DynSDPB needs an even per_device_train_batch_size * gradient_accumulation_steps * world_size "
                f"(got {args.per_device_train_batch_size} * {args.gradient_accumulation_steps} * {world}), and an "
                f"even per_device_train_batch_size with several processes"
            )
        if settings.distillation_id_column is not None:
            self._check_id_column(settings.distillation_id_column)

        model = self.accelerator.unwrap_model(self.model)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None or not hasattr(head, "weight"):
            raise ValueError("DynSDPB needs a causal LM with an output embedding (LM head) exposing .weight")
        self._dynsdpb_vocab = int(head.weight.shape[0])
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # The model projects only the last position itself; the fused kernel projects the label positions.
        accepts = "logits_to_keep" in inspect.signature(base.forward).parameters
        self._dynsdpb_forward_kwargs = {"logits_to_keep": 1} if accepts else {}
        self._dynsdpb_transform = logit_transform(model.config)
        self._dynsdpb_schedule = make_schedule(
            settings.distillation_schedule,
            settings.distillation_alpha,
            settings.distillation_temperature,
            settings.distillation_min_temperature,
            settings.distillation_wrong_top1_weight,
        )
        self._dynsdpb_store = TargetStore(
            int(settings.distillation_store_mb * 2**20), self._dynsdpb_vocab, settings.distillation_topk
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
        if settings.distillation_topk is not None and settings.distillation_temperature > 1.5:
            warnings.warn(
                f"distillation_topk={settings.distillation_topk} with distillation_temperature="
                f"{settings.distillation_temperature}: over a large vocabulary a softened distribution keeps most "
                f"of its mass outside the top-k, and the stored KL is underestimated (measured -75..-88% at "
                f"temperature 3 with k=256 on a 49k vocabulary). Prefer the full store (distillation_topk=None) "
                f"or a temperature near 1; the logged dynsdpb/tail_mass shows the mass outside the top-k.",
                stacklevel=3,
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

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # Called once at the start of every optimizer step: last step's writes become this step's targets.
        self._dynsdpb_store.advance()
        self._dynsdpb_steps += 1
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        plans = [self._plan_micro_batch(b, g) for g, b in enumerate(batches)]
        total = sum(p.kd_rows.numel() for p in plans)
        num_distilled = torch.tensor(float(total), device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            num_distilled = self.accelerator.gather(num_distilled).sum()
        for batch, plan in zip(batches, plans, strict=True):
            plan.num_distilled = num_distilled
            batch[_PLAN] = plan
        return batches, num_items

    def _plan_micro_batch(self, batch: dict, micro_index: int) -> MicroBatchPlan:
        first = (micro_index * self.args.world_size + self.args.process_index) * batch["labels"].shape[0]
        return plan_micro_batch(batch, self._dynsdpb_store, first)

    # ------------------------------------------------------------------------------------------------ loss
    def _make_targets(self, z, p, lse, labels) -> Targets:
        alpha, tau = self._dynsdpb_schedule(teacher_stats_from_softmax(z, p, lse, labels))
        return build_targets(z, tau.to(z.device), alpha.to(z.device), self.dynsdpb.distillation_topk)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        plan: MicroBatchPlan | None = inputs.pop(_PLAN, None)
        inputs.pop(INDEX_COLUMN, None)
        if plan is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        labels = inputs["labels"]
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        forward.update(use_cache=False, output_hidden_states=True, **self._dynsdpb_forward_kwargs)
        outputs = model(**forward)
        hidden = outputs.hidden_states[-1][:, :-1]
        shifted = labels[:, 1:]
        mask = shifted != -100

        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        weight, bias = head.weight, head.bias
        if hasattr(weight, "full_tensor"):  # FSDP2 DTensor: gather the head, as TRL's fused head does
            weight = weight.full_tensor()
            bias = None if bias is None else bias.full_tensor()
        num_items = mask.sum() if num_items_in_batch is None else num_items_in_batch
        scale, softcap = self._dynsdpb_transform
        settings = self.dynsdpb
        # Gathered here, not when planning, so accumulation does not hold every micro-batch's copy at once.
        kd_targets = Targets.cat([t.select(rows) for t, rows in plan.kd_sources]) if plan.kd_sources else None
        # ZeRO-3 partitions the head outside its module's forward: gather it for the kernel, as TRL's fused head does.
        with maybe_gather_lm_head_ctx(weight, bias):
            loss, out = fused_ce_distill(
                hidden[mask].to(weight.device),
                weight,
                bias,
                shifted[mask].to(weight.device),
                num_items=num_items,
                kd_rows=plan.kd_rows,
                kd_targets=kd_targets,
                num_distilled=plan.num_distilled,
                # alpha = 0 stores nothing, so nothing is ever distilled: plain CE at no extra cost.
                store_rows=plan.store_rows if settings.distillation_alpha > 0 else None,
                make_targets=self._make_targets,
                logit_scale=scale,
                softcap=softcap,
                chunk_size=settings.distillation_chunk_size,
            )
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            tp = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
            loss = loss * (self.accelerator.num_processes // tp)

        self._store_new_targets(plan, out.stored)
        self._log_dynsdpb(plan, out, mask, inputs)
        return (loss, outputs) if return_outputs else loss

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

    _SUMS = ("label_tokens", "ce", "distilled", "kl", "kd", "alpha", "tau", "tail", "repeated")

    def _log_dynsdpb(self, plan: MicroBatchPlan, out, mask: torch.Tensor, inputs: dict) -> None:
        """Accumulate token sums over the logging window; :meth:`log` turns them into token-weighted means."""
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics["train"]
        n_label = mask.sum()
        n_all = gather(n_label.reshape(1)).sum().clamp(min=1)
        # TRL's per-micro-batch metrics, as SFTTrainer.compute_loss keeps them.
        metrics["entropy"].append((gather(out.entropy_sum.reshape(1)).sum() / n_all).item())
        metrics["mean_token_accuracy"].append((gather(out.num_correct.reshape(1).float()).sum() / n_all).item())
        if "attention_mask" in inputs:
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item()
            metrics["num_tokens"] = [self._total_train_tokens]
        values = (n_label, out.ce_sum, plan.kd_rows.numel(), out.kl_sum, out.kd_sum, out.alpha_sum, out.tau_sum,
                  out.tail_mass_sum, plan.label_tokens_repeated)  # fmt: skip
        sums = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=mask.device).reshape(()) for v in values])
        self._dynsdpb_sums = sums if self._dynsdpb_sums is None else self._dynsdpb_sums + sums

    def log(self, logs: dict, start_time: float | None = None) -> None:
        sums = getattr(self, "_dynsdpb_sums", None)  # log() may run before _init_dynsdpb (attach after train)
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
        self._dynsdpb_store.save(os.path.join(folder, TARGETS_FILE.format(rank=self.args.process_index)))
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


def attach_dynsdpb(
    trainer: SFTTrainer,
    alpha: float = 1.0,
    temperature: float = 3.0,
    schedule: str = "dynamic",
    topk: int | None = None,
    **distillation_kwargs,
) -> SFTTrainer:
    """Turn a built ``SFTTrainer`` into a DynSDPB trainer in place (and return it).

    ``distillation_kwargs`` take the other :class:`~.config.DistillationArguments` fields without their
    ``distillation_`` prefix (``min_temperature``, ``wrong_top1_weight``, ``store_mb``, ``chunk_size``, ``id_column``).
    """
    if isinstance(trainer, DynSDPBMixin):
        raise ValueError("DynSDPB is already attached to this trainer")
    if not isinstance(trainer, SFTTrainer):
        raise TypeError(f"attach_dynsdpb expects a trl.SFTTrainer, got {type(trainer).__name__}")
    unknown = DistillationArguments.unknown_options(distillation_kwargs)
    if unknown:
        raise TypeError(f"attach_dynsdpb: unknown option(s) {unknown}; known: {DistillationArguments.option_names()}")
    settings = DistillationArguments(
        distillation_alpha=alpha,
        distillation_temperature=temperature,
        distillation_schedule=schedule,
        distillation_topk=topk,
        **DistillationArguments.prefixed(distillation_kwargs),
    )
    cls = type(trainer)
    trainer.__class__ = type(f"DynSDPB{cls.__name__}", (DynSDPBMixin, cls), {"__module__": cls.__module__})
    trainer._init_dynsdpb(settings)
    return trainer
