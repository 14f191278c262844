"""The run configuration: one YAML file per run, validated on load (unknown keys and wrong types name the key).

Sections mirror the phases of a round: ``task`` (what to solve), ``generation`` (how to sample training data),
``filtering`` (what to keep), ``training`` (how to fine-tune), ``evaluation`` (held-out scoring), ``engine``
(vLLM or transformers). ``pipeline`` picks self-training or self-correction.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..engines.base import EngineConfig, SamplingConfig
from ..errors import UserInputError
from .schema import build, key_line, set_dotted
from .training_config import TrainingSection

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


def _round_default(name: str, default):
    """A :class:`SamplingConfig` field with the rounds' own default (they sample, it is greedy) and its help text."""
    (f,) = (f for f in dataclasses.fields(SamplingConfig) if f.name == name)
    return field(default=default, metadata=f.metadata)


RENAMED_GENERATION_KEYS = {"samples": "n"}


@dataclass
class GenerationSection(SamplingConfig):
    """How a round samples its training data: the :class:`~dynsdpb_selfplay.engines.SamplingConfig` fields under
    their own names (``n`` solutions per question, ``temperature``, ``top_p``, ``top_k``, ``max_new_tokens``,
    ``stop``, checked by its ``__post_init__``) and the round's own keys. ``seed`` is set by the round (one per
    chunk, from the run's seed); ``stop`` adds to the prompt format's stop strings."""

    n: int = _round_default("n", 4)
    temperature: float = _round_default("temperature", 0.8)
    top_p: float = _round_default("top_p", 0.95)
    seed: int | None = field(default=None, metadata={"help": "Set by the round, per chunk.", "hidden": True})
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
            "(n per question, per chunk) evenly on the questions not solved in every first sample."
        },
    )
    adaptive_first: int = field(default=2, metadata={"help": "adaptive: solutions sampled per question first."})
    adaptive_max_samples: int | None = field(
        default=None, metadata={"help": "adaptive: most solutions per question in all (null: 2 x n)."}
    )
    correction_prompt: str = field(
        default="Review your solution step by step. If you find a mistake, correct it. "
        "End with the final answer as #### <number>.",
        metadata={"help": "Self-correction: the user turn asking the model to review its first answer."},
    )

    @classmethod
    def from_mapping(cls, data: dict, key: str = "generation") -> GenerationSection:
        for old, new in RENAMED_GENERATION_KEYS.items():
            if old in data:
                raise UserInputError(f"{key}.{old}: renamed to {key}.{new}, SamplingConfig's name for it")
        if data.get("seed") is not None:
            raise UserInputError(f"{key}.seed: set by the round (one per chunk, from the run's seed)")
        return build(cls, data, key)

    def sampling(self, stop: list[str] | tuple[str, ...] = ()) -> SamplingConfig:
        """The :class:`SamplingConfig` these fields describe, with ``stop`` (the prompt format's) added."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(SamplingConfig)}
        return SamplingConfig(**{**values, "stop": [*stop, *self.stop]})


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
class EvaluationSection:
    enabled: bool = field(default=True, metadata={"help": "Score the held-out questions before and after each round."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest greedy answer when scoring."})


@dataclass
class RunConfig:
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Known name, directory, .gguf or hub id."})
    pipeline: str = field(default="self_training", metadata={"help": "'self_training' or 'self_correction'."})
    rounds: int = field(default=2, metadata={"help": "Generation + training rounds."})
    seed: int = field(default=0, metadata={"help": "Seeds sampling (per round and chunk), data order and training."})
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
        check(self.generation.chunk_size >= 1, "generation.chunk_size", "must be >= 1")
        check(self.generation.shards >= 1, "generation.shards", "must be >= 1")
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
        self._validate_task()

    def _validate_adaptive(self, check) -> None:
        g = self.generation
        if not g.adaptive:
            return
        check(self.pipeline == "self_training", "generation.adaptive", "only the self_training pipeline samples "
              "several solutions per question")  # fmt: skip
        check(self.filtering.labels == "gold", "generation.adaptive", "needs gold labels (filtering.labels: gold) to "
              "tell which questions are solved")  # fmt: skip
        check(1 <= g.adaptive_first < g.n, "generation.adaptive_first",
              f"must be >= 1 and below generation.n={g.n} (the budget per question), else nothing is "
              "left to spend adaptively")  # fmt: skip
        top = g.adaptive_max_samples
        check(top is None or top >= g.n, "generation.adaptive_max_samples",
              f"must be >= generation.n={g.n}, or null")  # fmt: skip

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


def load_config(path: str | Path, assignments: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Parse and validate a run config, with ``section.key=value`` ``assignments`` applied over the file (the
    command line's ``--set``); errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"config file not found: {path}")
    try:
        text = path.read_text()
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        why = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
        raise UserInputError(f"{where}: not valid YAML ({why})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a mapping at the top level")
    for assignment in assignments:
        set_dotted(data, assignment)
    try:
        config = build(RunConfig, data)
        config.validate()
        _check_run_dir(config)
    except UserInputError as e:
        line = key_line(text, str(e))
        raise UserInputError(f"{path}:{line}: {e}" if line else f"{path}: {e}") from None
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
        config = build(RunConfig, data)
        config.validate()
    except UserInputError as e:
        raise UserInputError(f"{source}: {e}" if source else str(e)) from None
    return config


def to_dict(config: RunConfig) -> dict:
    """The mapping :func:`from_dict` reads back (``training:`` flat, as written in a config file)."""
    return {**dataclasses.asdict(config), "training": config.training.to_mapping()}
