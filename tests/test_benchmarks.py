"""The benchmark scripts end to end on the tiny model: bench_gsm8k's arms train what they claim (steps, distillation
term), are scored, survive a rerun, and its pipeline pair runs; bad configs name the file and key."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml
from helpers import REPO, save_tiny_model
from helpers import round_config as run_config

TESTS = Path(__file__).parent
BENCH = REPO / "benchmarks"
if str(REPO) not in sys.path:  # the benchmarks package, as `python -m pytest` from the repository root has it
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("bench-model") / "m"))


def bench(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_gsm8k", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
    )


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
        "training": {
            "learning_rate": 1e-3,
            "per_device_train_batch_size": 4,
            "max_length": 512,
            "save_steps": 2,
            "bf16": False,
        },
        "distillation": {"distillation_alpha": 1.0, "distillation_temperature": 2.0},
        "tasks": [
            {
                "name": "arith",
                "options": {"steps": 1},
                "format": "chat-0shot",
                "train_limit": 8,
                "eval_limit": 4,
                "max_new_tokens": 8,
            }
        ],
        "pipeline": {"config": str(tmp_path / "pipeline.yaml"), "trainers": ["sft", "dynsdpb"]},
    }
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
    assert summary["repeat"]["mean_ce"]["mean"] > 0 and summary["sft"]["mean_ce"]["mean"] > 0
    assert "flexible_minus_sft_2x" in summary["sft"] and "flexible_minus_sft" not in summary["sft"]
    assert "flexible_minus_repeat" in summary["static"] and "flexible_minus_repeat" not in summary["repeat"]
    assert result["machine"]["cpus"] and result["versions"]["torch"]
    records = (tmp_path / "work" / "arith" / "dynamic-seed1.eval.jsonl").read_text().splitlines()
    assert len(records) == 4 and not (tmp_path / "work" / "arith" / "dynamic-seed1").exists()
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
        ({"tasks": [{"name": "arith"}, {"name": "arith"}]}, r"bench\.yaml: tasks: two tasks have the same label"),
        ({"training": {"learning_rate": -1}}, r"bench\.yaml \(task arith, arm sft\): training\.learning_rate"),
        ({"distillation": {"distillation_alpah": 1}}, r"arm static\): training\.distillation_alpah: not a field"),
        (
            {"distillation": {"alpha": 1}},
            r"bench\.yaml: distillation: alpha: write the DynSDPBConfig field, "
            r"distillation_alpha",
        ),
    ],
)
def test_bench_gsm8k_config_errors_name_the_file_and_key(tmp_path, change, match, capsys):
    """In this process (the command line's exit code and message: the test below)."""
    from benchmarks import bench_gsm8k

    cfg = {"model": "tiny", "arms": ["sft", "static"], "tasks": [{"name": "arith", "train_limit": 8}], **change}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert bench_gsm8k.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_gsm8k: error:") and re.search(match, err), err
    assert not (tmp_path / "runs").exists()


def test_bench_gsm8k_config_error_exits_2_with_the_message(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({"model": "tiny", "colour": "red", "tasks": [{"name": "arith"}]}))
    proc = bench(["--config", str(path)])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("bench_gsm8k: error:") and "bench.yaml: colour: unknown key" in proc.stderr


def test_generation_bench_alternates_layers_and_computes_ratios():
    from benchmarks.bench_generation import measure_pair, summarize

    calls = []

    def layer(name):
        return lambda engine, group, sampling: calls.append((name, tuple(group))) or 10 * len(group)

    # 5 prompts at batch 2: groups [0,1], [2,3], [4] and [4] again, so each layer goes first twice.
    totals = measure_pair(layer("raw"), layer("engine"), None, list(range(5)), 2, None)
    assert [name for name, _ in calls] == ["raw", "engine", "engine", "raw"] * 2
    assert [g for name, g in calls if name == "raw"] == [(0, 1), (2, 3), (4,), (4,)]
    assert totals["raw"][0] == totals["engine"][0] == 60 and totals["raw"][1] > 0

    def rows(backend, raw_tps, engine_tps):
        return {
            "backend": backend,
            "engine_start_s": 20.0 if backend == "vllm" else 0.5,
            "rows": [
                {"format": "chat-0shot", "batch": 8, "n": 1, "layer": "raw", "tokens_per_s": raw_tps},
                {"format": "chat-0shot", "batch": 8, "n": 1, "layer": "engine", "tokens_per_s": engine_tps},
            ],
        }

    summary = summarize([{**rows("vllm", 400.0, 380.0), "update_weights_s": 0.25}, rows("hf", 200.0, 190.0)])
    (ratio,) = summary["ratios"]
    assert ratio["vllm_over_hf"] == pytest.approx(2.0) and ratio["vllm_layer_share"] == pytest.approx(0.95)
    assert ratio["hf_layer_share"] == pytest.approx(0.95) and summary["vllm_new_engine_over_update"] == 80.0


def test_step_bench_counts_the_flops_of_the_model_it_builds():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmarks.bench_step import MODELS, matmul_peak_gflops, model_flops_per_step

    shape = MODELS["smollm2-135m-shape"]
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=True))
    n = sum(p.numel() for p in model.parameters())  # 134.5 M; the formula leaves out the norms' 35 k
    attention = 30 * 576 * 256
    for lora, (dense, attn) in ((False, (6, 12)), (True, (4, 8))):
        args = types.SimpleNamespace(model="smollm2-135m-shape", batch=4, seq_len=256, lora=lora)
        expected = 4 * 256 * (dense * n + attn * attention)
        assert model_flops_per_step(args) == pytest.approx(expected, rel=5e-4)
    assert matmul_peak_gflops("float32", size=128, seconds=0.3) > 0


