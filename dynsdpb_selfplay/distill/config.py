"""Configuration of DynSDPB: the distillation fields, and :class:`DynSDPBConfig` = TRL's ``SFTConfig`` + those fields.

The same dataclasses load from Python, CLI flags and YAML (``dynsdpb sft --config recipe.yaml``), as TRL's do.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from trl import SFTConfig

__all__ = ["DistillationArguments", "DynSDPBConfig"]


@dataclass
class DistillationArguments:
    """The DynSDPB fields; validated on construction, errors name the field."""

    distillation_alpha: float = field(
        default=1.0,
        metadata={"help": "Base weight alpha0 of the distillation term (0 disables it: plain cross-entropy)."},
    )
    distillation_temperature: float = field(
        default=3.0,
        metadata={
            "help": "Base temperature tau0 (> 0). Under the dynamic schedule each token's temperature lies in "
            "[distillation_min_temperature, tau0]. With distillation_topk, temperatures above 1 lose most of the "
            "KL over large vocabularies (see docs/dynsdpb.md); the default full store is exact."
        },
    )
    distillation_schedule: str = field(
        default="dynamic",
        metadata={
            "help": "'dynamic': per-token alpha and tau from the stored prediction's uncertainty and discrimination "
            "(docs/dynsdpb.md); 'static': fixed alpha0 and tau0 (DLB)."
        },
    )
    distillation_min_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Dynamic schedule: temperature of a stored prediction with zero top-1/top-2 margin, in "
            "(0, distillation_temperature]. Not used (nor checked) by the static schedule."
        },
    )
    distillation_wrong_top1_weight: float = field(
        default=0.5,
        metadata={"help": "Dynamic schedule: factor in [0, 1] on alpha where the stored top-1 is not the label."},
    )
    distillation_progress: str = field(
        default="constant",
        metadata={
            "help": "How alpha follows training progress: 'constant' (alpha0 throughout) or 'linear' (alpha scaled by "
            "s/S, where s is the optimizer step a stored target teaches and S the run's total steps, as in "
            "progressive self-knowledge distillation: little influence early, full weight at the end)."
        },
    )
    distillation_uncertainty_topk: int | None = field(
        default=None,
        metadata={
            "help": "Dynamic schedule: None measures uncertainty as H(p)/log V over the whole vocabulary (small "
            "for nearly every token of a pretrained LM over a large vocabulary); k >= 2 as the entropy of the stored "
            "prediction renormalised over its k most probable outcomes, divided by log k."
        },
    )
    distillation_repeated_ce_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight w in [0, 1] of the cross-entropy of the repeated half of each step (the rows whose "
            "previous-step prediction is distilled); the CE is divided by the weighted label-token count. 1: the "
            "paper's loss, CE on every row. 0: a repeated row learns from its stored prediction only, so each label "
            "is trained on once per pass of the data and the repetition is a consistency term alone. Needs "
            "distillation_alpha > 0 when below 1 (with alpha 0 nothing is stored, so no row counts as repeated)."
        },
    )
    distillation_topk: int | None = field(
        default=None,
        metadata={
            "help": "None: store the full-vocabulary fp32 distribution (exact). k >= 1: store the top-k fp32 "
            "log-probs with a tail bucket (compact: 8 * k + 12 bytes per token; accurate at temperature ~1 only)."
        },
    )
    distillation_store_mb: float = field(
        default=4096.0,
        metadata={"help": "Memory budget in MiB for stored targets (two optimizer steps' fresh halves, per rank)."},
    )
    distillation_chunk_size: int = field(
        default=256,
        metadata={"help": "Tokens per chunk of the fused LM-head + CE + KL kernel; memory is O(chunk * vocab)."},
    )
    distillation_on_nonfinite: str = field(
        default="stop",
        metadata={
            "help": "When a micro-batch's loss is NaN or inf: 'stop' saves a checkpoint of the state before the step "
            "and raises NonFiniteLossError naming the step and rows; 'skip' gives that micro-batch zero gradient, "
            "stores no targets from it, counts it in dynsdpb/skipped_nonfinite and goes on."
        },
    )
    distillation_id_column: str | None = field(
        default=None,
        metadata={
            "help": "Optional column of unique example ids to validate and carry for provenance. Rows are keyed "
            "by their position in the prepared training set either way."
        },
    )

    def validate_distillation(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name}={getattr(self, name)!r}: {why}")

        if not self.distillation_alpha >= 0:
            raise bad("distillation_alpha", "must be >= 0")
        if not self.distillation_temperature > 0:
            raise bad("distillation_temperature", "must be > 0")
        # Only the dynamic rule reads the minimum temperature: a static tau0 < 1 must not trip over its default.
        if self.distillation_schedule == "dynamic" and not (
            0 < self.distillation_min_temperature <= self.distillation_temperature
        ):
            raise bad(
                "distillation_min_temperature",
                "must be in (0, distillation_temperature] under the dynamic schedule; with distillation_temperature "
                "< 1 set it lower too (the static schedule does not use it)",
            )
        if not 0 <= self.distillation_wrong_top1_weight <= 1:
            raise bad("distillation_wrong_top1_weight", "must be in [0, 1]")
        if isinstance(self.distillation_schedule, str) and self.distillation_schedule not in ("static", "dynamic"):
            raise bad("distillation_schedule", "must be 'static' or 'dynamic' (or a Schedule / callable in Python)")
        if self.distillation_progress not in ("constant", "linear"):
            raise bad("distillation_progress", "must be 'constant' or 'linear'")
        w = self.distillation_repeated_ce_weight
        if not 0 <= w <= 1:
            raise bad("distillation_repeated_ce_weight", "must be in [0, 1]")
        if w < 1 and self.distillation_alpha == 0:
            raise bad(
                "distillation_repeated_ce_weight",
                "below 1 needs distillation_alpha > 0: with alpha 0 nothing is stored, so no row counts as repeated",
            )
        k = self.distillation_uncertainty_topk
        if k is not None and not (isinstance(k, int) and k >= 2):
            raise bad("distillation_uncertainty_topk", "must be None (whole vocabulary) or an integer >= 2")
        if self.distillation_topk is not None and not (
            isinstance(self.distillation_topk, int) and self.distillation_topk >= 1
        ):
            raise bad("distillation_topk", "must be None (full vocabulary) or an integer >= 1")
        if not self.distillation_store_mb > 0:
            raise bad("distillation_store_mb", "must be > 0")
        if self.distillation_on_nonfinite not in ("stop", "skip"):
            raise bad("distillation_on_nonfinite", "must be 'stop' or 'skip'")
        if not (isinstance(self.distillation_chunk_size, int) and self.distillation_chunk_size >= 1):
            raise bad("distillation_chunk_size", "must be an integer >= 1")

    def __post_init__(self) -> None:
        self.validate_distillation()

    @classmethod
    def from_object(cls, obj) -> DistillationArguments:
        """The distillation fields of any object carrying them (e.g. a :class:`DynSDPBConfig`)."""
        return cls(**{f.name: getattr(obj, f.name) for f in fields(cls)})


def _only_a_cpu() -> bool:
    """No accelerator that transformers accepts bf16 on (its own test in ``TrainingArguments._validate_args``)."""
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    return not is_torch_bf16_gpu_available() and not is_torch_xla_available()


@dataclass
class DynSDPBConfig(SFTConfig, DistillationArguments):
    """``SFTConfig`` plus the ``distillation_*`` fields of :class:`DistillationArguments`.

    One default differs from ``SFTConfig``: ``bf16=None`` means bf16 autocast only where the device computes bf16
    natively (:mod:`dynsdpb_selfplay.precision`), instead of TRL's "always unless fp16", which on a CPU without
    bf16 instructions trains ~20x slower than fp32."""

    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 (mixed) precision. None (default): on where the device computes bf16 natively (a GPU that "
            "supports it, a CPU with AVX-512-BF16 or AMX), off elsewhere (and under fp16); True on a CPU without "
            "bf16 instructions warns (PyTorch emulates them, ~20x slower than fp32)."
        },
    )

    def __post_init__(self) -> None:
        from ..precision import resolve_bf16

        if self.bf16 is None and self.fp16:
            self.bf16 = False
        self.bf16 = resolve_bf16(self.bf16, use_cpu=self.use_cpu, what="bf16")
        if self.bf16 and not self.use_cpu and _only_a_cpu():
            # transformers refuses bf16 without an accelerator unless use_cpu is set; with none there, the trainer
            # runs on the CPU either way, and a CPU with AMX/AVX-512-BF16 is where bf16 is the right default.
            self.use_cpu = True
        SFTConfig.__post_init__(self)
        self.validate_distillation()
        step = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if step % 2:  # (attach_dynsdpb checks it again with the world size, for configs built elsewhere)
            raise ValueError(
                f"per_device_train_batch_size={self.per_device_train_batch_size} x gradient_accumulation_steps="
                f"{self.gradient_accumulation_steps}: DynSDPB repeats half of each step's rows in the next step, so "
                f"the rows per step must be even (got {step})"
            )
