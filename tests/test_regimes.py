"""The regime studies' statistics against hand-computed values, and bench_regimes end to end on the tiny model."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, save_tiny_model

if str(REPO) not in sys.path:  # the benchmarks package, as `python -m pytest` from the repository root has it
    sys.path.insert(0, str(REPO))

from benchmarks.regime_plots import markdown  # noqa: E402
from benchmarks.regime_stats import paired, paired_curve, pick, select_epoch, summarize_regime  # noqa: E402

TESTS = Path(__file__).parent


def run(arm, seed, test, val):
    return {
        "arm": arm,
        "seed": seed,
        "epochs": [
            {"epoch": i + 1, "test": {"acc": t}, "val": {"acc": v}}
            for i, (t, v) in enumerate(zip(test, val, strict=True))
        ],
    }


def test_select_epoch_takes_the_best_validation_value_and_the_earliest_on_ties():
    assert select_epoch([0.1, 0.4, 0.3]) == 1
    assert select_epoch([0.2, 0.5, 0.5, 0.1]) == 1
    assert select_epoch([0.7]) == 0
    with pytest.raises(ValueError):
        select_epoch([])


def test_pick_never_lets_the_test_split_choose():
    r = run("a", 0, test=[0.9, 0.1, 0.5], val=[0.2, 0.6, 0.4])
    assert pick(r, "acc", "final") == 0.5
    assert pick(r, "acc", "val") == 0.1  # epoch 2 wins on validation, whatever its test score
    with pytest.raises(ValueError):
        pick(r, "acc", "best")


def test_paired_differences_and_their_t_interval_by_hand():
    runs = [run("sft", s, [0.1, b], [0.0, 0.0]) for s, b in enumerate([0.30, 0.40, 0.35])]
    runs += [run("dyn", s, [0.2, b], [0.0, 0.0]) for s, b in enumerate([0.35, 0.42, 0.41])]
    runs.append(run("dyn", 9, [0.9, 0.9], [0.0, 0.0]))  # no sft run with seed 9: not paired
    d = paired(runs, "dyn", "sft", "acc", "final")
    # differences 0.05, 0.02, 0.06: mean 13/300, sd = sqrt(((0.05-m)^2 + (0.02-m)^2 + (0.06-m)^2) / 2)
    m = 0.13 / 3
    sd = (((0.05 - m) ** 2 + (0.02 - m) ** 2 + (0.06 - m) ** 2) / 2) ** 0.5
    assert d["n"] == 3 and d["wins"] == 3 and d["losses"] == 0
    # t(0.975, 2) = 4.30265, exact
    assert d["mean"] == pytest.approx(m) and d["ci95"] == pytest.approx(4.30265 * sd / 3**0.5, rel=1e-5)
    assert d["per_seed"] == pytest.approx([0.05, 0.02, 0.06])
    # Validation picks epoch 1 (ties go to the earliest): differences 0.1 each, zero spread.
    v = paired(runs, "dyn", "sft", "acc", "val")
    assert v["mean"] == pytest.approx(0.1) and v["ci95"] == pytest.approx(0.0, abs=1e-12)
    assert paired(runs, "dyn", "missing", "acc", "final") is None


def test_summary_curves_and_selected_epochs():
    runs = [run("sft", 0, [0.1, 0.3], [0.2, 0.1]), run("sft", 1, [0.3, 0.5], [0.1, 0.3])]
    runs += [run("dyn", 0, [0.2, 0.3], [0.1, 0.2]), run("dyn", 1, [0.3, 0.6], [0.4, 0.4])]
    s = summarize_regime(runs, "acc", ("sft",))
    assert [c["mean"] for c in s["sft"]["curve"]] == pytest.approx([0.2, 0.4])
    assert s["sft"]["selected_epochs"] == [1, 2] and s["dyn"]["selected_epochs"] == [2, 1]
    assert s["sft"]["val_selected"]["mean"] == pytest.approx((0.1 + 0.5) / 2)
    assert s["dyn"]["minus_sft_final"]["per_seed"] == pytest.approx([0.0, 0.1])
    assert s["dyn"]["minus_sft_val"]["per_seed"] == pytest.approx([0.3 - 0.1, 0.3 - 0.5])
    assert "minus_sft_final" not in s["sft"]
    # after each epoch: epoch 1 differences 0.1, 0.0 (mean 0.05); epoch 2 0.0, 0.1
    per_epoch = s["dyn"]["minus_sft_curve"]
    assert [e["per_seed"] for e in per_epoch] == [pytest.approx([0.1, 0.0]), pytest.approx([0.0, 0.1])]
    assert per_epoch[0]["mean"] == pytest.approx(0.05) and per_epoch[0]["wins"] == 1 and per_epoch[0]["losses"] == 0
    # two seeds: t(0.975, 1) = 12.706, sd of (0.1, 0.0) = sqrt(0.005)
    assert per_epoch[0]["ci95"] == pytest.approx(12.706 * 0.005**0.5 / 2**0.5, rel=1e-3)
    assert "minus_sft_curve" not in s["sft"]


def test_the_per_epoch_difference_stops_at_the_shorter_run_and_needs_a_common_seed():
    runs = [run("sft", 0, [0.1, 0.3, 0.4], [0, 0, 0]), run("dyn", 0, [0.2, 0.5], [0, 0])]
    assert [e["mean"] for e in paired_curve(runs, "dyn", "sft", "acc")] == pytest.approx([0.1, 0.2])
    assert paired_curve(runs + [run("x", 1, [0.1], [0])], "x", "sft", "acc") == []
    table = markdown(
        {"metric": "acc", "regimes": {"r": summarize_regime(runs, "acc", ("sft",))}}, {"baselines": ["sft"]}
    )
    assert "- dyn − sft, paired, after each epoch: 10.0 (1/1), 20.0 (1/1)" in table
    behind = [run("sft", 0, [0.3], [0]), run("dyn", 0, [0.2999], [0])]  # -0.01 points prints as 0.0, not -0.0
    table = markdown(
        {"metric": "acc", "regimes": {"r": summarize_regime(behind, "acc", ("sft",))}}, {"baselines": ["sft"]}
    )
    assert "after each epoch: 0.0 (0/1)" in table


def test_every_study_table_prints_a_t_summary_the_same_way():
    from benchmarks.common import pct

    assert pct({"mean": 0.35, "ci95": 0.127}) == "35.0 ± 12.7"
    assert pct({"mean": -0.0004, "ci95": float("nan")}) == "0.0"  # one seed: no interval, and no "-0.0"
    assert pct({"mean": -0.051, "ci95": 0.02}) == "-5.1 ± 2.0"
    assert pct(None) == "-"


def test_bench_regimes_end_to_end_and_rerun(tmp_path):
    tiny = str(save_tiny_model(tmp_path / "m"))
    cfg = {
        "model": tiny,
        "work_dir": str(tmp_path / "work"),
        "seeds": [0],
        "epochs": 2,
        "task": {"name": "arith", "options": {"steps": 1}, "format": "chat-0shot"},
        "data": {"pool": 40, "validation_start": 40, "validation": 3, "test": 4},
        "max_new_tokens": 6,
        "engine": {"backend": "hf", "dtype": "float32"},
        "training": {"per_device_train_batch_size": 4, "max_length": 512, "bf16": False},
        "regimes": [
            {"label": "full-8", "size": 8, "learning_rate": 1e-3},
            {
                "label": "lora-8",
                "size": 8,
                "learning_rate": 1e-3,
                "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]},
            },
            {"label": "broken", "size": 8, "learning_rate": 1e-3, "lora": {"target_modules": ["no_proj"]}},
        ],
        "arms": {
            "sft": {"trainer": "sft"},
            "dynamic": {"distillation": {"distillation_schedule": "dynamic", "distillation_progress": "linear"}},
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    cmd = [sys.executable, "-m", "benchmarks.bench_regimes", "--config", str(path), "--out", str(out)]
    # A study that dies in its third run (peft finds no module to adapt) keeps the two it finished in --out.
    proc = subprocess.run(
        [*cmd, "--regimes", "full-8", "broken"], capture_output=True, text=True, env=env, cwd=REPO, timeout=900
    )
    assert proc.returncode != 0 and "no_proj" in proc.stderr, proc.stderr[-3000:]
    kept = json.loads(out.read_text())
    assert sorted((r["regime"], r["arm"]) for r in kept["runs"]) == [
        ("-", "base"),
        ("full-8", "dynamic"),
        ("full-8", "sft"),
    ]
    assert set(kept["summary"]["regimes"]) == {"full-8"}
    # The same study resumes: only lora-8's runs train.
    proc = subprocess.run(
        [*cmd, "--regimes", "full-8", "lora-8"], capture_output=True, text=True, env=env, cwd=REPO, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "full-8 sft seed 0:" not in proc.stdout and "lora-8 sft seed 0:" in proc.stdout
    # each run says which of how many it is, and from the second on the time left
    assert "[bench_regimes] run 1/2: lora-8 dynamic seed 0: 8 rows, 8 steps\n" in proc.stdout
    assert re.search(r"\[bench_regimes\] run 2/2: lora-8 sft seed 0: .* \(about \d+ s left\)", proc.stdout)
    cmd = [*cmd, "--regimes", "full-8", "lora-8"]
    result = json.loads(out.read_text())
    runs = [r for r in result["runs"] if r["arm"] != "base"]
    assert len(runs) == 2 * 2
    for r in runs:
        # Equal steps for every arm: an epoch is 2 x 8 rows / batch 4 = 4 steps, scored after each.
        assert r["steps"] == 8 and [e["step"] for e in r["epochs"]] == [4, 8]
        assert all(0 <= e[s]["flexible"] <= 1 for e in r["epochs"] for s in ("test", "val"))
        if r["arm"] == "sft":
            assert all(a is None for a in r["alpha"])
        else:
            assert r["alpha"][0] == 0 and max(r["alpha"]) > 0
    summary = result["summary"]["regimes"]
    assert set(summary) == {"full-8", "lora-8"}
    assert summary["full-8"]["dynamic"]["minus_sft_final"]["n"] == 1
    assert result["machine"]["cpu"]["capability"]
    assert out.with_suffix(".png").is_file() and "val-sel − sft" in out.with_suffix(".md").read_text()
    # Every run saved its per-sample rows beside the JSON, and they agree with the accuracies the record holds.
    from benchmarks.samples import read_samples

    for r in result["runs"]:
        rows = read_samples(r["samples"])
        assert Path(r["samples"]).parent == out.with_suffix(".samples")
        for e in r["epochs"]:
            for split, n in (("test", 4), ("val", 3)):
                mine = [x for x in rows if x["epoch"] == e["epoch"] and x["split"] == split]
                assert len(mine) == n and len({x["id"] for x in mine}) == n
                assert sum(x["flexible"] for x in mine) / n == pytest.approx(e[split]["flexible"])
        assert {x["epoch"] for x in rows} == {e["epoch"] for e in r["epochs"]}
    # Training with LoRA scored merged weights and left the scratch weights folder loadable.
    assert (Path(cfg["work_dir"]) / "weights" / "config.json").is_file()
    # A rerun trains nothing and reports the same.
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0 and "[bench_regimes]" not in proc.stdout
    assert json.loads(out.read_text())["summary"] == result["summary"]
    # A fresh clone has the result JSON but no run folder: the runs come back from the JSON, nothing is retrained.
    log = Path(cfg["work_dir"]) / "runs.jsonl"
    lines = log.read_text()
    log.unlink()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0 and "[bench_regimes]" not in proc.stdout, proc.stderr[-3000:]
    assert "restored 5 finished runs" in proc.stdout
    assert log.read_text() == lines and json.loads(out.read_text())["summary"] == result["summary"]


def test_self_training_summary_pairs_each_arm_with_each_baseline_by_seed():
    from benchmarks.bench_self_training import SelfTrainingStudy, markdown, pipeline_config, summarize

    def runs(arm, seed, accs):
        return {"arm": arm, "seed": seed, "rounds": [{"round": k, "flexible_accuracy": a} for k, a in enumerate(accs)]}

    all_runs = [
        runs("sft", 0, [0.1, 0.2]),
        runs("sft", 1, [0.1, 0.3]),
        runs("sft2", 0, [0.1, 0.3]),
        runs("dynsdpb", 0, [0.1, 0.25]),
        runs("dynsdpb", 1, [0.1, 0.45]),
    ]
    s = summarize(all_runs, baselines=("sft", "sft2"))
    assert s["sft"]["rounds"][1]["accuracy"]["mean"] == pytest.approx(0.25)
    assert s["sft"]["rounds"][1]["gain_over_round_0"]["mean"] == pytest.approx(0.15)
    d = s["dynsdpb"]["rounds"][1]["minus_sft"]
    # differences 0.05 and 0.15: mean 0.1, t(1) = 12.706, sd = 0.0707
    assert d["mean"] == pytest.approx(0.1) and d["ci95"] == pytest.approx(12.7062 * 0.1 / 2**0.5 / 2**0.5, rel=1e-5)
    # sft2 has seed 0 only: one pair (0.25 - 0.3), no interval
    d2 = s["dynsdpb"]["rounds"][1]["minus_sft2"]
    assert d2["mean"] == pytest.approx(-0.05) and d2["n"] == 1 and d2["ci95"] != d2["ci95"]
    assert "minus_sft" not in s["sft"]["rounds"][1] and "minus_sft2" not in s["sft2"]["rounds"][1]
    assert s["sft2"]["rounds"][1]["minus_sft"]["mean"] == pytest.approx(0.1)
    assert "| dynsdpb | 1 | 35.0 ± 127.1 | 25.0 ± 127.1 | 10.0 ± 63.5 | -5.0 |" in markdown(s, ("sft", "sft2"))
    # A secondary metric is summarized the same way for the arms whose runs record it (the others are left out).
    from benchmarks.bench_self_training import summary_and_table

    for run, revised in zip(all_runs[3:], ([0.2, 0.3], [0.1, 0.5]), strict=True):
        for x, v in zip(run["rounds"], revised, strict=True):
            x["revised_accuracy"] = v
    arms = {"sft": {}, "dynsdpb": {}}
    study = SelfTrainingStudy(pipeline="p.yaml", baselines=["sft"], arms=arms, secondary_metrics=["revised_accuracy"])
    summary, table = summary_and_table(study, all_runs)
    assert "secondary" not in summary["sft"] and summary["dynsdpb"]["rounds"][1]["accuracy"]["mean"] == 0.35
    assert summary["dynsdpb"]["secondary"]["revised_accuracy"][1]["accuracy"]["mean"] == pytest.approx(0.4)
    assert "revised_accuracy:" in table and "| dynsdpb | 1 | 40.0 ± 127.1 |" in table
    study = SelfTrainingStudy(
        pipeline=str(REPO / "pipelines" / "configs" / "demo.yaml"),
        set={"rounds": 3, "training.accumulate_data": True},
        baselines=[],
        arms={"sft2": {"training.trainer": "sft", "training.num_train_epochs": 2}},
    )
    cfg = pipeline_config(study, "sft2", 4)
    assert cfg["rounds"] == 3 and cfg["seed"] == 4 and "run_dir" not in cfg
    assert cfg["training"]["accumulate_data"] is True and cfg["training"]["trainer"] == "sft"
    assert cfg["training"]["num_train_epochs"] == 2 and "distillation_alpha" not in cfg["training"]


def test_self_training_summary_adds_the_seed_x_item_bootstrap_where_runs_saved_their_answers(tmp_path):
    from benchmarks.bench_self_training import markdown, summarize
    from benchmarks.samples import write_samples

    def run(arm, seed, right_by_round):
        rows = [
            {"epoch": k, "split": "test", "id": f"q{i}", "flexible": bool(c), "strict": False}
            for k, right in enumerate(right_by_round)
            for i, c in enumerate(right)
        ]
        rounds = [
            {"round": k, "flexible_accuracy": sum(r) / 2, "first_accuracy": sum(r) / 2}
            for k, r in enumerate(right_by_round)
        ]
        saved = write_samples(tmp_path / f"{arm}_seed{seed}.jsonl.gz", rows)
        return {"arm": arm, "seed": seed, "rounds": rounds, "samples": saved}

    runs = [
        run("sft", 0, [(1, 0), (1, 0)]),
        run("sft", 1, [(1, 0), (0, 0)]),
        run("dynsdpb", 0, [(1, 0), (1, 1)]),
        run("dynsdpb", 1, [(1, 0), (0, 1)]),
    ]
    rounds = summarize(runs)["dynsdpb"]["rounds"]
    # after round 1 every seed differs by (0, +1) on (q0, q1): mean +0.5; resampling questions gives 0, 0.5 or 1
    boot = rounds[1]["minus_sft_bootstrap"]
    assert boot["mean"] == pytest.approx(0.5) and boot["seeds"] == 2 and boot["items"] == 2
    assert 0.0 <= boot["low"] <= 0.5 <= boot["high"] <= 1.0
    assert rounds[0]["minus_sft_bootstrap"] == {"mean": 0.0, "low": 0.0, "high": 0.0, "seeds": 2, "items": 2}
    table = markdown(summarize(runs))
    assert "minus sft, seed x item bootstrap" in table and "(2 seeds x 2 questions)" in table
    # a metric the per-sample files do not hold, or runs without them: no bootstrap, and no column
    assert "minus_sft_bootstrap" not in summarize(runs, "first_accuracy")["dynsdpb"]["rounds"][1]
    bare = [{k: v for k, v in r.items() if k != "samples"} for r in runs]
    assert (
        "bootstrap" not in markdown(summarize(bare))
        and "minus_sft_bootstrap" not in summarize(bare)["dynsdpb"]["rounds"][1]
    )


def test_self_correction_runs_report_after_review_minus_first_attempt_paired_within_each_run():
    from benchmarks.bench_self_training import SelfTrainingStudy, summary_and_table

    def run(arm, seed, first, revised):
        rounds = [{"round": 0, "flexible_accuracy": 0.1}]
        rounds += [{"round": 1, "flexible_accuracy": first, "first_accuracy": first, "revised_accuracy": revised}]
        return {"arm": arm, "seed": seed, "rounds": rounds}

    runs = [run("self_correction", 0, 0.2, 0.3), run("self_correction", 1, 0.4, 0.45)]
    runs += [{"arm": "self_training", "seed": s, "rounds": [{"round": 0, "flexible_accuracy": 0.1}]} for s in (0, 1)]
    study = SelfTrainingStudy(
        pipeline="p.yaml", baselines=["self_training"], arms={"self_training": {}, "self_correction": {}}
    )
    summary, table = summary_and_table(study, runs)
    gain = summary["self_correction"]["review_gain"][1]
    # differences 0.1 and 0.05: mean 0.075, sd 0.0354, t(1) = 12.706 -> half-width 12.706 * 0.0354 / sqrt(2) = 0.318
    assert gain["mean"] == pytest.approx(0.075) and gain["ci95"] == pytest.approx(12.7062 * 0.025, rel=1e-4)
    assert "review_gain" not in summary["self_training"] and 0 not in summary["self_correction"]["review_gain"]
    assert "| self_correction | 1 | 7.5 ± 31.8 | 2 / 0 |" in table


def test_a_study_that_mixes_machines_says_so():
    from benchmarks.regime_stats import summarize

    bench = {"baselines": ["sft"]}  # what the table reads
    one = [
        {**run(arm, s, [0.1, 0.2], [0.1, 0.2]), "regime": "r", "cpu": "AVX512", "bf16": True}
        for arm in ("sft", "dyn")
        for s in (0, 1)
    ]
    summary = summarize(one, "acc", ("sft",))
    assert summary["machines"] == [{"cpu": "AVX512", "bf16": True, "runs": 4}]
    assert "Warning" not in markdown(summary, bench)
    # A study continued on another machine, seed by seed: every pair is within one machine.
    later = [
        {**run(arm, 2, [0.1, 0.2], [0.1, 0.2]), "regime": "r", "cpu": "AVX2", "bf16": False} for arm in ("sft", "dyn")
    ]
    summary = summarize(one + later, "acc", ("sft",))
    assert len(summary["machines"]) == 2 and summary["seeds_across_machines"] == []
    table = markdown(summary, bench)
    assert "Warning" not in table
    assert "more than one machine kind or number format (4 runs on AVX512 with bf16=True; 2 runs on AVX2" in table
    # Seed 2's first arm alone on the new machine (its pair not run yet) splits nothing.
    summary = summarize(one + later[:1], "acc", ("sft",))
    assert summary["seeds_across_machines"] == [] and "Warning" not in markdown(summary, bench)
    # A machine change between the two arms of seed 1: that seed's difference compares machines too.
    split = one[:3] + [{**one[3], "cpu": "AVX2", "bf16": False}]
    summary = summarize(split, "acc", ("sft",))
    assert summary["seeds_across_machines"] == ["r seed 1"]
    assert (
        "**Warning: this study mixes machines or number formats (3 runs on AVX512 with bf16=True; 1 runs on AVX2 "
        "with bf16=False), and the arms of some seeds (r seed 1) ran on different ones" in markdown(summary, bench)
    )


def test_a_study_reuses_only_the_runs_it_would_repeat_exactly(tmp_path):
    """reuse_runs: a new arm is paired with another study's finished runs where the run config (seed, arm
    settings, steps) and the scoring match; anything else is trained, and a file scoring differently is refused."""
    from dataclasses import asdict, replace
    from types import SimpleNamespace

    from benchmarks.harness import load_study
    from benchmarks.regime_config import RegimesStudy, reuse_runs
    from dynsdpb_selfplay.errors import UserInputError

    shipped = REPO / "benchmarks" / "configs" / "regimes_decoder_long_ablation.yaml"
    bench = load_study(RegimesStudy, str(shipped))
    mine = asdict(bench)
    theirs = {
        **mine,
        "seeds": [5, 6, 20],
        "arms": {
            **mine["arms"],
            "repeat": {
                "trainer": "dynsdpb",
                "distillation": {"distillation_alpha": 0.5, "distillation_schedule": "static"},
            },
        },
    }
    runs = [{**run("base", 0, [0.1], [0.1]), "regime": "-"}] + [
        {**run(arm, seed, [0.3], [0.3]), "regime": "lora-32"}
        for arm, seed in [("sft", 5), ("dynamic", 5), ("sft", 6), ("sft", 20), ("repeat", 5)]
    ]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"benchmark": "regimes", "config": theirs, "runs": runs}))
    bench = replace(bench, reuse_runs=str(other))
    args = SimpleNamespace(regimes=bench.regimes, seeds=bench.seeds)
    log = tmp_path / "work" / "runs.jsonl"
    assert reuse_runs(bench, args, log, "study.yaml") == 4
    copied = [json.loads(line) for line in log.read_text().splitlines()]
    # seed 20 is not this study's; their 'repeat' has another alpha, so ours is trained
    assert [(r["arm"], r["seed"]) for r in copied] == [("base", 0), ("sft", 5), ("dynamic", 5), ("sft", 6)]
    assert all(r["reused_from"] == str(other) for r in copied)
    assert reuse_runs(bench, args, log, "study.yaml") == 0  # already there
    longer = {**theirs, "epochs": 4}  # a 4-epoch sft run is another run, even with the same scoring
    other.write_text(json.dumps({"benchmark": "regimes", "config": longer, "runs": runs}))
    log.unlink()
    assert reuse_runs(bench, args, log, "study.yaml") == 1  # the base model's scores only
    other.write_text(json.dumps({"benchmark": "regimes", "config": {**theirs, "max_new_tokens": 128}, "runs": runs}))
    with pytest.raises(
        UserInputError,
        match=r"study\.yaml: reuse_runs: .*other\.json scores with another "
        r"'max_new_tokens' \(128 there, 64 here\)",
    ):
        reuse_runs(bench, args, log, "study.yaml")
    other.write_text(json.dumps({"benchmark": "gsm8k", "runs": []}))
    with pytest.raises(UserInputError, match=r"other\.json is not a bench_regimes result"):
        reuse_runs(bench, args, log, "study.yaml")


def test_the_shipped_ablation_reuses_the_replications_sft_and_dynsdpb_runs(tmp_path):
    """The committed replication results hold, for the ablation's seeds, runs it would repeat exactly."""
    from dataclasses import replace
    from types import SimpleNamespace

    from benchmarks.harness import load_study
    from benchmarks.regime_config import RegimesStudy, reuse_runs

    bench = load_study(RegimesStudy, str(REPO / "benchmarks" / "configs" / "regimes_decoder_long_ablation.yaml"))
    bench = replace(bench, reuse_runs=str(REPO / bench.reuse_runs))
    log = tmp_path / "runs.jsonl"
    reuse_runs(bench, SimpleNamespace(regimes=bench.regimes, seeds=bench.seeds), log, "ablation")
    copied = {(r["arm"], r["seed"]) for r in map(json.loads, log.read_text().splitlines())}
    assert copied == {("base", 0)} | {(arm, seed) for arm in ("sft", "dynamic") for seed in bench.seeds}


