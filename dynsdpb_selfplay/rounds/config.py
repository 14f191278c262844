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

import yaml

from ..engines.base import EngineConfig
from ..errors import UserInputError
from .schema import build, key_line, set_dotted
from .sections import EvaluationSection, FilteringSection, GenerationSection, TaskSection
from .training_config import TrainingSection

__all__ = ["RunConfig", "load_config", "to_dict"]

PIPELINES = ("self_training", "self_correction")


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
        self._validate_adaptive(check)
        self._validate_sizes(check)
        if self.pipeline == "self_correction":
            check(self.filtering.labels == "gold", "filtering.labels", "self-correction needs gold labels")
        self._validate_task()

    def _validate_adaptive(self, check) -> None:
        g = self.generation
        if not g.adaptive:
            return
        check(
            self.pipeline == "self_training",
            "generation.adaptive",
            "only the self_training pipeline samples several solutions per question",
        )
        check(
            self.filtering.labels == "gold",
            "generation.adaptive",
            "needs gold labels (filtering.labels: gold) to tell which questions are solved",
        )

    def _validate_sizes(self, check) -> None:
        """The trainer config (its own ``__post_init__`` checks), then the counts and lengths it leaves unchecked,
        so that none fails hours later in a round."""
        t = self.training
        args = t.trainer_config(output_dir="round_r/trainer", seed=self.seed)
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length"):
            value = getattr(args, key)
            check(value is not None and value >= 1, f"training.{key}", f"must be >= 1 (got {value})")
        check(args.learning_rate > 0, "training.learning_rate", "must be > 0")
        check(
            args.max_steps == -1 or args.max_steps >= 1,
            "training.max_steps",
            "must be -1 (use num_train_epochs) or >= 1",
        )
        check(args.num_train_epochs > 0, "training.num_train_epochs", "must be > 0")
        check(args.save_steps >= 1, "training.save_steps", "must be >= 1 (the unit of resumption)")
        self._validate_report_to(args.report_to, check)

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
        check(
            not missing,
            "training.report_to",
            f"{', '.join(missing)} is not installed (for tensorboard: pip install 'dynsdpb-selfplay[tensorboard]')",
        )

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
