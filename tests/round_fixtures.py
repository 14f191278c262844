"""A task the tiny random model can "solve", so the round tests exercise every phase: verification accepts a
response by a deterministic rule on its text instead of by arithmetic. Two frequent characters of the random model
are stop strings, so about half the generations stop before ``max_new_tokens`` (the others are truncated, and never
training rows)."""

from dynsdpb_selfplay.tasks.base import Example, PromptFormat, Task
from dynsdpb_selfplay.tasks.scoring import Score

CHAT = PromptFormat(name="chat", version=2, shots=0, chat=True, strict="hashes", stop=("-", " "))


class EchoTask(Task):
    name = "echo"
    formats = {"chat": CHAT}

    def load(self, split, limit=None):
        n = 40 if split == "train" else 12
        n = n if limit is None else min(limit, n)
        offset = 0 if split == "train" else 1000
        return [Example(f"{split}-{i}", f"Say {i + offset}.", str(i + offset)) for i in range(n)]

    def build_prompt(self, example, fmt):
        return [{"role": "user", "content": example.question}]

    def score(self, response, example, fmt):
        text = response.strip()
        ok = len(text) % 3 != 0  # about two in three responses "verify"
        return Score(strict=text[:4] or None, flexible=text[:2] or None, strict_correct=ok, flexible_correct=bool(text))
