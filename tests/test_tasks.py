"""Tasks: GSM8K loading, prompt formats, extraction/scoring on the real answers, arith, registry."""

from __future__ import annotations

import ast
import math
import operator
import re
import statistics

import pytest

from dynsdpb_selfplay.errors import UserInputError
from dynsdpb_selfplay.evaluate import mean_ci95, wilson_interval
from dynsdpb_selfplay.tasks import GSM8K, Arith, Example, Task, get_task, register_task, score_response
from dynsdpb_selfplay.tasks.gsm8k import gold_answer
from dynsdpb_selfplay.tasks.scoring import extract, is_correct, lmeval_exact_match


@pytest.fixture(scope="module")
def gsm8k(gsm8k_data):
    return GSM8K(gsm8k_data)


def test_gsm8k_loads_official_splits(gsm8k):
    test, train, validation = gsm8k.load("test"), gsm8k.load("train"), gsm8k.load("validation")
    # The official training file's last 500 rows are the validation split that selects rounds; train is the rest.
    assert (len(test), len(train), len(validation)) == (1319, 6973, 500)
    assert validation[0].id == "gsm8k-train-6973" and validation[-1].id == "gsm8k-train-7472"
    assert not {e.id for e in train} & {e.id for e in validation}
    assert gsm8k.load("validation", limit=3) == validation[:3]
    assert len({e.id for e in test}) == 1319
    assert [e.id for e in test[:2]] == ["gsm8k-test-0", "gsm8k-test-1"] and test[-1].id == "gsm8k-test-1318"
    assert gsm8k.load("test", limit=5) == test[:5]
    assert all(re.fullmatch(r"-?[0-9.]+", e.answer) for e in test + train)


def test_every_test_answer_extracts_to_its_gold(gsm8k):
    """Strict and flexible extraction of each reference solution give its gold value, and it verifies as correct."""
    failures = []
    for ex in gsm8k.load("test"):
        s = score_response(ex.solution, ex.answer)
        if s.strict.replace(",", "") != ex.answer or not (s.strict_correct and s.flexible_correct):
            failures.append((ex.id, s))
        if not lmeval_exact_match(s.strict, ex.solution):
            failures.append((ex.id, "lm-eval exact match"))
    assert failures == []


def test_wrong_and_missing_answers_are_wrong(gsm8k):
    ex = gsm8k.load("test", limit=1)[0]  # gold 18
    assert not score_response("#### 19", ex.answer).strict_correct
    for response in ["", "   ", "I don't know.", "#### ", "#### eighteen"]:
        s = score_response(response, ex.answer)
        assert s.strict is None and not s.strict_correct and not s.flexible_correct
    s = score_response("She makes $18 a day. ", ex.answer)
    assert (s.strict, s.flexible, s.strict_correct, s.flexible_correct) == (None, "$18", False, True)
    s = score_response("So 9 * 2 = 18. The answer is 18.", ex.answer, strict="answer_is")
    assert s.strict == "18" and s.strict_correct


def test_extraction_follows_lmeval_rules():
    assert extract("#### 1,000 and #### 2", r"#### (\-?[0-9\.\,]+)") == "1,000"  # strict: first match
    assert extract("1 then 22 then 333.", r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1) == "333."  # flexible: last
    assert extract("only 7", r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1) == "7"
    assert is_correct("18.00", "18") and not lmeval_exact_match("18.00", "18")  # value vs string equality
    assert is_correct("1,000", "1000") and is_correct("-3", "-3") and not is_correct("3", "-3")


def test_gold_answer():
    assert gold_answer("so 5\n#### 1,234") == "1234"
    assert gold_answer("no final line") is None


def test_prompt_formats(gsm8k):
    ex = gsm8k.load("test", limit=1)[0]
    chat = gsm8k.build_prompt(ex, gsm8k.get_format(shots=0))
    assert chat[0]["role"] == "user" and ex.question in chat[0]["content"] and "####" in chat[0]["content"]
    five = gsm8k.build_prompt(ex, gsm8k.get_format(shots=5))
    assert five.count("Question: ") == 6 and five.endswith(f"Question: {ex.question}\nAnswer:")
    assert gsm8k.load("train", limit=1)[0].solution in five
    cot = gsm8k.build_prompt(ex, gsm8k.get_format(shots=8))
    assert cot.count("\nA: ") == 8 and cot.count("The answer is") == 8 and cot.endswith(f"Q: {ex.question}\nA:")
    assert {f.id for f in gsm8k.formats.values()} == {
        "chat-0shot@v1",
        "lmeval-gsm8k-5shot@v1",
        "lmeval-gsm8k-cot-8shot@v1",
    }
    assert gsm8k.get_format(name="lmeval-gsm8k-5shot@v1").shots == 5
    with pytest.raises(UserInputError, match="shots"):
        gsm8k.get_format(shots=3)


