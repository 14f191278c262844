"""What a round keeps, and how it spends its generation budget: truncation, pass rates and their filters, adaptive
sampling, and what the report shows. Fast: records are built by hand and generation runs on a scripted engine."""

from __future__ import annotations

import json

from dynsdpb_selfplay.engines.base import Completion, Engine, Generation, SamplingConfig
from dynsdpb_selfplay.rounds.filtering import filter_self_correction, filter_self_training, pass_rates
from dynsdpb_selfplay.rounds.generation import Adaptive, run_program, self_training_records
from dynsdpb_selfplay.rounds.showcase import pick_examples, round_section
from dynsdpb_selfplay.tasks.base import Example, PromptFormat, Task
from dynsdpb_selfplay.tasks.scoring import Score


def sample(qid: str, k: int, text: str, correct: bool, finish: str = "stop", source: str = "sample") -> dict:
    answer = "7" if correct else "1"
    return {
        "id": qid,
        "sample": k,
        "source": source,
        "gold": "7",
        "prompt": [{"role": "user", "content": qid}],
        "response": text,
        "finish_reason": finish,
        "strict_answer": answer,
        "flexible_answer": answer,
        "strict_correct": correct,
        "flexible_correct": correct,
    }


def test_a_truncated_generation_is_never_a_training_row():
    records = [
        sample("q1", 0, "so 3 + 4 = 7", True, finish="length"),  # right number, cut mid-sentence
        sample("q1", 1, "3 + 4 = 7. #### 7", True),
        sample("q2", 0, "the answer is 7", True, finish="length"),
        sample("q2", 1, "it is 1", False, finish="length"),
    ]
    rows, stats, verdicts = filter_self_training(records, "flexible", max_per_question=4)
    assert [r["id"] for r in rows] == ["q1-1-sample"]
    assert verdicts == ["truncated", "kept", "truncated", "truncated"]
    assert stats["truncated"] == 3 and stats["truncated_correct"] == 2 and stats["correct_samples"] == 1
    assert stats["questions_kept"] == 1
    # Majority labels: a cut sample does not vote, so two cut "7"s cannot outvote one finished "1".
    rows, stats, _ = filter_self_training(
        [sample("q", 0, "7", True, "length"), sample("q", 1, "x 7", True, "length"), sample("q", 2, "1", False)],
        "flexible",
        4,
        labels="majority",
        min_agreement=0.3,
    )
    assert [r["completion"][0]["content"] for r in rows] == ["1"]


def correction(qid: str, k: int, first_ok: bool, revised_ok: bool, finish: str = "stop", text: str = "") -> dict:
    return {
        "id": qid,
        "sample": k,
        "gold": "7",
        "prompt": [{"role": "user", "content": qid}],
        "first": f"a{k}",
        "revision": text or f"revised {k}",
        "first_correct": first_ok,
        "revised_correct": revised_ok,
        "first_answer": None,
        "revised_answer": None,
        "first_finish_reason": "stop",
        "revision_finish_reason": finish,
    }


def test_a_truncated_revision_is_never_a_training_row():
    records = [
        correction("q1", 0, False, True, finish="length"),
        correction("q1", 1, False, True),
        correction("q2", 0, True, False),
    ]
    rows, stats, verdicts = filter_self_correction(records, "review", keep_right_to_right=True)
    assert [r["id"] for r in rows] == ["q1-1-correction"]
    assert verdicts == ["truncated", "kept", "wrong"] and stats["truncated"] == 1
    assert stats["counts"] == {"wrong_to_wrong": 0, "wrong_to_right": 2, "right_to_wrong": 1, "right_to_right": 0}