def test_bench_step_qwen_shape_is_qwen25_05b():
    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks.bench_step import model_config, model_flops_per_step

    config = model_config("qwen2.5-0.5b-shape")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.model.layers[0].self_attn.head_dim == 64
    n = sum(p.numel() for p in model.parameters())
    assert n == 494_032_768  # Qwen2.5-0.5B's parameter count (tied embeddings counted once)
    args = types.SimpleNamespace(model="qwen2.5-0.5b-shape", batch=1, seq_len=128, lora=False)
    assert model_flops_per_step(args) == pytest.approx(128 * (6 * n + 12 * 24 * 896 * 128), rel=5e-4)


@pytest.mark.parametrize("name", ["gsm8k_cpu.yaml", "gsm8k_gpu.yaml", "arith_lr1e-3_cpu.yaml"])
def test_shipped_bench_configs_are_valid(name):
    """Every run the shipped configurations describe passes the run-config validation (no model is loaded)."""
    from benchmarks.bench_gsm8k import ARMS, Gsm8kStudy, run_config
    from benchmarks.harness import load_study

    path = BENCH / "configs" / name
    bench = load_study(Gsm8kStudy, str(path))
    assert len(bench.seeds) >= 3 and set(bench.arms) == set(ARMS)
    for task in bench.tasks:
        for arm in bench.arms:
            cfg = run_config(bench, task, arm, bench.seeds[0], str(path))
            assert cfg.training.trainer == ARMS[arm][0]
            assert cfg.training.args["per_device_train_batch_size"] == bench.training["per_device_train_batch_size"]
    assert bench.pipeline is None or (REPO / bench.pipeline.config).is_file()