def test_gsm8k_ids_are_row_indices_whatever_blank_lines_the_file_has(tmp_path):
    row = '{"question": "q%d", "answer": "#### %d"}\n'
    (tmp_path / "test.jsonl").write_text("\n" + row % (0, 0) + "\n\n" + row % (1, 1))
    loaded = [(e.id, e.question) for e in GSM8K(tmp_path).load("test")]
    assert loaded == [("gsm8k-test-0", "q0"), ("gsm8k-test-1", "q1")]


def test_gsm8k_dir_from_environment(gsm8k_data, monkeypatch):
    monkeypatch.setenv("DYNSDPB_GSM8K_DIR", str(gsm8k_data))
    assert len(get_task("gsm8k").load("test", limit=3)) == 3


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _calc(expr: str) -> float:
    def walk(node):
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        assert isinstance(node, ast.Constant)
        return node.value

    return walk(ast.parse(expr, mode="eval").body)


@pytest.mark.parametrize("steps", [1, 3, 6])
def test_arith_answers_are_exact(steps):
    """Every calculator note is right, the chain ends at the gold answer, and values stay non-negative integers."""
    task = Arith(steps=steps, seed=3)
    for ex in task.load("test", limit=200):
        notes = re.findall(r"<<([^=>]+)=([^>]+)>>", ex.solution)
        assert len(notes) >= steps
        for expr, result in notes:
            value = _calc(expr)
            assert value == int(result) and value >= 0 and float(value).is_integer()
        assert notes[-1][1] == ex.answer == gold_answer(ex.solution)
        assert len(re.findall(r"[.?]", ex.question)) >= steps + 2  # start, one sentence per step, the question


def test_arith_is_deterministic_and_seeded():
    a = Arith(steps=3, seed=0).load("test", limit=50)
    assert a == Arith(steps=3, seed=0).load("test", limit=50)
    assert Arith(steps=3, seed=0).load("test", limit=10) == a[:10]
    assert [e.question for e in Arith(steps=3, seed=1).load("test", limit=50)] != [e.question for e in a]
    train_questions = {e.question for e in Arith(steps=3, seed=0).load("train", limit=500)}
    assert not train_questions & {e.question for e in a}
    with pytest.raises(UserInputError):
        Arith(steps=0)


def test_arith_prompts_and_scoring():
    task = get_task("arith", steps="2")
    ex = task.load("test", limit=1)[0]
    for shots in (0, 5, 8):
        fmt = task.get_format(shots=shots)
        prompt = task.build_prompt(ex, fmt)
        assert ex.question in (prompt if isinstance(prompt, str) else prompt[0]["content"])
    cot = task.build_prompt(ex, task.get_format(shots=8))
    assert cot.count("The answer is") == 8 and "<<" not in cot
    assert task.score(ex.solution, ex, task.get_format(shots=0)).strict_correct
    assert task.score(f"The answer is {ex.answer}.", ex, task.get_format(shots=8)).strict_correct


class _Echo(Task):
    name = "echo"
    formats = Arith.formats

    def __init__(self, size: int = 3):
        self.size = int(size)

    def load(self, split, limit=None):
        return [Example(f"e{i}", f"Say {i}.", str(i)) for i in range(self.size)][:limit]

    def build_prompt(self, example, fmt):
        return example.question


def test_registry_user_tasks():
    register_task("echo-test", _Echo)
    assert len(get_task("echo-test", size=5).load("test")) == 5
    assert isinstance(get_task(f"{__name__}:_Echo"), _Echo)
    with pytest.raises(UserInputError, match="unknown task"):
        get_task("nope")
    with pytest.raises(UserInputError, match="rejects options"):
        get_task("echo-test", colour="red")
    with pytest.raises(ValueError, match="already registered"):
        register_task("echo-test", Arith)


def test_wilson_interval():
    lo, hi = wilson_interval(0, 100)
    assert lo == 0 and 0.03 < hi < 0.04
    lo, hi = wilson_interval(50, 100)
    assert 0.40 < lo < 0.41 and 0.59 < hi < 0.60


def test_mean_ci95_is_the_student_t_interval():
    mean, half = mean_ci95([0.1, 0.2, 0.3])  # stdev 0.1, t(0.975, 2) = 4.30265
    assert mean == pytest.approx(0.2) and half == pytest.approx(4.30265 * 0.1 / math.sqrt(3), rel=1e-5)
    mean, half = mean_ci95([1.0, 3.0])  # stdev sqrt(2), t(0.975, 1) = 12.7062
    assert mean == 2.0 and half == pytest.approx(12.7062 * math.sqrt(2) / math.sqrt(2), rel=1e-5)
    values = [float(v) for v in range(12)]  # 11 degrees of freedom: t(0.975, 11) = 2.20099, not a table's 10 (2.228)
    assert mean_ci95(values)[1] == pytest.approx(2.20099 * statistics.stdev(values) / math.sqrt(12), rel=1e-5)
    assert math.isnan(mean_ci95([0.5])[1])
    with pytest.raises(ValueError):
        mean_ci95([])
