"""From generated records to a training set: verify, pseudo-label, deduplicate, cap; and the phase statistics.

Training rows are TRL prompt/completion rows (``prompt`` a message list or a string, ``completion`` the assistant
turn), with an ``id`` that is unique and stable: ``<question id>-<sample>-<source>``.

A generation that hit ``max_new_tokens`` (``finish_reason`` ``"length"``) is never a training row, whatever its
last number says: TRL appends EOS to the completion, so the model would learn to stop mid-sentence. Such samples are
counted as ``truncated`` (``truncated_correct``: those that verified anyway, which earlier versions kept).

Every filter also returns one *verdict* per record (``"kept"`` or why not), in record order, for the report.

A kept row states its answer the way the prompt asked (:class:`AnswerLines`): a solution verified by its last number
(``verify: flexible``) rarely ends with the ``#### N`` line, and training on such rows teaches the model to drop it,
round after round, until strict accuracy is gone. With ``filtering.answer_line: append`` (default) the canonical line
for the verified answer is written under a solution that has none; ``require`` keeps only solutions that have it;
``as_is`` keeps them unchanged. A solution whose answer line states another answer than the verified one is never
kept (``wrong_answer_line``).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from ..tasks.prompts import correction_turns

__all__ = [
    "ANSWER_LINE_RULES",
    "AnswerLines",
    "filter_self_correction",
    "filter_self_training",
    "pass_rates",
    "solved",
    "transitions",
    "truncated",
]

ANSWER_LINE_RULES = ("append", "require", "as_is")


@dataclass(frozen=True)
class AnswerLines:
    """How kept rows state their answer (module docstring). ``line(answer)`` is the canonical answer line,
    ``stated(response)`` the answer a response's own line states (None: no line), ``same(a, b)`` whether two answers
    are equal (the task's verifier)."""

    rule: str
    line: Callable[[str], str]
    stated: Callable[[str], str | None]
    same: Callable[[str, str], bool]

    def __post_init__(self):
        if self.rule not in ANSWER_LINE_RULES:
            raise ValueError(f"answer_line: {self.rule!r} is not one of {ANSWER_LINE_RULES}")

    def fix(self, response: str, answer: str) -> tuple[str | None, str]:
        """``(text to train on, how)``: ``how`` is ``present``, ``appended`` or ``as_is``; or ``(None, why not)``
        with ``wrong_answer_line`` or ``no_answer_line``."""
        stated = self.stated(response)
        if stated is not None:
            return (response, "present") if self.same(stated, answer) else (None, "wrong_answer_line")
        if self.rule == "require":
            return None, "no_answer_line"
        if self.rule == "append":
            return f"{response.rstrip()}\n{self.line(answer)}", "appended"
        return response, "as_is"


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _completion(prompt, text: str):
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def truncated(record: dict, key: str = "finish_reason") -> bool:
    """Whether the generation under ``key`` stopped at ``max_new_tokens`` (records without the key never did)."""
    return record.get(key) == "length"


def solved(record: dict, verify: str) -> bool:
    """A self-training sample that counts as a solution: it verifies and was not cut at ``max_new_tokens``."""
    return bool(record[f"{verify}_correct"]) and not truncated(record)


def pass_rates(records: list[dict], verify: str) -> dict[str, dict]:
    """Per question, in first-seen order: ``samples`` (sampled attempts; hinted retries are not), ``verified`` (those
    that are solutions, see :func:`solved`; for self-correction records the first attempt) and ``pass_rate``."""
    out: dict[str, dict] = {}
    for r in records:
        entry = out.setdefault(r["id"], {"id": r["id"], "samples": 0, "verified": 0})
        if "first" in r:  # self-correction: the first attempt is the model's own solution
            ok = r["first_correct"] and not truncated(r, "first_finish_reason")
        elif r["source"] == "sample":
            ok = solved(r, verify)
        else:
            continue
        entry["samples"] += 1
        entry["verified"] += bool(ok)
    for entry in out.values():
        entry["pass_rate"] = entry["verified"] / entry["samples"] if entry["samples"] else 0.0
    return out


def _pass_rate_verdict(rate: float, min_pass_rate: float, max_pass_rate: float) -> str | None:
    if rate > max_pass_rate:
        return "above_max_pass_rate"  # solved (nearly) every time: nothing left to learn
    if rate < min_pass_rate:
        return "below_min_pass_rate"
    return None


def filter_self_training(
    records: list[dict],
    verify: str,
    max_per_question: int,
    labels: str = "gold",
    min_agreement: float = 0.6,
    min_pass_rate: float = 0.0,
    max_pass_rate: float = 1.0,
    answer_lines: AnswerLines | None = None,
) -> tuple[list[dict], dict, list[str]]:
    """Keep verified (or majority-agreeing) solutions, at most ``max_per_question`` distinct ones per question, of
    the questions whose pass rate is within ``[min_pass_rate, max_pass_rate]``; never a truncated one; each stating
    its answer as ``answer_lines`` says (None: as generated).

    With ``labels="majority"`` a truncated sample does not vote (it has no final answer) but counts in the agreement's
    denominator. Returns ``(rows, stats, verdicts)``."""
    by_question: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_question[r["id"]].append(i)
    rates = pass_rates(records, verify)
    verdicts = [""] * len(records)
    rows, stats, kept_tokens = [], Counter(questions=len(by_question), samples=len(records)), []
    stats.update(above_max_pass_rate=0, below_min_pass_rate=0, truncated=sum(truncated(r) for r in records))
    stats["truncated_correct"] = sum(truncated(r) and bool(r[f"{verify}_correct"]) for r in records)
    for qid, idx in by_question.items():
        group = [records[i] for i in idx]
        dropped = _pass_rate_verdict(rates[qid]["pass_rate"], min_pass_rate, max_pass_rate)
        if dropped:
            stats[dropped] += 1
            for i in idx:
                verdicts[i] = dropped
            continue
        if labels == "majority":
            answers = [
                r["flexible_answer"]
                for r in group
                if r["source"] == "sample" and r["flexible_answer"] and not truncated(r)
            ]
            top, count = Counter(answers).most_common(1)[0] if answers else (None, 0)
            samples = sum(r["source"] == "sample" for r in group)
            if top is None or count / max(samples, 1) < min_agreement:
                stats["below_agreement"] += 1
                for i in idx:
                    verdicts[i] = "below_agreement"
                continue
            good = {i for i in idx if records[i]["flexible_answer"] == top and not truncated(records[i])}
            stats["pseudo_labelled_correct"] += sum(records[i][f"{verify}_correct"] for i in good)
            answer = top
        else:
            good = {i for i in idx if solved(records[i], verify)}
            answer = group[0]["gold"]
        stats["correct_samples"] += len(good)
        seen, kept = set(), 0
        for i in idx:
            r = records[i]
            if i not in good:
                verdicts[i] = "truncated" if truncated(r) else "wrong"
                continue
            key = _normalize(r["response"])
            text, how = (r["response"], "as_is") if answer_lines is None else answer_lines.fix(r["response"], answer)
            if not key:
                verdicts[i] = "empty"
            elif text is None:
                verdicts[i] = how
            elif key in seen:
                verdicts[i] = "duplicate"
            elif kept == max_per_question:
                verdicts[i] = "over_cap"
            else:
                verdicts[i] = "kept"
                seen.add(key)
                kept += 1
                stats[f"kept_{r['source']}"] += 1
                stats[f"answer_line_{how}"] += 1
                kept_tokens.append(r.get("tokens", 0))
                rows.append(
                    {
                        "id": f"{qid}-{r['sample']}-{r['source']}",
                        "prompt": r["prompt"],
                        "completion": _completion(r["prompt"], text),
                    }
                )
        stats["questions_kept"] += kept > 0
    for name in ("duplicate", "over_cap", "wrong_answer_line", "no_answer_line"):
        stats[name + ("s" if name == "duplicate" else "")] += sum(v == name for v in verdicts)
    stats["rows"] = len(rows)
    stats["kept_tokens_mean"] = sum(kept_tokens) / len(kept_tokens) if kept_tokens else None
    return rows, dict(stats), verdicts


_WORD = {False: "wrong", True: "right"}


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
        "counts": {f"{_WORD[a]}_to_{_WORD[b]}": c[(a, b)] for a in (False, True) for b in (False, True)},
    }


