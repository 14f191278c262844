"""From generated records to a training set: verify, pseudo-label, deduplicate, cap; and the phase statistics.

Training rows are TRL prompt/completion rows (``prompt`` a message list or a string, ``completion`` the assistant
turn), with an ``id`` that is unique and stable: ``<question id>-<sample>-<source>``.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

__all__ = ["filter_self_correction", "filter_self_training"]


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _completion(prompt, text: str):
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def filter_self_training(
    records: list[dict], verify: str, max_per_question: int, labels: str = "gold", min_agreement: float = 0.6
) -> tuple[list[dict], dict]:
    """Keep verified (or majority-agreeing) solutions, at most ``max_per_question`` distinct ones per question."""
    by_question: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_question[r["id"]].append(r)
    rows, stats = [], Counter(questions=len(by_question), samples=len(records))
    for qid, group in by_question.items():
        if labels == "majority":
            answers = [r["flexible_answer"] for r in group if r["source"] == "sample" and r["flexible_answer"]]
            top, count = Counter(answers).most_common(1)[0] if answers else (None, 0)
            samples = sum(r["source"] == "sample" for r in group)
            if top is None or count / max(samples, 1) < min_agreement:
                stats["below_agreement"] += 1
                continue
            good = [r for r in group if r["flexible_answer"] == top]
            stats["pseudo_labelled_correct"] += sum(r[f"{verify}_correct"] for r in good)
        else:
            good = [r for r in group if r[f"{verify}_correct"]]
        stats["correct_samples"] += len(good)
        seen, kept = set(), 0
        for r in good:
            key = _normalize(r["response"])
            if not key:
                continue
            if key in seen:
                stats["duplicates"] += 1
                continue
            if kept == max_per_question:
                stats["over_cap"] += 1
                continue
            seen.add(key)
            kept += 1
            stats[f"kept_{r['source']}"] += 1
            rows.append({"id": f"{qid}-{r['sample']}-{r['source']}", "prompt": r["prompt"],
                         "completion": _completion(r["prompt"], r["response"])})  # fmt: skip
        stats["questions_kept"] += kept > 0
    stats["rows"] = len(rows)
    return rows, dict(stats)


def transitions(records: list[dict]) -> dict:
    """Counts and rates of right/wrong before and after the review turn."""
    c = Counter((r["first_correct"], r["revised_correct"]) for r in records)
    n = max(len(records), 1)
    return {
        "samples": len(records),
        "first_accuracy": (c[(True, True)] + c[(True, False)]) / n,
        "revised_accuracy": (c[(True, True)] + c[(False, True)]) / n,
        "wrong_to_right": c[(False, True)] / n,
        "right_to_wrong": c[(True, False)] / n,
        "right_to_right": c[(True, True)] / n,
        "wrong_to_wrong": c[(False, False)] / n,
    }


def filter_self_correction(records: list[dict], instruction: str, keep_right_to_right: bool) -> tuple[list[dict], dict]:
    """Keep wrong-to-right (and optionally right-to-right) trajectories; never right-to-wrong. The loss falls on
    the revision: the first answer and the review request are part of the prompt."""
    from .generation import correction_turns

    rows, seen = [], set()
    for r in records:
        if not r["revised_correct"] or (r["first_correct"] and not keep_right_to_right):
            continue
        key = (r["id"], _normalize(r["first"]), _normalize(r["revision"]))
        if key in seen or not key[2]:
            continue
        seen.add(key)
        prompt = correction_turns(r["prompt"], r["first"], instruction)
        rows.append({"id": f"{r['id']}-{r['sample']}-correction", "prompt": prompt,
                     "completion": _completion(prompt, r["revision"])})  # fmt: skip
    stats = transitions(records)
    stats["rows"] = len(rows)
    stats["questions_kept"] = len({row["id"].rsplit("-", 2)[0] for row in rows})
    return rows, stats
