"""Tasks: data + prompt formats + verifier, one small module each (``gsm8k``, ``arith``), found through a registry."""

from ..jsonl import read_jsonl
from .arith import Arith
from .base import Example, Prompt, PromptFormat, Task
from .gsm8k import GSM8K
from .registry import get_task, list_tasks, register_task
from .scoring import Score, is_correct, score_response

register_task("gsm8k", GSM8K)
register_task("arith", Arith)

__all__ = [
    "GSM8K",
    "Arith",
    "Example",
    "Prompt",
    "PromptFormat",
    "Score",
    "Task",
    "get_task",
    "is_correct",
    "list_tasks",
    "read_jsonl",
    "register_task",
    "score_response",
]
