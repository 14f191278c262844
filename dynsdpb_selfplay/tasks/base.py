"""The task contract: examples, named prompt formats, and a verifier.

A task turns a split into :class:`Example` rows, renders one as a prompt in a named, versioned
:class:`PromptFormat` (a chat message list or a plain completion string), and scores a model's response against the
example's gold answer. The evaluator and the round orchestrator only use this interface, so a new task (see
``registry.register_task``) needs no change elsewhere.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from .scoring import Score, score_response

__all__ = ["Example", "Prompt", "PromptFormat", "Task", "check_examples", "read_jsonl"]

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


def read_jsonl(path: str | os.PathLike, required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a JSONL file; a missing file, bytes that are not UTF-8, a malformed or truncated line, or a row whose
    ``required`` fields are missing or not strings raises :class:`UserInputError` naming the file and line (and the
    field). Blank lines are skipped; an empty file gives ``[]`` (the caller says whether that is an error)."""
    return [row for _, row in read_jsonl_lines(path, required)]


def read_jsonl_lines(path: str | os.PathLike, required: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
    """:func:`read_jsonl` with each row's line number in the file (1-based), for callers whose own checks must name
    the line: with blank lines the row's index is not its line."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"data file not found: {path}")
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserInputError(f"{path}:{lineno}: not UTF-8 text (byte {e.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                cut = "; the file ends in the middle of this record (truncated?)" if not line.endswith("\n") else ""
                raise UserInputError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}){cut}") from None
            if not isinstance(row, dict):
                raise UserInputError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for key in required:
                if key not in row:
                    raise UserInputError(f"{path}:{lineno}: missing field {key!r}")
                if not isinstance(row[key], str):
                    got = type(row[key]).__name__
                    raise UserInputError(f"{path}:{lineno}: field {key!r} must be a string, got {got}")
            rows.append((lineno, row))
    return rows


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