def test_pass_rates_and_the_difficulty_filter():
    records = [sample("easy", k, f"7 {k}", True) for k in range(4)]
    records += [
        sample("mid", 0, "7", True),
        sample("mid", 1, "7 cut", True, "length"),
        sample("mid", 2, "1", False),
        sample("mid", 3, "7 again", True),
        sample("hard", 0, "1", False),
        sample("hard", 1, "2", False),
        sample("hard", 0, "hinted 7", True, source="rationalized"),
    ]
    rates = pass_rates(records, "flexible")
    assert {q: (e["verified"], e["samples"]) for q, e in rates.items()} == {
        "easy": (4, 4),
        "mid": (2, 4),
        "hard": (0, 2),
    }
    assert rates["mid"]["pass_rate"] == 0.5
    rows, stats, verdicts = filter_self_training(records, "flexible", 4, max_pass_rate=0.99)
    assert {r["id"].split("-")[0] for r in rows} == {"mid", "hard"}  # solved every time: nothing to learn
    assert stats["above_max_pass_rate"] == 1 and verdicts[:4] == ["above_max_pass_rate"] * 4
    rows, stats, _ = filter_self_training(records, "flexible", 4, min_pass_rate=0.25)
    assert {r["id"].split("-")[0] for r in rows} == {"easy", "mid"} and stats["below_min_pass_rate"] == 1
    rows, _, _ = filter_self_training(records, "flexible", 4)
    assert {r["id"].split("-")[0] for r in rows} == {"easy", "mid", "hard"}


class Scripted(Engine):
    """Completions chosen by the prompt: a question ``qN`` is solved with probability N/4 per sample (by seed and
    sample index), every completion is 10 tokens; it records each request's prompts and ``n``."""

    def __init__(self):
        self.requests = []

    def encode(self, prompt):
        return [int(prompt[-1]["content"][1:])]

    def generate_ids(self, prompt_ids, sampling, lora_path=None):
        self.requests.append(([p[0] for p in prompt_ids], sampling.n, sampling.seed))
        out = []
        for (q,) in prompt_ids:
            texts = ["right" if (sampling.seed * 7 + k * 3 + q) % 4 < q else "wrong" for k in range(sampling.n)]
            out.append(Generation([q], [Completion(t, [0] * 10, "stop") for t in texts]))
        return out

    def update_weights(self, checkpoint_dir):
        pass

    def close(self):
        pass


class NumberTask(Task):
    name = "numbers"
    formats = {"chat": PromptFormat("chat", 1, 0, True, "hashes")}

    def load(self, split, limit=None):
        return []

    def build_prompt(self, example, fmt):
        return [{"role": "user", "content": example.question}]

    def score(self, response, example, fmt):
        ok = response == "right"
        return Score(strict=response, flexible=response, strict_correct=ok, flexible_correct=ok)