def test_summary_pairs_each_arm_with_a_baseline_run_of_the_same_seed():
    """Paired differences are taken seed by seed (hand-computed: diffs 3.0, 8.0, 5.5 points; mean 5.5, sd 2.5,
    t(0.975, 2) = 4.303, so 4.303 * 2.5 / sqrt(3) = 6.211 points); a seed without a baseline run is left out (but
    counts in the arm's own mean: 52.375, sd 25.34, 3.182 * 25.34 / 2 = 40.3 points)."""
    from benchmarks.gsm8k_summary import markdown, summarize

    flexible = {"repeat": [0.320, 0.355, 0.355], "static": [0.350, 0.435, 0.410, 0.9]}
    runs = [
        {"task": "t", "arm": arm, "seed": seed, "strict_accuracy": acc, "flexible_accuracy": acc}
        for arm, accs in flexible.items()
        for seed, acc in enumerate(accs)
    ]
    static = summarize(runs)["t"]["static"]
    assert static["seeds"] == 4 and static["flexible_accuracy"]["mean"] == pytest.approx(0.52375)
    assert static["flexible_minus_repeat"]["mean"] == pytest.approx(0.055)
    assert static["flexible_minus_repeat"]["ci95"] == pytest.approx(0.06211, abs=1e-5)
    assert "flexible_minus_sft" not in static
    assert "| static | 4 | 52.4 ± 40.3 | 52.4 ± 40.3 | - | - | 5.5 ± 6.2 |" in markdown(summarize(runs))


