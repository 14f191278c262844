"""Our GSM8K scorer vs lm-evaluation-harness's own gsm8k / gsm8k_cot tasks on the same responses.

lm-eval reads a local task YAML that includes its stock YAML with the dataset pointed at the jsonl files (offline).
Extraction must be identical (ours ``None`` == lm-eval ``"[invalid]"``). Correctness may differ in one documented way
only: we compare values (math-verify), lm-eval compares strings, so e.g. ``18.0`` for gold ``18`` is right for us and
wrong for lm-eval.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from lmeval_helpers import lmeval_judgements, load_lmeval_task

from dynsdpb_selfplay.tasks import GSM8K
from dynsdpb_selfplay.tasks.scoring import normalize_number, score_response

STRICT = {"gsm8k": "hashes", "gsm8k_cot": "answer_is"}


def synthetic_responses(examples) -> list[tuple[int, str]]:
    """(example index, response) pairs covering the shapes model outputs take, right and wrong."""
    out = []
    for i, ex in enumerate(examples):
        body = ex.solution.split("####")[0].rstrip()
        n = ex.answer
        variants = [
            ex.solution,
            f"{body}\nThe answer is {n}.",
            f"{body}\n#### {int(Decimal(n)) + 1}",
            f"{body}\n#### {n}.0",
            f"So she has ${n}.",
            "",
            "I am not sure how to solve this.",
            body[: len(body) // 2],
            f"#### {int(Decimal(n)):,}" if Decimal(n) >= 1000 else f"#### -{n}",
            f"The answer is {n}. #### {n} Then 12 more.",
        ]
        out += [(i, v) for v in variants]
    return out


@pytest.fixture(scope="module")
def lmeval_tasks(gsm8k_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    return {stock: load_lmeval_task(stock, gsm8k_data, root) for stock in STRICT}


def compare(stock: str, task, docs, examples, pairs):
    """Returns the list of (response, ours, lm-eval) for every correctness difference; asserts extraction agrees."""
    judged = lmeval_judgements(task, [docs[i] for i, _ in pairs], [r for _, r in pairs])
    differences = []
    for (i, response), theirs in zip(pairs, judged, strict=True):
        ours = score_response(response, examples[i].answer, strict=STRICT[stock])
        for kind, name in (("strict", "strict-match"), ("flexible", "flexible-extract")):
            extracted, exact = theirs[name]
            mine = getattr(ours, kind)
            assert (mine if mine is not None else "[invalid]") == extracted, (stock, kind, response)
            if getattr(ours, f"{kind}_correct") != exact:
                differences.append((response, kind, mine, examples[i].answer, exact))
    return differences


@pytest.mark.parametrize("stock", ["gsm8k", "gsm8k_cot"])
def test_scorer_agrees_with_lmeval(stock, gsm8k_data, lmeval_tasks):
    examples = GSM8K(gsm8k_data).load("test", limit=150)
    task = lmeval_tasks[stock]
    docs = list(task.test_docs())[:150]
    assert [d["question"] for d in docs] == [e.question for e in examples]
    pairs = synthetic_responses(examples)
    differences = compare(stock, task, docs, examples, pairs)
    # Every difference is the explained one: equal values written differently, right for us, wrong for lm-eval.
    assert differences, "the test set should contain value-equal, string-different answers"
    for _response, _kind, mine, gold, exact in differences:
        assert not exact and Decimal(normalize_number(mine)) == Decimal(gold)


def test_cot_exemplars_are_lmevals(lmeval_tasks):
    from dynsdpb_selfplay.tasks.gsm8k import COT_EXEMPLARS

    samples = lmeval_tasks["gsm8k_cot"].config.fewshot_config.samples
    assert [(s["question"], s["target"]) for s in samples] == COT_EXEMPLARS
