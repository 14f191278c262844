"""``dynsdpb eval`` and ``dynsdpb models`` end to end on the tiny model (hf backend), and their error messages."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from dynsdpb_selfplay.cli import main


def _eval(*args) -> list[str]:
    return ["eval", "--backend", "hf", "--dtype", "float32", "--max-new-tokens", "8", *args]


def test_eval_writes_records_and_summary(tiny_model_dirs, tmp_path, capsys):
    out = tmp_path / "run.jsonl"
    argv = _eval("--model", str(tiny_model_dirs[0]), "--task", "arith", "--task-arg", "steps=2", "--limit", "6")
    assert main([*argv, "--shots", "5", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "strict" in printed and "flexible" in printed and "tokens/s" in printed and "95% CI" in printed
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6 and len({r["id"] for r in records}) == 6
    for r in records:
        assert {"prompt", "output", "strict_answer", "flexible_answer", "gold", "strict_correct"} <= r.keys()
        assert r["prompt"].count("Question: ") == 6 and 0 < r["output_tokens"] <= 8
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["n_samples"] == 6 and summary["format"] == "lmeval-gsm8k-5shot@v1"
    assert summary["strict_correct"] == sum(r["strict_correct"] for r in records)
    assert summary["strict_no_answer"] == sum(r["strict_answer"] is None for r in records)


def test_eval_gsm8k_chat_with_sampling(tiny_model_dirs, gsm8k_data, tmp_path):
    out = tmp_path / "g.jsonl"
    argv = _eval("--model", str(tiny_model_dirs[0]), "--data-dir", str(gsm8k_data), "--limit", "2", "--n", "2")
    assert main([*argv, "--temperature", "1.0", "--output", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["sample"]) for r in records] == [("gsm8k-test-0", 0), ("gsm8k-test-0", 1)] + [
        ("gsm8k-test-1", 0),
        ("gsm8k-test-1", 1),
    ]
    assert records[0]["gold"] == "18" and "<|user|>" in records[0]["prompt"]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no_data", "test.jsonl"),
        ("bad_line", r"test.jsonl:2: malformed JSON"),
        ("no_weights", "has no weights"),
        ("pickle_weights", "pickle"),
        ("no_model", "not found"),
        ("bad_task_arg", "KEY=VALUE"),
        ("n_greedy", "greedy"),
    ],
)
def test_eval_errors_are_one_clear_line(case, expected, tiny_model_dirs, tmp_path, capsys):
    model, data = str(tiny_model_dirs[0]), tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": \n')
    args = {
        "no_data": ["--model", model, "--data-dir", str(tmp_path / "missing")],
        "bad_line": ["--model", model, "--data-dir", str(data)],
        "no_model": ["--model", str(tmp_path / "nope"), "--task", "arith"],
        "bad_task_arg": ["--model", model, "--task", "arith", "--task-arg", "steps"],
        "n_greedy": ["--model", model, "--task", "arith", "--n", "3"],
    }.get(case)
    if case in ("no_weights", "pickle_weights"):
        broken = tmp_path / "broken"
        shutil.copytree(tiny_model_dirs[0], broken)
        for f in broken.glob("*.safetensors"):
            f.unlink()
        if case == "pickle_weights":
            (broken / "pytorch_model.bin").write_bytes(b"not loaded")
        args = ["--model", str(broken), "--task", "arith"]
    assert main(_eval(*args)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dynsdpb eval: error:") and len(err.splitlines()) == 1
    assert re.search(expected, err), err


def test_models_list_and_unknown(capsys):
    assert main(["models", "list"]) == 0
    assert "smollm2-135m-instruct" in capsys.readouterr().out
    assert main(["models", "prepare", "gpt-17"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_uncached_hub_id_offline_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(_eval("--model", "nobody-here/not-a-model", "--task", "arith")) == 2
    assert "not in the local cache" in capsys.readouterr().err
