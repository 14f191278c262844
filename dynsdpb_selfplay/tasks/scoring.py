"""Answer extraction (lm-evaluation-harness conventions) and correctness (math-verify, numeric fallback).

Extraction reproduces lm-eval's ``regex`` filter + ``take_first`` exactly, with the patterns of its ``gsm8k`` and
``gsm8k_cot`` tasks: *strict* takes the first ``#### N`` (or ``The answer is N.``), *flexible* takes the last
number-like span. A response without a match extracts to ``None`` (lm-eval's ``"[invalid]"``) and counts as wrong.

Correctness differs from lm-eval on purpose: lm-eval compares strings after removing ``,``, ``$``, a ``#### ``
prefix and one trailing ``.``; we ask math-verify whether the values are equal (so ``18.00`` matches ``18``), and fall
back to comparing decimal numbers when math-verify cannot parse either side. ``lmeval_exact_match`` gives lm-eval's
verdict for comparison (tests/test_lmeval_agreement.py checks both on the same generations).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

__all__ = [
    "ANSWER_IS",
    "ANSWER_LINES",
    "FLEXIBLE",
    "HASHES",
    "Score",
    "extract",
    "is_correct",
    "lmeval_exact_match",
    "normalize_number",
    "score_response",
]

# lm-eval tasks/gsm8k/gsm8k.yaml and gsm8k-cot.yaml, filter_list.
HASHES = r"#### (\-?[0-9\.\,]+)"
ANSWER_IS = r"The answer is (\-?[0-9\.\,]+)."
FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
STRICT_PATTERNS = {"hashes": HASHES, "answer_is": ANSWER_IS}
# The answer line each strict pattern reads, as the prompt formats ask for it (what a training row should end with).
ANSWER_LINES = {"hashes": "#### {answer}", "answer_is": "The answer is {answer}."}
# lm-eval gsm8k metric_list: exact_match with these regexes_to_ignore and ignore_case.
_LMEVAL_IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]


def extract(text: str, pattern: str, group_select: int = 0) -> str | None:
    """lm-eval's ``RegexFilter`` on one response: the selected match (first non-empty group), stripped; or None."""
    matches = re.findall(pattern, text if isinstance(text, str) else "")
    if not matches:
        return None
    match = matches[group_select]
    if isinstance(match, tuple):
        groups = [m for m in match if m]
        if not groups:
            return None
        match = groups[0]
    return match.strip()


def normalize_number(text: str) -> str:
    """lm-eval's exact-match normalization: drop ``,`` and ``$``, a ``... #### `` prefix, a trailing ``.``; lower."""
    for pattern in _LMEVAL_IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def lmeval_exact_match(prediction: str | None, gold: str) -> bool:
    """What lm-eval's ``exact_match`` says (a missing prediction is its ``"[invalid]"`` string)."""
    return normalize_number("[invalid]" if prediction is None else prediction) == normalize_number(gold)


def _decimal(text: str) -> Decimal | None:
    try:
        return Decimal(normalize_number(text).strip())
    except InvalidOperation:
        return None


def is_correct(prediction: str | None, gold: str) -> bool:
    """True when ``prediction`` equals ``gold`` as a value (math-verify), or as a decimal number when it can't parse.

    math-verify enforces its time limits with signals, which only work in the main thread; elsewhere they are off.
    """
    if prediction is None or not prediction.strip():
        return False
    from math_verify import parse, verify

    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold_parsed = parse(gold, parsing_timeout=timeout)
    pred_parsed = parse(prediction, parsing_timeout=timeout)
    if gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=timeout):
        return True
    a, b = _decimal(prediction), _decimal(gold)
    return a is not None and b is not None and a == b


@dataclass(frozen=True)
class Score:
    """Both lm-eval extractions of one response and whether each is correct."""

    strict: str | None
    flexible: str | None
    strict_correct: bool
    flexible_correct: bool


def score_response(response: str, gold: str, strict: str = "hashes") -> Score:
    """Extract with the strict pattern named ``strict`` (``hashes`` or ``answer_is``) and the flexible one; verify."""
    if strict not in STRICT_PATTERNS:
        raise ValueError(f"strict={strict!r}: expected one of {sorted(STRICT_PATTERNS)}")
    strict_answer = extract(response, STRICT_PATTERNS[strict])
    flexible_answer = extract(response, FLEXIBLE, group_select=-1)
    return Score(
        strict=strict_answer,
        flexible=flexible_answer,
        strict_correct=is_correct(strict_answer, gold),
        flexible_correct=is_correct(flexible_answer, gold),
    )
