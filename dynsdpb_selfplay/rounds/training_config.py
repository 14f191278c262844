"""The ``training:`` section of a run config: a few round-level keys, and every other key a field of the trainer's
config class (``DynSDPBConfig`` for ``trainer: dynsdpb``, ``trl.SFTConfig`` for ``sft``) under its own name, as in a
TRL recipe, checked against that class's annotations and by its own ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import UserInputError
from .schema import build, coerce

__all__ = ["ROUND_TRAINING_DEFAULTS", "LoraSection", "TrainingSection"]


@dataclass
class LoraSection:
    """``training.lora``: ``peft.LoraConfig`` fields under peft's own names, with the rounds' defaults."""

    RENAMED_KEYS: ClassVar = ({"alpha": "lora_alpha", "dropout": "lora_dropout"}, "peft.LoraConfig")

    r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (the update is scaled by alpha/r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], metadata={"help": "Modules that get LoRA."}
    )

    def __post_init__(self):
        if self.r < 1 or self.lora_alpha < 1:
            raise ValueError(f"r={self.r}, lora_alpha={self.lora_alpha}: both must be >= 1")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout={self.lora_dropout}: must be in [0, 1)")

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.target_modules,
            task_type="CAUSAL_LM",
        )


# What a round sets for the trainer where TRL's defaults suit one long run rather than a round: a few hundred rows,
# checkpoints often enough to resume, a step log, a progress bar, and no gradient checkpointing (SFTConfig turns it
# on; a small model's activations fit, and recomputing them costs time). A key under ``training:`` overrides any.
ROUND_TRAINING_DEFAULTS = {
    "learning_rate": 1e-5,
    "num_train_epochs": 1.0,
    "per_device_train_batch_size": 4,
    "max_length": 512,
    "save_strategy": "steps",
    "save_steps": 20,
    "save_total_limit": 2,
    "logging_steps": 1,
    "report_to": "none",
    "dataloader_num_workers": 0,
    "gradient_checkpointing": False,
    "disable_tqdm": False,
}
# Set by the round itself (its folder, the run's seed and name, the device).
SET_BY_THE_ROUND = ("output_dir", "seed", "run_name", "use_cpu")
RENAMED_TRAINING_KEYS = {
    "distillation": "the distillation options are DynSDPBConfig fields now: write each under training: with its "
    "full name, e.g. training.distillation_alpha, training.distillation_temperature, training.distillation_schedule",
    "extra": "write SFTConfig fields directly under training: (e.g. training.warmup_steps)",
}


@dataclass
class TrainingSection:
    """The round-level keys of ``training:``. Every other key is a field of the trainer's config class
    (:class:`~dynsdpb_selfplay.distill.config.DynSDPBConfig` for ``trainer: dynsdpb``, ``trl.SFTConfig`` for
    ``sft``) under its own name, as in a TRL recipe; they are kept in :attr:`args` and checked by that class."""

    trainer: str = field(default="dynsdpb", metadata={"help": "'dynsdpb' or 'sft' (plain SFTTrainer, for ablations)."})
    init: str = field(default="continue", metadata={"help": "'continue' from last round's weights or 'base' model."})
    accumulate_data: bool = field(default=False, metadata={"help": "Train on all rounds' data so far (else new)."})
    lora: LoraSection | None = field(default=None, metadata={"help": "LoRA settings; null for full fine-tuning."})
    lora_handoff: str = field(
        default="merged",
        metadata={
            "help": "With lora: 'merged' saves round_r/model as full merged weights, reloaded into the engine; "
            "'adapter' saves only the adapter, served by the engine on the base model (vLLM LoRARequest), and the "
            "next round continues training the same adapter."
        },
    )
    keep_checkpoints: bool = field(
        default=False,
        metadata={
            "help": "Keep round_r/trainer/checkpoint-N once the round's model is saved (they hold optimizer "
            "state and stored targets, about 6x the model's size); the per-step log is kept either way."
        },
    )
    args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "The trainer config fields given under training: (the other keys), as written.",
            "hidden": True,
        },
    )

    @staticmethod
    def extra_keys() -> list[tuple[str, str, str]]:
        """``(key, default, help)`` of the trainer config fields a round sets its own default for, then the rest."""
        rows = [
            (k, repr(v), "the rounds' default for this trainer config field")
            for k, v in ROUND_TRAINING_DEFAULTS.items()
        ]
        return rows + [("<any DynSDPBConfig / SFTConfig field>", "the class's", "see `dynsdpb sft --help`")]

    def __post_init__(self):
        if self.trainer not in ("dynsdpb", "sft"):
            raise ValueError("trainer: must be 'dynsdpb' or 'sft'")
        if self.init not in ("continue", "base"):
            raise ValueError("init: must be 'continue' or 'base'")
        if self.lora_handoff not in ("merged", "adapter"):
            raise ValueError("lora_handoff: must be 'merged' or 'adapter'")
        if self.lora_handoff == "adapter" and self.lora is None:
            raise ValueError("lora_handoff: 'adapter' needs LoRA training (set training.lora)")

    def config_class(self):
        from trl import SFTConfig

        from ..distill.config import DynSDPBConfig

        return DynSDPBConfig if self.trainer == "dynsdpb" else SFTConfig

    def trainer_config(self, output_dir: str, seed: int, run_name: str | None = None):
        """The round's ``DynSDPBConfig`` / ``SFTConfig``: :data:`ROUND_TRAINING_DEFAULTS`, the user's keys, and what
        the round sets; bf16 only where the device computes it natively unless ``training.bf16`` says so."""
        import torch

        from ..precision import resolve_bf16

        use_cpu = not torch.cuda.is_available()
        values = {**ROUND_TRAINING_DEFAULTS, **self.args}
        values["bf16"] = resolve_bf16(values.get("bf16"), use_cpu, what="training.bf16")
        values.update(output_dir=output_dir, seed=seed, use_cpu=use_cpu, run_name=run_name)
        try:
            return self.config_class()(**values)
        except (TypeError, ValueError) as e:
            raise UserInputError(f"training: {e}") from None

    @classmethod
    def from_mapping(cls, data: dict, key: str = "training") -> TrainingSection:
        """Split ``training:`` into round-level keys and trainer config fields, each checked against its type."""
        own = {f.name for f in dataclasses.fields(cls)} - {"args"}
        for old, why in RENAMED_TRAINING_KEYS.items():
            if old in data:
                raise UserInputError(f"{key}.{old}: {why}")
        section = build(cls, {k: v for k, v in data.items() if k in own}, key)
        config_class = section.config_class()
        hints = typing.get_type_hints(config_class)
        for name, value in data.items():
            if name in own:
                continue
            if name in SET_BY_THE_ROUND:
                raise UserInputError(f"{key}.{name}: set by the round (its folder, the run's seed, the device)")
            if name not in hints:
                raise UserInputError(
                    f"{key}.{name}: not a field of {config_class.__name__} nor a round key "
                    f"({', '.join(sorted(own))}); see `dynsdpb sft --help`"
                )
            section.args[name] = coerce(value, hints[name], f"{key}.{name}")
        return section

    def to_mapping(self) -> dict:
        data = dataclasses.asdict(self)
        return {**{k: v for k, v in data.items() if k != "args"}, **data["args"]}
