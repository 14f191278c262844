"""The sections of a run config other than ``training:`` (training_config.py) and ``engine:`` (``EngineConfig``):
``task`` (what to solve), ``generation`` (how to sample training data: ``SamplingConfig``'s own fields plus the
round's), ``filtering`` (what to keep), ``evaluation`` (held-out scoring). Each field carries its default and help;
checks that need one section only live in its ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..engines.base import SamplingConfig
from ..errors import UserInputError
from .filtering import ANSWER_LINE_RULES
from .schema import build

__all__ = ["EvaluationSection", "FilteringSection", "GenerationSection", "TaskSection"]


@dataclass
class TaskSection:
    name: str = field(default="arith", metadata={"help": "Registered task name or module:Class."})
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": "Task constructor options."})
    format: str | None = field(default=None, metadata={"help": "Prompt format name (default: the task's first)."})
    train_split: str = field(default="train", metadata={"help": "Split the rounds generate training data from."})
    train_limit: int | None = field(default=None, metadata={"help": "Questions per round from train_split."})
    eval_split: str = field(default="test", metadata={"help": "Held-out split for evaluation."})
    eval_limit: int | None = field(default=None, metadata={"help": "Questions evaluated each round."})
    validation_split: str = field(
        default="validation",
        metadata={"help": "Held-out split that decides whether a round is kept (evaluation.select); not eval_split."},
    )
    validation_limit: int | None = field(default=100, metadata={"help": "Questions of validation_split scored."})
    new_questions_each_round: bool = field(
        default=True, metadata={"help": "Round r takes the r-th block of train_limit questions (False: same ones)."}
    )

    def __post_init__(self):
        if self.validation_split == self.eval_split:
            raise ValueError(
                f"validation_split: {self.validation_split!r} is eval_split too; choosing rounds on the "
                "split the report scores would overstate them"
            )
        for key in ("train_limit", "eval_limit", "validation_limit"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, or null for the whole split")


def _round_default(name: str, default):
    """A :class:`SamplingConfig` field with the rounds' own default (they sample, it is greedy) and its help text."""
    (f,) = (f for f in dataclasses.fields(SamplingConfig) if f.name == name)
    return field(default=default, metadata=f.metadata)


@dataclass
class GenerationSection(SamplingConfig):
    """How a round samples its training data: the :class:`~dynsdpb_selfplay.engines.SamplingConfig` fields under
    their own names (``n`` solutions per question, ``temperature``, ``top_p``, ``top_k``, ``max_new_tokens``,
    ``stop``, checked by its ``__post_init__``) and the round's own keys. ``seed`` is set by the round (one per
    chunk, from the run's seed); ``stop`` adds to the prompt format's stop strings."""

    RENAMED_KEYS: ClassVar = ({"samples": "n"}, "SamplingConfig")

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

    def __post_init__(self):
        super().__post_init__()
        for key in ("chunk_size", "shards"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1")
        if self.adaptive and not 1 <= self.adaptive_first < self.n:
            raise ValueError(
                f"adaptive_first: must be >= 1 and below n={self.n} (the budget per question), else "
                "nothing is left to spend adaptively"
            )
        if self.adaptive and self.adaptive_max_samples is not None and self.adaptive_max_samples < self.n:
            raise ValueError(f"adaptive_max_samples: must be >= n={self.n}, or null")

    @classmethod
    def from_mapping(cls, data: dict, key: str = "generation") -> GenerationSection:
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
    answer_line: str = field(
        default="append",
        metadata={
            "help": "How a kept solution states its answer: 'append' writes the prompt format's answer line (#### N) "
            "for the verified answer under a solution that lacks it, 'require' keeps only solutions that have it, "
            "'as_is' keeps them as generated. A solution whose line states another answer is never kept. Without "
            "it, verify: flexible trains each round to drop the line (strict accuracy 4% -> 0% in two rounds)."
        },
    )

    def __post_init__(self):
        if self.verify not in ("strict", "flexible"):
            raise ValueError("verify: must be 'strict' or 'flexible'")
        if self.answer_line not in ANSWER_LINE_RULES:
            raise ValueError(f"answer_line: must be one of {ANSWER_LINE_RULES}")
        if self.labels not in ("gold", "majority"):
            raise ValueError("labels: must be 'gold' or 'majority'")
        if not 0 < self.min_agreement <= 1:
            raise ValueError("min_agreement: must be in (0, 1]")
        if self.max_per_question < 1:
            raise ValueError("max_per_question: must be >= 1")
        for key in ("min_pass_rate", "max_pass_rate"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{key}: must be in [0, 1]")
        if self.min_pass_rate > self.max_pass_rate:
            raise ValueError(
                f"min_pass_rate: {self.min_pass_rate} is above max_pass_rate={self.max_pass_rate}: "
                "every question would be dropped"
            )


@dataclass
class EvaluationSection:
    enabled: bool = field(default=True, metadata={"help": "Score the held-out questions before and after each round."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest greedy answer when scoring."})
    select: bool = field(
        default=True,
        metadata={
            "help": "Score the start model and each round's model on task.validation_split; a round whose model is "
            "worse than the one it started from beyond noise (strict or flexible accuracy; one-sided exact McNemar "
            "test at select_alpha on the same questions) is not continued from: the next round starts from the "
            "better model, and the report says so."
        },
    )
    select_alpha: float = field(
        default=0.1, metadata={"help": "select: a drop with a p-value below this is beyond noise."}
    )

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens: must be >= 1")
        if not 0 < self.select_alpha < 1:
            raise ValueError("select_alpha: must be in (0, 1)")