def test_the_table_lists_every_seeds_curve_with_its_selected_epoch():
    runs = [
        run("sft", 1, [0.1, 0.3], [0.2, 0.1]),
        run("sft", 0, [0.3, 0.5], [0.1, 0.3]),
        run("dyn", 0, [0.2, 0.3], [0.4, 0.4]),
    ]
    summary = {"metric": "acc", "regimes": {"r": summarize_regime(runs, "acc", ("sft",))}}
    table = markdown(summary, {"baselines": ["sft"]})
    rows = [line for line in table.splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    assert rows == ["| 0 | sft | 30 [50] |", "| 0 | dyn | [20] 30 |", "| 1 | sft | [10] 30 |"]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "benchmarks" / "configs").glob("regimes_*.yaml")))
def test_every_arm_of_the_shipped_regime_studies_is_a_valid_configuration(name, tmp_path):
    """A misspelt or out-of-range distillation option in a study would otherwise surface hours into the run."""
    from benchmarks.harness import load_study
    from dynsdpb_selfplay.distill.config import DistillationArguments

    path = REPO / "benchmarks" / "configs" / name
    if name.startswith("regimes_nlu"):
        from benchmarks.bench_nlu_regimes import NluRegimesStudy

        bench = load_study(NluRegimesStudy, str(path))
        for arm, spec in bench.arms.items():
            assert spec.trainer != "plain" or not spec.distillation, arm  # plain training has nothing to distill
            settings = DistillationArguments(**spec.distillation)  # the class's own checks
            assert all(getattr(settings, key) == value for key, value in spec.distillation.items()), arm
        return
    from benchmarks.regime_config import RegimesStudy, run_config, steps_per_epoch

    bench = load_study(RegimesStudy, str(path))
    for regime in bench.regimes:
        for arm, spec in bench.arms.items():
            cfg = run_config(bench, regime, arm, bench.seeds[0], str(path))
            trainer_config = cfg.training.trainer_config(str(tmp_path), seed=0)  # the class's own checks
            assert cfg.training.trainer == spec.trainer
            for key, value in spec.distillation.items():
                assert getattr(trainer_config, key) == value, (arm, key)
            # the steps of an epoch are counted with the batch the run trains with
            assert trainer_config.per_device_train_batch_size == bench.training["per_device_train_batch_size"]
            assert cfg.training.args["max_steps"] == bench.epochs_of(regime) * steps_per_epoch(bench, regime)


