"""``arith``: generated GSM8K-style multi-step arithmetic word problems with exact answers, offline.

Each problem follows one person's stock of one item through ``steps`` operations (buy more, give away, buy packs,
double/triple, share equally), written like GSM8K: the solution has ``<<a+b=c>>`` calculator notes and ends with
``#### N``. Problem ``i`` of a split depends only on ``(seed, split, steps, i)``, so any prefix is reproducible and
train/test never share a generator stream. Intermediate values stay non-negative integers (divisions are exact).

A 135M model scores ~1-2% on GSM8K; ``arith`` with 1-3 steps gives it problems it can partly solve, which makes it
the default for demos and fast tests.
"""

from __future__ import annotations

import random

from ..errors import UserInputError
from .base import Example, Prompt, PromptFormat, Task
from .prompts import FORMATS, chat_prompt, cot_prompt, qa_prompt, to_cot

__all__ = ["Arith", "make_problem"]

NAMES = ["Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack", "Lena", "Omar", "Priya", "Sam"]
PRONOUN = {n: ("she" if n in {"Ava", "Chloe", "Emma", "Grace", "Iris", "Lena", "Priya"} else "he") for n in NAMES}
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "shells", "cards", "coins", "stamps"]
FRIENDS = ["a friend", "{pos} brother", "{pos} sister", "a neighbor", "the class", "a cousin"]


def _step(rng: random.Random, x: int, pron: str, item: str) -> tuple[int, str, str]:
    """One operation on the running total ``x``: (new total, question sentence, solution line)."""
    ops = ["add", "pack", "mul"] + (["sub"] if x > 2 else []) + (["div"] if any(x % d == 0 for d in (2, 3, 4)) else [])
    op = rng.choice(ops)
    he = pron.capitalize()
    if op == "add":
        b = rng.randint(2, 40)
        line = f"After getting {b} more: {x}+{b}=<<{x}+{b}={x + b}>>{x + b}."
        return x + b, f"Then {pron} gets {b} more {item}.", line
    if op == "sub":
        b = rng.randint(2, min(x - 1, 50))
        friend = rng.choice(FRIENDS).format(pos="her" if pron == "she" else "his")
        sentence = f"{he} gives {b} {item} to {friend}."
        return x - b, sentence, f"After giving away {b}: {x}-{b}=<<{x}-{b}={x - b}>>{x - b}."
    if op == "pack":
        m, b = rng.randint(2, 6), rng.randint(2, 12)
        p = m * b
        line = f"{m} packs of {b} make {m}*{b}=<<{m}*{b}={p}>>{p}, so {x}+{p}=<<{x}+{p}={x + p}>>{x + p}."
        return x + p, f"{he} buys {m} packs with {b} {item} in each pack.", line
    if op == "mul":
        m = rng.choice([2, 3]) if x > 100 else rng.randint(2, 4)
        word = {2: "doubles", 3: "triples", 4: "quadruples"}[m]
        return x * m, f"Then {pron} {word} the number of {item} {pron} has.", f"{x}*{m}=<<{x}*{m}={x * m}>>{x * m}."
    d = rng.choice([d for d in (2, 3, 4) if x % d == 0])
    sentence = f"{he} splits the {item} into {d} equal groups and keeps only one group."
    return x // d, sentence, f"One of {d} equal groups: {x}/{d}=<<{x}/{d}={x // d}>>{x // d}."


def make_problem(seed: int, split: str, steps: int, index: int) -> Example:
    """Problem ``index`` of ``split``: a deterministic function of its arguments."""
    rng = random.Random(f"arith-{seed}-{split}-{steps}-{index}")
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    pron = PRONOUN[name]
    x = rng.randint(3, 60)
    sentences, lines = [f"{name} has {x} {item}."], [f"{name} starts with {x} {item}."]
    for _ in range(steps):
        x, sentence, line = _step(rng, x, pron, item)
        sentences.append(sentence)
        lines.append(line)
    question = " ".join(sentences) + f" How many {item} does {name} have now?"
    solution = "\n".join(lines) + f"\n#### {x}"
    return Example(f"arith-s{steps}-{split}-{index}", question, str(x), solution, {"steps": steps, "seed": seed})


class Arith(Task):
    """Options: ``steps`` (difficulty, 1-10), ``seed``, ``train_size``/``validation_size``/``test_size`` (rows per
    split; each split is its own generator stream)."""

    name = "arith"
    formats = FORMATS

    def __init__(
        self, steps: int = 2, seed: int = 0, train_size: int = 5000, test_size: int = 500, validation_size: int = 500
    ):
        steps, seed, train_size, test_size = int(steps), int(seed), int(train_size), int(test_size)
        validation_size = int(validation_size)
        if not 1 <= steps <= 10:
            raise UserInputError(f"arith: steps={steps} must be in [1, 10]")
        if train_size < 8 or test_size < 1 or validation_size < 1:
            raise UserInputError(
                "arith: train_size must be >= 8 (few-shot exemplars), test_size and validation_size >= 1"
            )
        self.steps, self.seed = steps, seed
        self.sizes = {"train": train_size, "validation": validation_size, "test": test_size}

    def load(self, split: str, limit: int | None = None) -> list[Example]:
        if split not in self.sizes:
            raise UserInputError(f"arith: unknown split {split!r}; splits: {', '.join(self.sizes)}")
        n = self.sizes[split] if limit is None else min(limit, self.sizes[split])
        return [make_problem(self.seed, split, self.steps, i) for i in range(n)]

    def build_prompt(self, example: Example, fmt: PromptFormat) -> Prompt:
        if fmt.chat:
            return chat_prompt(example.question)
        shots = self.load("train", limit=fmt.shots)
        if fmt.strict == "answer_is":
            return cot_prompt(example.question, [(s.question, to_cot(s.solution, s.answer)) for s in shots])
        return qa_prompt(example.question, shots)
