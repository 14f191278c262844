"""The task contract: examples, named prompt formats, and a verifier.

A task turns a split into :class:`Example` rows, renders one as a prompt in a named, versioned
:class:`PromptFormat` (a chat message list or a plain completion string), and scores a model's response against the
example's gold answer. The evaluator and the round orchestrator only use this interface, so a new task (see
``registry.register_task``) needs no change elsewhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserInputError
from .scoring import ANSWER_LINES, STRICT_PATTERNS, Score, extract, score_response

__all__ = ["Example", "Prompt", "PromptFormat", "Task", "check_examples"]

# A chat prompt is a list of {"role", "content"} messages (the engine applies the model's chat template); a plain
# string is used as-is (few-shot completion formats).
Prompt = str | list[dict[str, str]]


@dataclass(frozen=True)
class Example:
    """One problem: ``answer`` is the gold final answer (a number as a string for GSM8K-style tasks)."""

    id: str
    question: str
    answer: str
    solution: str = ""  # reference worked solution, if the data has one
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptFormat:
    """A named prompt format. Bump ``version`` whenever the rendered text changes, so results stay comparable."""

    name: str
    version: int
    shots: int
    chat: bool  # True: message list through the chat template; False: plain completion text
    strict: str  # strict extraction pattern: "hashes" (#### N) or "answer_is" (The answer is N.)
    stop: tuple[str, ...] = ()
    description: str = ""

    @property
    def id(self) -> str:
        return f"{self.name}@v{self.version}"


class Task(ABC):
    """Subclass and register (``registry.register_task``); see ``tasks/arith.py`` for a complete small example."""

    name: str = "task"
    formats: dict[str, PromptFormat] = {}

    @abstractmethod
    def load(self, split: str, limit: int | None = None) -> list[Example]:
        """The first ``limit`` examples of ``split`` (all when None), in a fixed order."""

    @abstractmethod
    def build_prompt(self, example: Example, fmt: PromptFormat) -> Prompt:
        """Render ``example`` in format ``fmt``."""

    def score(self, response: str, example: Example, fmt: PromptFormat) -> Score:
        """Verify one response; the default extracts a number lm-eval style and compares it with math-verify."""
        return score_response(response, example.answer, strict=fmt.strict)

    def answer_line(self, answer: str, fmt: PromptFormat) -> str:
        """The line that states ``answer`` the way format ``fmt`` asks (``#### 72``, ``The answer is 72.``): what
        strict extraction reads, and what a kept training row ends with (``filtering.answer_line``)."""
        return ANSWER_LINES[fmt.strict].format(answer=answer)

    def stated_answer(self, response: str, fmt: PromptFormat) -> str | None:
        """The answer ``response``'s answer line states (strict extraction), or None when it has none."""
        return extract(response, STRICT_PATTERNS[fmt.strict])

    def get_format(self, shots: int | None = None, name: str | None = None) -> PromptFormat:
        """The format called ``name``, else the one with ``shots`` examples, else the first one."""
        if name is not None:
            base = name.split("@")[0]
            if base not in self.formats:
                raise UserInputError(f"task {self.name}: no prompt format {name!r}; formats: {', '.join(self.formats)}")
            return self.formats[base]
        if shots is None:
            return next(iter(self.formats.values()))
        for fmt in self.formats.values():
            if fmt.shots == shots:
                return fmt
        have = sorted({f.shots for f in self.formats.values()})
        raise UserInputError(f"task {self.name}: no prompt format with {shots} shots; available: {have}")


def check_examples(examples: list[Example], what: str) -> list[Example]:
    """``examples`` unchanged, or :class:`UserInputError` when there are none or two share an id (records, filtering
    and resumption are keyed by example id, so a duplicate would silently merge two questions)."""
    if not examples:
        raise UserInputError(f"{what}: no examples")
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise UserInputError(f"{what}: duplicate example id {ex.id!r}; every example needs a unique id")
        seen.add(ex.id)
    return examples