@pytest.mark.parametrize("sig", ["TERM", "KILL"])
def test_a_killed_benchmark_lets_its_child_close_its_engine(tmp_path, sig):
    """``kill`` of a benchmark reaches its child (a pipeline run, a generation measurement) as SIGTERM, so the
    child's ``finally`` blocks run and its vLLM engine closes; ``subprocess.run`` would SIGKILL the child instead.
    ``kill -9`` (or the OOM killer) cannot be passed on: the watchdog of engines/lifetime.py sends the SIGTERM."""
    ready, closed = tmp_path / "ready", tmp_path / "closed"
    child = tmp_path / "child.py"
    child.write_text(
        "import pathlib, time\n"
        "from dynsdpb_selfplay.signals import sigterm_unwinds\n"
        "with sigterm_unwinds():\n"
        "    try:\n"
        f"        pathlib.Path({str(ready)!r}).touch()\n"
        "        time.sleep(120)\n"
        "    finally:  # where a benchmark closes its engine\n"
        f"        pathlib.Path({str(closed)!r}).touch()\n"
    )
    parent = tmp_path / "parent.py"
    parent.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from benchmarks.common import run_child\n"
        "from dynsdpb_selfplay.signals import sigterm_unwinds\n"
        "with sigterm_unwinds():\n"
        f"    run_child([sys.executable, {str(child)!r}])\n"
    )
    proc = subprocess.Popen([sys.executable, str(parent)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.exists(), "the child never started"
    proc.send_signal(getattr(signal, f"SIG{sig}"))  # to the benchmark only, as `kill [-9] PID` does
    stderr = proc.communicate(timeout=60)[1].decode()  # ends once the child (holding the pipe too) has ended
    assert closed.exists(), "the child was not let clean up"
    if sig == "TERM":
        assert proc.returncode != 0 and "Terminated" in stderr
    else:
        assert proc.returncode == -signal.SIGKILL and "stopped the 1 process(es)" in stderr


def test_gpu_check_script_runs_its_kernel_checks_small_on_cpu():
    # scripts/gpu_check.py is meant for a CUDA machine; its checks run here small (--device cpu), so a broken check
    # is found before device time is spent on it.
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("gpu_check", BENCH.parent / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    rows = gpu_check.kernel_checks(torch.device("cpu"), small=True)
    assert len(rows) == 8 and all(r["ok"] for r in rows)
    assert all(r["fused_vs_naive"]["loss"] < 1e-3 for r in rows)
    assert gpu_check.unmet_requirements(("trl",)) == []
    assert gpu_check.unmet_requirements(("no-such-package-here",)) == ["no-such-package-here: not installed"]


def test_self_training_study_arms_differ_only_where_they_say(tmp_path):
    """The shipped self-training study builds a valid run config for each arm (no model is loaded): the study's
    overrides and the seed reach it; the SFT arms differ from the DynSDPB arm only in the trainer, the distillation
    fields SFTConfig refuses, and (sft_2_epochs) the epochs; a baseline must be an arm."""
    from benchmarks.bench_self_training import SelfTrainingStudy, pipeline_config
    from benchmarks.harness import load_study
    from dynsdpb_selfplay.errors import UserInputError
    from dynsdpb_selfplay.rounds.config import from_dict

    path = BENCH / "configs" / "self_training_cpu.yaml"
    study = load_study(SelfTrainingStudy, str(path))
    assert set(study.arms) == {"sft", "sft_2_epochs", "dynsdpb"} and study.baselines == ["sft", "sft_2_epochs"]
    built = {arm: pipeline_config(study, arm, 7) for arm in study.arms}
    for arm, cfg in built.items():
        run = from_dict(cfg, source=arm)
        assert run.training.trainer == arm.split("_")[0] and run.seed == 7 and run.rounds == 3
        assert run.training.accumulate_data is True
    dyn = built["dynsdpb"]["training"]
    dropped = {k for k in dyn if k not in built["sft"]["training"]}
    assert dropped and all(k.startswith("distillation_") for k in dropped)
    for arm, epochs in (("sft", 1), ("sft_2_epochs", 2)):
        sft = built[arm]["training"]
        assert {k: v for k, v in dyn.items() if k not in dropped | {"trainer", "num_train_epochs"}} == {
            k: v for k, v in sft.items() if k not in {"trainer", "num_train_epochs"}
        }
        assert sft["num_train_epochs"] == epochs and dyn["num_train_epochs"] == 1
    bad = tmp_path / "bad_study.yaml"
    bad.write_text(path.read_text().replace("baselines: [sft, sft_2_epochs]", "baselines: [sft, plain]"))
    with pytest.raises(UserInputError, match=r"bad_study.yaml: baselines: 'plain' is not an arm"):
        load_study(SelfTrainingStudy, str(bad))


def test_child_runs_fail_naming_the_run_and_how_to_go_on():
    """The child runner of the benchmark scripts: what failed, and how to go on."""
    from benchmarks.common import run_or_raise
    from dynsdpb_selfplay.errors import UserInputError

    run_or_raise([sys.executable, "-c", "pass"], "run a")
    with pytest.raises(UserInputError, match=r"^run b exited with 3 \(output above; the same command resumes it\)"):
        run_or_raise([sys.executable, "-c", "raise SystemExit(3)"], "run b")
    kill = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    with pytest.raises(UserInputError, match=r"^run c was killed by SIGKILL"):
        run_or_raise([sys.executable, "-c", kill], "run c")


def test_a_study_writes_its_json_table_and_figure_beside_each_other_or_nothing(tmp_path):
    """common.save_study: <out>.json with the machine recorded, <stem>.md, <stem>.png (drawn by the caller)."""
    from benchmarks.common import save_study

    drawn = []
    save_study({"benchmark": "x", "runs": [1]}, None, "| table |", drawn.append)
    assert drawn == [] and list(tmp_path.iterdir()) == []
    out = tmp_path / "results" / "study.json"
    save_study({"benchmark": "x", "runs": [1]}, str(out), "| table |\n", drawn.append)
    result = json.loads(out.read_text())
    assert result["benchmark"] == "x" and result["runs"] == [1] and "cpu" in result["machine"]
    assert (tmp_path / "results" / "study.md").read_text() == "| table |\n"
    assert drawn == [str(tmp_path / "results" / "study.png")]


def test_a_pipeline_run_is_started_resumed_or_read_back_and_a_failure_names_it(tmp_path, tiny, monkeypatch):
    """The pipeline runs of bench_gsm8k and bench_self_training (common.run_pipeline): a new run writes its config
    beside its folder and runs to its report; a finished one is read back without a child; one cut short resumes."""
    from benchmarks.bench_rounds import rounds_summary
    from benchmarks.common import run_pipeline
    from dynsdpb_selfplay.errors import UserInputError

    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    built = []

    def config(model=tiny):
        built.append(model)
        return run_config(model, rounds=1)

    run_dir = tmp_path / "sft-seed0"
    state = run_pipeline(run_dir, config, "sft seed 0", "test")
    assert "report" in state["done"] and built == [tiny]
    assert yaml.safe_load((tmp_path / "sft-seed0.yaml").read_text())["model"] == tiny
    rounds = rounds_summary(state["info"])
    assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["steps"] == 4 and rounds[1]["train_rows"] > 0
    assert all(0 <= r["flexible_accuracy"] <= 1 for r in rounds) and rounds[1]["time"]["wall_s"] > 0
    # The study keeps each round's test answers beside its result JSON, and they agree with the round's accuracy.
    from benchmarks.bench_self_training import save_samples
    from benchmarks.samples import read_samples

    saved = save_samples(run_dir, rounds, tmp_path / "result.samples", "sft_seed0")
    rows = read_samples(saved)
    for r in rounds:
        mine = [x for x in rows if x["epoch"] == r["round"]]
        assert len(mine) == r["n_samples"] and all(x["split"] == "test" for x in mine)
        assert sum(x["flexible"] for x in mine) / len(mine) == pytest.approx(r["flexible_accuracy"])
    mtime = (run_dir / "state.json").stat().st_mtime_ns
    assert run_pipeline(run_dir, config, "sft seed 0", "test") == state and built == [tiny]  # read back
    assert (run_dir / "state.json").stat().st_mtime_ns == mtime
    cut = {**state, "done": [p for p in state["done"] if p != "report"]}
    (run_dir / "state.json").write_text(json.dumps(cut))
    resumed = run_pipeline(run_dir, config, "sft seed 0", "test")
    assert "report" in resumed["done"] and built == [tiny]  # resumed from its folder, not rebuilt
    with pytest.raises(UserInputError, match=r"^bad seed 0: pipeline run .*bad-seed0 exited with \d+"):
        run_pipeline(tmp_path / "bad-seed0", lambda: config(str(tmp_path / "no-model")), "bad seed 0", "test")


def test_demo_robustness_keeps_the_runs_it_does_not_redo_from_the_same_kind_of_processor(tmp_path):
    from benchmarks.bench_demo_robustness import previous_runs

    cpu = {"capability": "AVX512", "native_bf16": True, "amx_bf16": True, "model": "Xeon"}
    out = tmp_path / "robust.json"
    assert previous_runs(str(out), cpu, set()) == ([], [])
    runs = [{"format": f, "seed": s, "wall_s": 1.0} for f, s in (("auto", 0), ("auto", 1), ("fp32", 0))]
    config = {"auto": {"seeds": [0, 1], "formats": ["auto"]}, "fp32": {"seeds": [0], "formats": ["fp32"]}}
    out.write_text(
        json.dumps({"benchmark": "demo_robustness", "config": config, "runs": runs, "machine": {"cpu": cpu}})
    )
    kept, invocations = previous_runs(str(out), cpu, {("fp32", 0), ("fp32", 2)})
    assert [(r["format"], r["seed"]) for r in kept] == [("auto", 0), ("auto", 1)]
    assert invocations == [config["auto"], config["fp32"]]
    avx2 = {**cpu, "capability": "AVX2", "native_bf16": False, "amx_bf16": False}
    with pytest.raises(SystemExit, match=r"robust\.json: measured on another processor \(capability=AVX512"):
        previous_runs(str(out), avx2, set())
    out.write_text(json.dumps({"benchmark": "regimes", "runs": []}))
    with pytest.raises(SystemExit, match=r"robust\.json: not a demo_robustness result"):
        previous_runs(str(out), cpu, set())