def test_bench_nlu_regimes_keeps_finished_runs_when_a_later_one_fails(tmp_path, gsm8k_data, monkeypatch, capsys):
    """The encoder study on the real MiniLM (offline package), 1 seed, 2 epochs of 16 rows: every arm takes the same
    steps and is scored after each epoch; a bad arm stops the study before anything trains; a run that dies leaves
    the finished ones in --out; a rerun trains nothing."""
    from benchmarks import bench_nlu_regimes

    cfg = {
        "model": "all-minilm-l6-v2",
        "task": "gsm8k-steps",
        "work_dir": str(tmp_path / "work"),
        "seeds": [0],
        "epochs": 2,
        "data": {"pool": 40, "validation": 8, "test": 8},
        "max_seq_length": 32,
        "training": {"per_device_train_batch_size": 8},
        "baselines": ["plain"],
        "regimes": [{"label": "n16", "size": 16, "learning_rate": 1e-4}],
        "arms": {
            "plain": {"trainer": "plain"},
            "dynamic": {"distillation": {"distillation_schedule": "dynamic"}},
            "static": {"distillation": {"distillation_schedule": "static"}},
        },
    }
    path, out = tmp_path / "study.yaml", tmp_path / "nlu.json"
    monkeypatch.setenv("DYNSDPB_GSM8K_DIR", str(gsm8k_data))

    def study(arms: dict, *extra: str) -> int:
        path.write_text(yaml.safe_dump({**cfg, "arms": arms}, sort_keys=False))
        monkeypatch.setattr(sys, "argv", ["bench_nlu_regimes", "--config", str(path), "--out", str(out), *extra])
        return bench_nlu_regimes.main()

    assert study({**cfg["arms"], "broken": {"distillation": {"distillation_alpha": -1.0}}}) == 2
    assert f"{path}: arms.broken.distillation: distillation_alpha=-1.0" in capsys.readouterr().err
    assert not out.exists()

    real, calls = bench_nlu_regimes.one_run, []

    def dies_on_the_third_run(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 3:
            raise RuntimeError("machine lost")
        return real(*args, **kwargs)

    monkeypatch.setattr(bench_nlu_regimes, "one_run", dies_on_the_third_run)
    with pytest.raises(RuntimeError, match="machine lost"):
        study(cfg["arms"])
    result = json.loads(out.read_text())
    assert [r["arm"] for r in result["runs"]] == ["plain", "dynamic"]
    for r in result["runs"]:
        # An epoch is 2 x 16 rows / batch 8 = 4 steps for every arm, scored after each.
        assert r["steps"] == 8 and [e["step"] for e in r["epochs"]] == [4, 8]
        assert all(0 <= e[s]["accuracy"] <= 1 for e in r["epochs"] for s in ("test", "val"))
    assert result["summary"]["accuracy"]["regimes"]["n16"]["dynamic"]["minus_plain_final"]["n"] == 1
    assert out.with_suffix(".png").is_file() and "### mcc" in out.with_suffix(".md").read_text()
    calls.clear()
    assert study(cfg["arms"], "--arms", "plain", "dynamic") == 0
    assert calls == [] and json.loads(out.read_text())["runs"] == result["runs"]
