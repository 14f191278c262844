"""The NLU recipe's data, metrics and `dynsdpb classify` end to end on the real all-MiniLM-L6-v2 encoder."""

import json
import math

import pytest

from dynsdpb_selfplay.cli import main
from dynsdpb_selfplay.errors import UserInputError
from dynsdpb_selfplay.nlu.data import (
    encoder_path,
    load_files,
    metrics,
    split_by_group,
    steps_rows,
    verifier_rows,
)


def test_metrics_match_hand_computed_values():
    # Confusion matrix (rows = truth): [[TN=3, FP=1], [FN=2, TP=4]].
    labels = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    preds = [0, 0, 0, 1, 0, 0, 1, 1, 1, 1]
    m = metrics(preds, labels)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["mcc"] == pytest.approx((4 * 3 - 1 * 2) / math.sqrt(5 * 5 * 4 * 6))
    assert m["f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 2))
    assert metrics([1] * 4, [0, 1, 0, 1])["mcc"] == 0.0  # constant prediction: MCC defined as 0
    assert metrics([2, 1, 0], [2, 1, 0])["mcc"] == pytest.approx(1.0) and "f1" not in metrics([2], [2])


def test_local_files_name_the_bad_row(tmp_path):
    good = tmp_path / "ok.jsonl"
    good.write_text('{"sentence": "a", "y": 1}\n\n{"sentence": "b", "y": 0}\n')
    assert [r["label"] for r in load_files(str(good), text="sentence", label="y")] == [1, 0]
    csv = tmp_path / "ok.csv"
    csv.write_text("text,label\nhello,1\nworld,0\n")
    assert [r["text"] for r in load_files(str(csv))] == ["hello", "world"]
    cases = {
        "broken.jsonl": ('{"text": "a", "label": 1}\n{"text": "b", "lab', r"broken.jsonl:2: malformed JSON"),
        "float.jsonl": ('{"text": "a", "label": 0.5}\n', r"row 1: label=0.5 is not a class index"),
        "nocol.jsonl": ('{"text": "a"}\n', r"no column\(s\) \['label'\]"),
        "empty.jsonl": ("\n", r"no column|no rows"),
        "data.txt": ("x", r"expected a .csv, .jsonl or .json file"),
    }
    for name, (content, match) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(UserInputError, match=match):
            load_files(str(tmp_path / name))


def test_verifier_rows_come_from_run_generations_and_splits_keep_questions_together(tmp_path):
    gens = []
    for q in range(20):
        for s in range(3):
            prompt = [{"role": "system", "content": "sys"}, {"role": "user", "content": f"Question {q}?"}]
            gens.append(
                {
                    "id": f"q{q}",
                    "sample": s,
                    "prompt": prompt,
                    "response": f"answer {q}-{s % 2}",
                    "flexible_correct": s == 0,
                }
            )
    (tmp_path / "round_1").mkdir()
    (tmp_path / "round_1" / "generations.jsonl").write_text("\n".join(json.dumps(g) for g in gens))
    rows = verifier_rows([str(tmp_path)])
    assert len(rows) == 40  # samples 0 and 2 of a question are the same text: kept once
    assert rows[0] == {"text": "Question 0?", "text_pair": "answer 0-0", "label": 1, "group": "q0"}
    train, test = split_by_group(rows, 0.3)
    assert train and test and not {r["group"] for r in train} & {r["group"] for r in test}
    with pytest.raises(UserInputError, match="holds no round_"):
        verifier_rows([str(tmp_path / "round_1")])


def test_steps_rows_label_questions_by_their_reference_solution_length(gsm8k_data):
    rows = steps_rows("train", 400, data_dir=str(gsm8k_data))
    assert 0.35 < sum(r["label"] for r in rows) / len(rows) < 0.55
    first = rows[0]  # Natalia's clips: a two-line reference solution
    assert first["text"].startswith("Natalia sold clips") and first["label"] == 0 and first["group"] == "gsm8k-train-0"
    raw = [json.loads(line) for line in (gsm8k_data / "train.jsonl").read_text().splitlines()[:400]]
    for row, ref in zip(rows, raw, strict=True):
        lines = [x for x in ref["answer"].rpartition("####")[0].splitlines() if x.strip()]
        assert row["label"] == (len(lines) >= 4) and row["text"] == ref["question"]


@pytest.mark.real_model
def test_classify_compares_plain_and_dynsdpb_on_minilm_and_keeps_finished_runs(tmp_path, capsys):
    """The recipe end to end on the real encoder (offline package), 1 seed; a rerun skips what is done."""
    rows = [{"text": f"{'good' if i % 2 else 'bad'} movie number {i}", "label": i % 2} for i in range(24)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    argv = [
        "classify",
        "--model",
        "all-minilm-l6-v2",
        "--train_file",
        str(tmp_path / "train.jsonl"),
        "--eval_fraction",
        "0.25",
        "--seeds",
        "0",
        "--output_dir",
        str(out),
        "--use_cpu",
        "--report_to",
        "none",
        "--per_device_train_batch_size",
        "8",
        "--num_train_epochs",
        "1",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--max_seq_length",
        "32",
        "--distillation_schedule",
        "static",
        "--distillation_temperature",
        "2",
    ]
    assert main(argv) == 0
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["trainer"] for r in runs] == ["plain", "dynsdpb"]
    plain, dyn = runs
    assert dyn["steps"] == 2 * plain["steps"]  # each sample fresh once and repeated once per epoch
    assert plain["mean_kl"] is None and dyn["mean_kl"] > 0
    assert 0 <= dyn["accuracy"] <= 1 and plain["eval_rows"] == dyn["eval_rows"] > 0
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert set(summary) == {"plain", "dynsdpb"} and summary["dynsdpb"]["seeds"] == 1
    assert "| dynsdpb | 1 |" in (out / "summary.md").read_text()
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("done earlier, kept") == 2
    assert len((out / "runs.jsonl").read_text().splitlines()) == 2


def test_classify_errors_are_one_line(tmp_path, capsys):
    assert main(["classify", "--output_dir", str(tmp_path), "--use_cpu"]) == 2
    assert "give exactly one of task" in capsys.readouterr().err
    assert main(["classify", "--train_file", str(tmp_path / "missing.csv"), "--output_dir", str(tmp_path)]) == 2
    assert "missing.csv: no such file" in capsys.readouterr().err
    assert encoder_path("some/hub-id") == "some/hub-id"
