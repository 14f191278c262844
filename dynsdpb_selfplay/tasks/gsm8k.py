"""GSM8K (Cobbe et al., 2021): grade-school math word problems with a final ``#### N`` answer.

Data: the official ``train.jsonl``/``test.jsonl`` (fields ``question``, ``answer``) from a local directory given as
``data_dir`` or the environment variable ``DYNSDPB_GSM8K_DIR``; otherwise ``openai/gsm8k`` from the hub (online only).
The gold answer is the text after ``####`` with thousands separators removed, as lm-eval's exact match sees it.

GSM8K has no validation split; ``validation`` is the last ``validation_size`` rows (500) of the official training
file, and ``train`` the rows before them, so choosing among rounds never looks at the test split and never at a
question the rounds train on.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserInputError
from ..jsonl import read_jsonl_lines
from .base import Example, Prompt, PromptFormat, Task
from .prompts import FORMATS, chat_prompt, cot_prompt, qa_prompt

__all__ = ["COT_EXEMPLARS", "GSM8K", "gold_answer"]

ENV_DIR = "DYNSDPB_GSM8K_DIR"
SPLITS = ("train", "validation", "test")

# lm-evaluation-harness tasks/gsm8k/gsm8k-cot.yaml (Wei et al., 2022), verbatim.
COT_EXEMPLARS = [
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
        "there will be 21 trees. How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
        "been 21 - 15 = 6. The answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
        "they had 74 - 35 = 39. The answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
        "Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
        "The answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have "
        "now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
        "The answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each day, from monday to "
        "thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 "
        "computers were added. 9 + 20 is 29. The answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
        "balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, "
        "he had 35 - 2 = 33 golf balls. The answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
        "left. 23 - 15 is 8. The answer is 8.",
    ),
]


def gold_answer(solution: str) -> str | None:
    """The final answer of a GSM8K solution: the text after the last ``####``, commas removed; None if absent."""
    if "####" not in solution:
        return None
    answer = solution.split("####")[-1].strip().replace(",", "")
    return answer or None


class GSM8K(Task):
    name = "gsm8k"
    formats = FORMATS

    def __init__(self, data_dir: str | os.PathLike | None = None, validation_size: int = 500):
        self.data_dir = data_dir if data_dir is not None else os.environ.get(ENV_DIR)
        self.validation_size = int(validation_size)
        if self.validation_size < 1:
            raise UserInputError(f"gsm8k: validation_size={validation_size} must be >= 1")
        self._cache: dict[str, list[Example]] = {}

    def _rows(self, split: str) -> list[tuple[str, dict]]:
        """``(where, row)`` pairs; ``where`` names the row's file and line (or the hub dataset and row) in messages."""
        if self.data_dir:
            path = Path(self.data_dir) / f"{split}.jsonl"
            if not path.is_file():
                raise UserInputError(f"GSM8K data file not found: {path} (set --data-dir or ${ENV_DIR})")
            rows = read_jsonl_lines(path, ("question", "answer"))
            if not rows:
                raise UserInputError(f"{path}: no examples (the file is empty)")
            return [(f"{path}:{line}", row) for line, row in rows]
        if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
            raise UserInputError(
                f"GSM8K: no local data and the hub is offline; point --data-dir or ${ENV_DIR} at a folder with "
                "train.jsonl and test.jsonl"
            )
        from datasets import load_dataset

        try:
            data = load_dataset("openai/gsm8k", "main", split=split)
        except Exception as e:  # the hub client raises many kinds; all mean "no data"
            raise UserInputError(f"GSM8K: cannot load openai/gsm8k from the hub ({e}); set ${ENV_DIR}") from e
        return [(f"openai/gsm8k {split} row {i}", row) for i, row in enumerate(data)]

    def load(self, split: str, limit: int | None = None) -> list[Example]:
        if split not in SPLITS:
            raise UserInputError(f"gsm8k: unknown split {split!r}; splits: {', '.join(SPLITS)}")
        source = "test" if split == "test" else "train"
        if source not in self._cache:
            examples = []
            for i, (where, row) in enumerate(self._rows(source)):
                gold = gold_answer(row["answer"])
                if gold is None:
                    raise UserInputError(f"{where}: the answer has no final '#### <number>'")
                examples.append(Example(f"gsm8k-{source}-{i}", row["question"], gold, row["answer"]))
            self._cache[source] = examples
        examples = self._cache[source]
        if split != "test":
            if len(examples) <= self.validation_size:
                raise UserInputError(
                    f"gsm8k: {len(examples)} training rows leave none beside validation_size={self.validation_size}"
                )
            cut = len(examples) - self.validation_size
            examples = examples[:cut] if split == "train" else examples[cut:]
        return examples if limit is None else examples[:limit]

    def build_prompt(self, example: Example, fmt: PromptFormat) -> Prompt:
        if fmt.name == "chat-0shot":
            return chat_prompt(example.question)
        if fmt.name == "lmeval-gsm8k-5shot":
            return qa_prompt(example.question, self.load("train", limit=fmt.shots))
        if fmt.name == "lmeval-gsm8k-cot-8shot":
            return cot_prompt(example.question, COT_EXEMPLARS[: fmt.shots])
        raise UserInputError(f"gsm8k: unsupported prompt format {fmt.id}")
