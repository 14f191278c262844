"""The run configuration: one YAML file per run, validated on load (unknown keys and wrong types name the key).

Sections mirror the phases of a round: ``task`` (what to solve), ``generation`` (how to sample training data),
``filtering`` (what to keep), ``training`` (how to fine-tune), ``evaluation`` (held-out scoring), ``engine``
(vLLM or transformers). ``pipeline`` picks self-training or self-correction.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..engines.base import EngineConfig, SamplingConfig
from ..errors import UserInputError

__all__ = ["RunConfig", "load_config", "to_dict"]

PIPELINES = ("self_training", "self_correction")


@dataclass
class TaskSection:
    name: str = field(default="arith", metadata={"help": "Registered task name or module:Class."})
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": "Task constructor options."})
    format: str | None = field(default=None, metadata={"help": "Prompt format name (default: the task's first)."})
    train_split: str = field(default="train", metadata={"help": "Split the rounds generate training data from."})
    train_limit: int | None = field(default=None, metadata={"help": "Questions per round from train_split."})
    eval_split: str = field(default="test", metadata={"help": "Held-out split for evaluation."})
    eval_limit: int | None = field(default=None, metadata={"help": "Questions evaluated each round."})
    new_questions_each_round: bool = field(
        default=True, metadata={"help": "Round r takes the r-th block of train_limit questions (False: same ones)."}
    )


@dataclass
class GenerationSection:
    samples: int = field(default=4, metadata={"help": "Solutions sampled per question (k)."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature of training data."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest generated solution."})
    chunk_size: int = field(default=64, metadata={"help": "Questions per saved chunk (the unit of resumption)."})
    shards: int = field(
        default=1,
        metadata={
            "help": "Independent engine processes generating every shards-th chunk (one per GPU when there are as "
            "many); merged in chunk order, so the data do not depend on the shard count."
        },
    )
    rationalize: bool = field(
        default=False, metadata={"help": "Self-training: retry unsolved questions with the gold answer as a hint."}
    )
    adaptive: bool = field(
        default=False,
        metadata={
            "help": "Self-training: sample adaptive_first solutions per question, then spend the rest of the budget "
            "(samples per question, per chunk) evenly on the questions not solved in every first sample."
        },
    )
    adaptive_first: int = field(default=2, metadata={"help": "adaptive: solutions sampled per question first."})
    adaptive_max_samples: int | None = field(
        default=None, metadata={"help": "adaptive: most solutions per question in all (null: 2 x samples)."}
    )
    correction_prompt: str = field(
        default="Review your solution step by step. If you find a mistake, correct it. "
        "End with the final answer as #### <number>.",
        metadata={"help": "Self-correction: the user turn asking the model to review its first answer."},
    )


@dataclass
class FilteringSection:
    verify: str = field(default="strict", metadata={"help": "'strict' (#### N format) or 'flexible' extraction."})
    max_per_question: int = field(default=2, metadata={"help": "Kept solutions per question, after deduplication."})
    labels: str = field(
        default="gold", metadata={"help": "'gold' answers, or 'majority' vote of the samples (unlabeled data)."}
    )
    min_agreement: float = field(default=0.6, metadata={"help": "labels=majority: share of samples that must agree."})
    keep_right_to_right: bool = field(
        default=True, metadata={"help": "Self-correction: also keep correct answers confirmed by the review."}
    )
    max_pass_rate: float = field(
        default=1.0,
        metadata={
            "help": "Drop questions whose pass rate (verified samples / samples, round_r/pass_rates.jsonl) is above "
            "this: e.g. 0.99 drops those solved in every sample (nothing to learn)."
        },
    )
    min_pass_rate: float = field(default=0.0, metadata={"help": "Drop questions whose pass rate is below this."})


@dataclass
class LoraSection:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


# What a round sets for the trainer where TRL's defaults suit one long run rather than a round: a few hundred rows,
# checkpoints often enough to resume, a step log, a progress bar, and no gradient checkpointing (SFTConfig turns it
# on; a small model's activations fit, and recomputing them costs time). A key under ``training:`` overrides any.
ROUND_TRAINING_DEFAULTS = {"learning_rate": 1e-5, "num_train_epochs": 1.0, "per_device_train_batch_size": 4,
                           "max_length": 512, "save_strategy": "steps", "save_steps": 20, "save_total_limit": 2,
                           "logging_steps": 1, "report_to": "none", "dataloader_num_workers": 0,
                           "gradient_checkpointing": False, "disable_tqdm": False}  # fmt: skip
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
        metadata={"help": "Keep round_r/trainer/checkpoint-N once the round's model is saved (they hold optimizer "
                  "state and stored targets, about 6x the model's size); the per-step log is kept either way."},
    )  # fmt: skip
    args: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "The trainer config fields given under training: (the other keys), as written."},
    )

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
        section = _build(cls, {k: v for k, v in data.items() if k in own}, key)
        config_class = section.config_class()
        hints = typing.get_type_hints(config_class)
        for name, value in data.items():
            if name in own:
                continue
            if name in SET_BY_THE_ROUND:
                raise UserInputError(f"{key}.{name}: set by the round (its folder, the run's seed, the device)")
            if name not in hints:
                raise UserInputError(f"{key}.{name}: not a field of {config_class.__name__} nor a round key "
                                     f"({', '.join(sorted(own))}); see `dynsdpb sft --help`")  # fmt: skip
            section.args[name] = _coerce(value, hints[name], f"{key}.{name}")
        return section

    def to_mapping(self) -> dict:
        data = dataclasses.asdict(self)
        return {**{k: v for k, v in data.items() if k != "args"}, **data["args"]}


@dataclass
class EvaluationSection:
    enabled: bool = True
    max_new_tokens: int = 256


@dataclass
class RunConfig:
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Known name, directory, .gguf or hub id."})
    pipeline: str = field(default="self_training", metadata={"help": "'self_training' or 'self_correction'."})
    rounds: int = field(default=2, metadata={"help": "Generation + training rounds."})
    seed: int = 0
    run_dir: str | None = field(
        default=None,
        metadata={
            "help": "Output folder (default: runs/<config file stem>), relative to the folder the command runs in "
            "and inside it, unless allow_absolute_paths is true."
        },
    )
    allow_absolute_paths: bool = field(
        default=False,
        metadata={"help": "Let run_dir be absolute or climb out with '..' (--run-dir on the command line always may)."},
    )
    task: TaskSection = field(default_factory=TaskSection)
    generation: GenerationSection = field(default_factory=GenerationSection)
    filtering: FilteringSection = field(default_factory=FilteringSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def validate(self) -> None:
        def check(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise UserInputError(f"{key}: {why}")

        check(self.pipeline in PIPELINES, "pipeline", f"{self.pipeline!r} is not one of {PIPELINES}")
        check(self.rounds >= 1, "rounds", "must be >= 1")
        check(self.generation.samples >= 1, "generation.samples", "must be >= 1")
        check(self.generation.chunk_size >= 1, "generation.chunk_size", "must be >= 1")
        check(self.generation.shards >= 1, "generation.shards", "must be >= 1")
        check(self.generation.temperature >= 0, "generation.temperature", "must be >= 0")
        check(self.filtering.verify in ("strict", "flexible"), "filtering.verify", "must be 'strict' or 'flexible'")
        check(self.filtering.labels in ("gold", "majority"), "filtering.labels", "must be 'gold' or 'majority'")
        check(0 < self.filtering.min_agreement <= 1, "filtering.min_agreement", "must be in (0, 1]")
        check(self.filtering.max_per_question >= 1, "filtering.max_per_question", "must be >= 1")
        check(0 <= self.filtering.min_pass_rate <= 1, "filtering.min_pass_rate", "must be in [0, 1]")
        check(0 <= self.filtering.max_pass_rate <= 1, "filtering.max_pass_rate", "must be in [0, 1]")
        check(self.filtering.min_pass_rate <= self.filtering.max_pass_rate, "filtering.min_pass_rate",
              f"{self.filtering.min_pass_rate} is above filtering.max_pass_rate={self.filtering.max_pass_rate}: "
              "every question would be dropped")  # fmt: skip
        self._validate_adaptive(check)
        check(self.training.lora_handoff in ("merged", "adapter"), "training.lora_handoff",
              "must be 'merged' or 'adapter'")  # fmt: skip
        check(self.training.lora_handoff == "merged" or self.training.lora is not None, "training.lora_handoff",
              "'adapter' needs LoRA training (set training.lora)")  # fmt: skip
        check(self.training.trainer in ("dynsdpb", "sft"), "training.trainer", "must be 'dynsdpb' or 'sft'")
        check(self.training.init in ("continue", "base"), "training.init", "must be 'continue' or 'base'")
        self._validate_sizes(check)
        if self.pipeline == "self_correction":
            check(self.filtering.labels == "gold", "filtering.labels", "self-correction needs gold labels")
        try:
            SamplingConfig(n=self.generation.samples, temperature=self.generation.temperature,
                           top_p=self.generation.top_p, max_new_tokens=self.generation.max_new_tokens)  # fmt: skip
        except ValueError as e:
            raise UserInputError(f"generation: {e}") from None
        self._validate_task()

    def _validate_adaptive(self, check) -> None:
        g = self.generation
        if not g.adaptive:
            return
        check(self.pipeline == "self_training", "generation.adaptive", "only the self_training pipeline samples "
              "several solutions per question")  # fmt: skip
        check(self.filtering.labels == "gold", "generation.adaptive", "needs gold labels (filtering.labels: gold) to "
              "tell which questions are solved")  # fmt: skip
        check(1 <= g.adaptive_first < g.samples, "generation.adaptive_first",
              f"must be >= 1 and below generation.samples={g.samples} (the budget per question), else nothing is "
              "left to spend adaptively")  # fmt: skip
        top = g.adaptive_max_samples
        check(top is None or top >= g.samples, "generation.adaptive_max_samples",
              f"must be >= generation.samples={g.samples}, or null")  # fmt: skip

    def _validate_sizes(self, check) -> None:
        """The trainer config (its own ``__post_init__`` checks), then the counts and lengths it leaves unchecked,
        so that none fails hours later in a round."""
        t, task = self.training, self.task
        args = t.trainer_config(output_dir="round_r/trainer", seed=self.seed)
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length"):
            value = getattr(args, key)
            check(value is not None and value >= 1, f"training.{key}", f"must be >= 1 (got {value})")
        check(args.learning_rate > 0, "training.learning_rate", "must be > 0")
        check(args.max_steps == -1 or args.max_steps >= 1, "training.max_steps",
              "must be -1 (use num_train_epochs) or >= 1")  # fmt: skip
        check(args.num_train_epochs > 0, "training.num_train_epochs", "must be > 0")
        check(args.save_steps >= 1, "training.save_steps", "must be >= 1 (the unit of resumption)")
        self._validate_report_to(args.report_to, check)
        if t.lora is not None:
            check(t.lora.r >= 1 and t.lora.alpha >= 1, "training.lora", "r and alpha must be >= 1")
            check(0 <= t.lora.dropout < 1, "training.lora.dropout", "must be in [0, 1)")
        for key in ("train_limit", "eval_limit"):
            value = getattr(task, key)
            check(value is None or value >= 1, f"task.{key}", "must be >= 1, or null for the whole split")
        check(self.evaluation.max_new_tokens >= 1, "evaluation.max_new_tokens", "must be >= 1")

    @staticmethod
    def _validate_report_to(report_to, check) -> None:
        """Every logger ``training.report_to`` names is one transformers knows and is installed (else the round
        would fail when its trainer starts, after generation)."""
        from transformers.integrations import get_available_reporting_integrations, get_reporting_integration_callbacks

        names = [report_to] if isinstance(report_to, str) else list(report_to or [])
        names = [n for n in names if n not in ("none", "all")]
        try:
            get_reporting_integration_callbacks(names)
        except ValueError as e:
            check(False, "training.report_to", str(e))
        missing = sorted(set(names) - set(get_available_reporting_integrations()))
        check(not missing, "training.report_to", f"{', '.join(missing)} is not installed (for tensorboard: "
              "pip install 'dynsdpb-selfplay[tensorboard]')")  # fmt: skip

    def _validate_task(self) -> None:
        """The task must exist, accept its options and have the format (constructing a task reads no data)."""
        from ..tasks import get_task

        try:
            get_task(self.task.name, **self.task.options).get_format(name=self.task.format)
        except UserInputError as e:
            raise UserInputError(f"task: {e}") from None


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, key: str):
    """Check ``value`` against the annotation ``tp`` (recursing into dataclasses, lists, dicts, optionals)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, key)
            except UserInputError as e:
                errors.append(str(e))
        raise UserInputError(errors[0] if len(errors) == 1 else f"{key}: expected {tp}, got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise UserInputError(f"{key}: expected one of {typing.get_args(tp)}, got {value!r}")
        return value
    if tp is TrainingSection:
        if not isinstance(value, dict):
            raise UserInputError(f"{key}: expected a mapping, got {type(value).__name__}")
        return TrainingSection.from_mapping(value, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserInputError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise UserInputError(f"{key}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserInputError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise UserInputError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return value


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise UserInputError(f"{where}: unknown key; known: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise UserInputError(f"{prefix or 'config'}: {e}") from None


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """Parse and validate a run config; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        why = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
        raise UserInputError(f"{where}: not valid YAML ({why})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a mapping at the top level")
    data.update(overrides or {})
    try:
        config = _build(RunConfig, data)
        config.validate()
        _check_run_dir(config)
    except UserInputError as e:
        raise UserInputError(f"{path}: {e}") from None
    return config


def _check_run_dir(config: RunConfig) -> None:
    """A config's ``run_dir`` is relative and stays below the working folder unless ``allow_absolute_paths``.

    Only the config file is held to this: a run folder given on the command line (``--run-dir``) is the user's own
    explicit choice. Inside the run folder every path is built from fixed names, never from config values."""
    if config.run_dir is None or config.allow_absolute_paths:
        return
    path = Path(config.run_dir)
    if path.is_absolute() or path.drive or config.run_dir.startswith("~"):
        raise UserInputError(
            f"run_dir: {config.run_dir!r} is absolute; give a path relative to the working folder, pass --run-dir, "
            "or set allow_absolute_paths: true"
        )
    if os.path.normpath(path).split(os.sep)[0] == "..":
        raise UserInputError(
            f"run_dir: {config.run_dir!r} leaves the working folder ('..'); pass --run-dir or set "
            "allow_absolute_paths: true"
        )


def from_dict(data: dict, source: str | Path | None = None) -> RunConfig:
    """A validated config from a mapping (a run folder's ``config.yaml``); errors name ``source`` when given."""
    try:
        config = _build(RunConfig, data)
        config.validate()
    except UserInputError as e:
        raise UserInputError(f"{source}: {e}" if source else str(e)) from None
    return config


def to_dict(config: RunConfig) -> dict:
    """The mapping :func:`from_dict` reads back (``training:`` flat, as written in a config file)."""
    return {**dataclasses.asdict(config), "training": config.training.to_mapping()}