def filter_self_correction(
    records: list[dict],
    instruction: str,
    keep_right_to_right: bool,
    min_pass_rate: float = 0.0,
    max_pass_rate: float = 1.0,
    answer_lines: AnswerLines | None = None,
) -> tuple[list[dict], dict, list[str]]:
    """Keep wrong-to-right (and optionally right-to-right) trajectories; never right-to-wrong, never a revision cut
    at ``max_new_tokens``; each revision stating its answer as ``answer_lines`` says (None: as generated). The loss
    falls on the revision: the first answer and the review request are part of the prompt. The pass-rate bounds apply
    to the first attempts. Returns ``(rows, stats, verdicts)``."""
    rates = pass_rates(records, verify="")
    rows, seen, verdicts, hows, kept_tokens = [], set(), [], Counter(), []
    for r in records:
        verdict = _pass_rate_verdict(rates[r["id"]]["pass_rate"], min_pass_rate, max_pass_rate)
        key = (r["id"], _normalize(r["first"]), _normalize(r["revision"]))
        text, how = (r["revision"], "as_is") if answer_lines is None else answer_lines.fix(r["revision"], r["gold"])
        if verdict:
            pass
        elif truncated(r, "revision_finish_reason"):
            verdict = "truncated"
        elif not r["revised_correct"]:
            verdict = "wrong"
        elif r["first_correct"] and not keep_right_to_right:
            verdict = "right_to_right"
        elif not key[2]:
            verdict = "empty"
        elif text is None:
            verdict = how
        elif key in seen:
            verdict = "duplicate"
        else:
            verdict = "kept"
            seen.add(key)
            hows[f"answer_line_{how}"] += 1
            kept_tokens.append(r.get("revision_tokens", r.get("tokens", 0)))
            prompt = correction_turns(r["prompt"], r["first"], instruction)
            rows.append(
                {"id": f"{r['id']}-{r['sample']}-correction", "prompt": prompt, "completion": _completion(prompt, text)}
            )
        verdicts.append(verdict)
    stats = transitions(records)
    counts = Counter(verdicts)
    stats.update(
        questions=len(rates),
        truncated=sum(truncated(r, "revision_finish_reason") for r in records),
        duplicates=counts["duplicate"],
        wrong_answer_line=counts["wrong_answer_line"],
        no_answer_line=counts["no_answer_line"],
        rows=len(rows),
        **hows,
        kept_tokens_mean=sum(kept_tokens) / len(kept_tokens) if kept_tokens else None,
    )
    for name in ("above_max_pass_rate", "below_min_pass_rate"):
        stats[name] = len({r["id"] for r, v in zip(records, verdicts, strict=True) if v == name})
    stats["questions_kept"] = len({row["id"].rsplit("-", 2)[0] for row in rows})
    return rows, stats, verdicts
