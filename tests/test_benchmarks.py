"""The benchmark scripts end to end on the tiny model: bench_gsm8k's arms train what they claim (steps, distillation
term), are scored, survive a rerun, and its pipeline pair runs; bad configs name the file and key."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, save_tiny_model
from test_rounds import config as run_config

TESTS = Path(__file__).parent
BENCH = REPO / "benchmarks"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("bench-model") / "m"))


def bench(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS), **(env or {})}
    return subprocess.run([sys.executable, str(BENCH / "bench_gsm8k.py"), *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=900)  # fmt: skip


def test_bench_gsm8k_arms_pipelines_and_rerun(tmp_path, tiny):
    pipeline = run_config(tiny, rounds=1)
    pipeline["training"] = {**pipeline["training"], "max_steps": -1, "num_train_epochs": 1}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    cfg = {
        "model": tiny,
        "seeds": [0, 1],
        "arms": ["sft", "sft_2x", "repeat", "static", "dynamic"],
        "work_dir": str(tmp_path / "work"),
        "engine": {"backend": "hf", "dtype": "float32"},
        "training": {"learning_rate": 1e-3, "per_device_train_batch_size": 4, "max_length": 512, "save_steps": 2,
                     "bf16": False},
        "distillation": {"alpha": 1.0, "temperature": 2.0},
        "tasks": [{"name": "arith", "options": {"steps": 1}, "format": "chat-0shot", "train_limit": 8,
                   "eval_limit": 4, "max_new_tokens": 8}],
        "pipeline": {"config": str(tmp_path / "pipeline.yaml"), "trainers": ["sft", "dynsdpb"]},
    }  # fmt: skip
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "result.json"
    proc = bench(["--config", str(path), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    runs = {(r["arm"], r["seed"]): r for r in result["runs"]}
    assert set(runs) == {("base", 0)} | {(a, s) for a in cfg["arms"] for s in (0, 1)}
    for (arm, _), r in runs.items():
        assert r["n_samples"] == 4 and 0 <= r["flexible_accuracy"] <= 1
        if arm == "base":
            continue
        # 8 solutions, 4 rows a step: plain SFT 2 steps an epoch; DynSDPB 2 fresh rows a step, so 4 (= sft_2x).
        assert r["steps"] == {"sft": 2}.get(arm, 4)
        assert r["curve"]["step"] == list(range(1, r["steps"] + 1))
    for seed in (0, 1):
        repeat = runs[("repeat", seed)]  # alpha = 0: overlapping batches, nothing stored, nothing distilled
        assert set(repeat["curve"]["distilled"]) == {0} and repeat["mean_kd"] is None
        static, dynamic = runs[("static", seed)], runs[("dynamic", seed)]
        assert static["mean_alpha"] == pytest.approx(1.0) and static["mean_tau"] == pytest.approx(2.0)
        assert static["mean_kl"] > 0 and static["mean_kd"] == pytest.approx(static["mean_kl"] * 4.0, rel=1e-4)
        assert 0 < dynamic["mean_alpha"] < 1 and dynamic["kd_over_ce"] > 0
        assert "mean_kd" not in runs[("sft", seed)] or runs[("sft", seed)]["mean_kd"] is None
    summary = result["summary"]["arith"]
    assert summary["dynamic"]["seeds"] == 2 and "flexible_minus_sft" in summary["dynamic"]
    assert "flexible_minus_sft_2x" in summary["sft"] and "flexible_minus_sft" not in summary["sft"]
    assert result["machine"]["cpus"] and result["versions"]["torch"]
    assert out.with_suffix(".png").stat().st_size > 1000 and "| dynamic | 2 |" in out.with_suffix(".md").read_text()
    # The pipeline pair: same config but the trainer; DynSDPB takes twice the steps of the same rows.
    pipes = {p["trainer"]: p for p in result["pipelines"]}
    assert set(pipes) == {"sft", "dynsdpb"}
    for p in pipes.values():
        assert [r["round"] for r in p["rounds"]] == [0, 1] and p["rounds"][1]["time"]["wall_s"] > 0
    assert pipes["dynsdpb"]["rounds"][1]["steps"] > pipes["sft"]["rounds"][1]["steps"]
    # A rerun keeps every finished run and pipeline and trains nothing.
    lines = (tmp_path / "work" / "runs.jsonl").read_text()
    proc = bench(["--config", str(path), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "work" / "runs.jsonl").read_text() == lines and "training on" not in proc.stdout
    assert json.loads(out.read_text())["summary"] == result["summary"]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"colour": "red"}, r"bench\.yaml: colour: unknown key"),
        ({"arms": ["sft", "distill"]}, r"bench\.yaml: arms: unknown arm 'distill'"),
        ({"tasks": []}, r"bench\.yaml: tasks: give at least one task"),
        ({"training": {"learning_rate": -1}}, r"bench\.yaml \(task arith, arm sft\): training\.learning_rate"),
        ({"distillation": {"alpah": 1}}, r"arm static\): training\.distillation\.alpah: unknown key"),
    ],
)
def test_bench_gsm8k_config_errors_name_the_file_and_key(tmp_path, change, match):
    cfg = {"model": "tiny", "arms": ["sft", "static"], "tasks": [{"name": "arith", "train_limit": 8}], **change}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = bench(["--config", str(path)])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("bench_gsm8k: error:")
    assert re.search(match, proc.stderr), proc.stderr