def test_adaptive_sampling_spends_the_budget_on_unsolved_questions():
    task, fmt = NumberTask(), NumberTask.formats["chat"]
    chunk = [Example(f"x{i}", f"q{q}", "right") for i, q in enumerate((4, 4, 4, 0, 2, 1))]  # three always solved
    sampling = SamplingConfig(n=4, temperature=1.0)
    engine = Scripted()
    records = run_program(engine, self_training_records(task, fmt, sampling, False, "strict", Adaptive(2, 8))(chunk, 5))
    first, second = engine.requests
    assert first == ([4, 4, 4, 0, 2, 1], 2, 5)
    open_questions = second[0]
    assert 4 not in open_questions and 0 in open_questions  # solved in both first samples: no more
    # The budget: 4 per question = 24 samples; 12 spent first, the other 12 over the open questions (cap 8 each).
    assert second[1] == min(8 - 2, 12 // len(open_questions)) and second[2] == 5 + 2
    assert len(records) <= 4 * len(chunk) and len(records) == 12 + second[1] * len(open_questions)
    per_question = {}
    for r in records:
        per_question.setdefault(r["id"], []).append(r["sample"])
    for q, samples in per_question.items():
        assert samples == list(range(len(samples))), q  # numbered on from the first pass, grouped by question
    # Uniform sampling at the same budget, for comparison: every question gets its 4.
    engine = Scripted()
    uniform = run_program(engine, self_training_records(task, fmt, sampling, False, "strict")(chunk, 5))
    assert engine.requests == [([4, 4, 4, 0, 2, 1], 4, 5)] and len(uniform) == 24


def test_examples_pick_kept_rejected_and_truncated():
    records = [
        sample("q1", 0, "7", True),
        sample("q1", 1, "a long way to 7", True),
        sample("q2", 0, "no", False),
        sample("q2", 1, "a long wrong way", False, "length"),
    ]
    _, _, verdicts = filter_self_training(records, "flexible", 4)
    picked = {e["kind"]: (e["id"], e["sample"], e["verdict"]) for e in pick_examples(records, verdicts)}
    assert picked == {
        "kept, shortest": ("q1", 0, "kept"),
        "kept, longest": ("q1", 1, "kept"),
        "rejected, shortest": ("q2", 0, "wrong"),
        "rejected, longest": ("q2", 1, "truncated"),
        "truncated": ("q2", 1, "truncated"),
    }


def test_round_section_shows_counts_histogram_examples_and_transitions(tmp_path):
    folder = tmp_path / "round_1"
    folder.mkdir()
    (folder / "pass_rates.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "pass_rate": i / 4}) + "\n" for i in range(5))
    )
    records = [correction("q1", 0, False, True), correction("q1", 1, True, True, "length", text="cut mid")]
    rows, stats, verdicts = filter_self_correction(records, "review", True)
    (folder / "examples.json").write_text(json.dumps(pick_examples(records, verdicts)))
    text = "\n".join(round_section(tmp_path, 1, "self_correction", stats))
    assert "| samples | correct | duplicates | over cap | truncated |" in text
    assert "| wrong | 0 | 0 |" not in text and "| wrong | 1 | 0 |" in text  # first wrong -> revised right: 1
    assert "| right | 1 | 0 |" in text
    assert "![round 1 pass rates](round_1/pass_rates.png)" in text
    assert (folder / "pass_rates.png").stat().st_size > 1000
    assert "*truncated*" in text and "cut mid" in text and "*kept, shortest*" in text


def _answer_lines(rule: str):
    from dynsdpb_selfplay.rounds.filtering import AnswerLines
    from dynsdpb_selfplay.tasks import get_task
    from dynsdpb_selfplay.tasks.scoring import is_correct

    task = get_task("arith", steps=1)
    fmt = task.get_format(name="chat-0shot")
    return AnswerLines(
        rule, line=lambda a: task.answer_line(a, fmt), stated=lambda t: task.stated_answer(t, fmt), same=is_correct
    )


def test_a_kept_row_always_carries_the_answer_line():
    """verify: flexible accepts a solution by its last number; the row it becomes ends with the #### line the prompt
    asked for (append), or is dropped (require); a line stating another answer is never a row."""
    records = [
        sample("q1", 0, "3 + 4 = 7", True),  # no line: the line is written under it
        sample("q1", 1, "3 + 4 = 7.\n#### 7", True),  # has it: kept as is
        sample("q2", 0, "#### 9\nso 3 + 4 = 7", True),  # its line says 9: never kept
        sample("q3", 0, "It is 7.  \n", True),
    ]
    rows, stats, verdicts = filter_self_training(records, "flexible", 4, answer_lines=_answer_lines("append"))
    texts = [r["completion"][0]["content"] for r in rows]
    assert texts == ["3 + 4 = 7\n#### 7", "3 + 4 = 7.\n#### 7", "It is 7.\n#### 7"]
    assert verdicts == ["kept", "kept", "wrong_answer_line", "kept"]
    assert (stats["answer_line_appended"], stats["answer_line_present"], stats["wrong_answer_line"]) == (2, 1, 1)
    assert stats["kept_tokens_mean"] == 0  # hand-built records carry no token counts
    rows, stats, verdicts = filter_self_training(records, "flexible", 4, answer_lines=_answer_lines("require"))
    assert [r["id"] for r in rows] == ["q1-1-sample"] and stats["no_answer_line"] == 2
    assert verdicts == ["no_answer_line", "kept", "wrong_answer_line", "no_answer_line"]
    rows, _, _ = filter_self_training(records, "flexible", 4, answer_lines=_answer_lines("as_is"))
    assert [r["completion"][0]["content"] for r in rows][0] == "3 + 4 = 7"
    # Majority labels: the line states the agreed answer, not the (unknown) gold one.
    votes = [sample("m", k, f"so it is {x}", x == "7") | {"flexible_answer": x} for k, x in enumerate("778")]
    rows, _, _ = filter_self_training(
        votes, "flexible", 4, labels="majority", min_agreement=0.5, answer_lines=_answer_lines("append")
    )
    assert [r["completion"][0]["content"] for r in rows] == ["so it is 7\n#### 7"]
    # Self-correction: the revision gets the line.
    fixes = [correction("c", 0, False, True, text="fixed: 7"), correction("c", 1, False, True, text="#### 8")]
    rows, stats, verdicts = filter_self_correction(fixes, "review", True, answer_lines=_answer_lines("append"))
    assert [r["completion"][-1]["content"] for r in rows] == ["fixed: 7\n#### 7"]
    assert verdicts == ["kept", "wrong_answer_line"] and stats["answer_line_appended"] == 1
