"""The prompt formats shared by GSM8K-style tasks, each named and versioned.

- ``chat-0shot`` (v1): one user message with the question and an instruction to end with ``#### <number>``.
- ``lmeval-gsm8k-5shot`` (v1): lm-evaluation-harness ``gsm8k``: ``Question: ...\\nAnswer: <solution>`` blocks joined
  by a blank line, plain text, stop at ``Question:``. lm-eval draws its 5 exemplars at random per question; we fix
  them (the task's first 5 training rows) so that every question sees the same prefix (prefix caching, comparability).
- ``lmeval-gsm8k-cot-8shot`` (v1): lm-eval ``gsm8k_cot``: its fixed 8 chain-of-thought exemplars,
  ``Q: ...\\nA: ... The answer is N.``, stop at ``Q:``; strict extraction reads ``The answer is N.``.
"""

from __future__ import annotations

import re

from ..errors import UserInputError
from .base import Example, PromptFormat

__all__ = [
    "CHAT_0SHOT",
    "COT_8SHOT",
    "FORMATS",
    "QA_5SHOT",
    "chat_prompt",
    "correction_turns",
    "cot_prompt",
    "qa_prompt",
    "to_cot",
]

CHAT_INSTRUCTION = (
    "Solve the problem step by step. Write the final answer as a number on the last line, in the form '#### <number>'."
)
LMEVAL_STOP = ("</s>", "<|im_end|>")

CHAT_0SHOT = PromptFormat(
    name="chat-0shot",
    version=1,
    shots=0,
    chat=True,
    strict="hashes",
    description="chat template, zero-shot, asks for a final '#### <number>' line",
)
QA_5SHOT = PromptFormat(
    name="lmeval-gsm8k-5shot",
    version=1,
    shots=5,
    chat=False,
    strict="hashes",
    stop=("Question:", *LMEVAL_STOP),
    description="lm-eval gsm8k: 'Question:/Answer:' with 5 fixed training exemplars, plain text",
)
COT_8SHOT = PromptFormat(
    name="lmeval-gsm8k-cot-8shot",
    version=1,
    shots=8,
    chat=False,
    strict="answer_is",
    stop=("Q:", *LMEVAL_STOP),
    description="lm-eval gsm8k_cot: 'Q:/A:' with 8 chain-of-thought exemplars ending 'The answer is N.'",
)
FORMATS = {f.name: f for f in (CHAT_0SHOT, QA_5SHOT, COT_8SHOT)}


def chat_prompt(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{question}\n\n{CHAT_INSTRUCTION}"}]


def correction_turns(prompt, first: str, instruction: str) -> list[dict[str, str]]:
    """The self-correction review turn: ``prompt`` (a chat message list), the model's first answer, and the user's
    ``instruction`` to review it; the revision is generated after it and trained on with it as the prompt."""
    if not isinstance(prompt, list):
        raise UserInputError("the self_correction pipeline needs a chat prompt format (task.format)")
    return [*prompt, {"role": "assistant", "content": first}, {"role": "user", "content": instruction}]


def qa_prompt(question: str, shots: list[Example]) -> str:
    """lm-eval: ``doc_to_text`` = ``Question: {q}\\nAnswer:``, target delimiter " ", fewshot delimiter "\\n\\n"."""
    blocks = [f"Question: {s.question}\nAnswer: {s.solution}" for s in shots]
    return "\n\n".join([*blocks, f"Question: {question}\nAnswer:"])


def cot_prompt(question: str, shots: list[tuple[str, str]]) -> str:
    """lm-eval gsm8k_cot: ``Q: {q}\\nA:`` with (question, chain-of-thought) exemplars."""
    blocks = [f"Q: {q}\nA: {a}" for q, a in shots]
    return "\n\n".join([*blocks, f"Q: {question}\nA:"])


def to_cot(solution: str, answer: str) -> str:
    """A GSM8K-style solution (calculator notes, ``#### N``) as one chain-of-thought paragraph ending
    ``The answer is N.``"""
    body = re.sub(r"<<[^>]*>>", "", solution.split("####")[0]).strip()
    return " ".join(line.strip() for line in body.splitlines() if line.strip()) + f" The answer is {answer}."
