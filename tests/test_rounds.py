"""Rounds end to end on the tiny model with the transformers engine: both pipelines, config errors, crash + resume."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import yaml
from helpers import round_config as config
from helpers import save_tiny_model
from helpers import write_config as write

from dynsdpb_selfplay.cli import main
from dynsdpb_selfplay.errors import UserInputError
from dynsdpb_selfplay.jsonl import read_jsonl as read
from dynsdpb_selfplay.jsonl import stale_temporaries
from dynsdpb_selfplay.rounds.config import load_config
from dynsdpb_selfplay.rounds.rundir import RunDir

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("round-model") / "m"))


@pytest.mark.parametrize("pipeline", ["self_training", "self_correction"])
def test_two_rounds_end_to_end(tmp_path, tiny, pipeline, capsys):
    run_dir = tmp_path / "run"
    cfg = config(tiny, pipeline=pipeline, **{"training.max_length": 256})  # the review turn is long in characters
    assert main(["run", str(write(tmp_path, cfg)), "--run-dir", str(run_dir)]) == 0
    state = json.loads((run_dir / "state.json").read_text())
    phases = ("generate", "filter", "train", "handoff", "eval", "validate", "select")
    expected = ["round_0/validate", "round_0/eval"] + [f"round_{r}/{p}" for r in (1, 2) for p in phases]
    assert state["done"] == expected + ["report"]
    for r in (1, 2):
        gens = read(run_dir / f"round_{r}" / "generations.jsonl")
        assert len(gens) == 8 * 2  # 8 questions x 2 samples, nothing lost or duplicated
        assert len({(g["id"], g["sample"]) for g in gens}) == len(gens)
        rows = read(run_dir / f"round_{r}" / "train.jsonl")
        assert rows and len({row["id"] for row in rows}) == len(rows)
        _assert_no_truncated_rows(run_dir / f"round_{r}", pipeline)
        rates = read(run_dir / f"round_{r}" / "pass_rates.jsonl")
        assert [e["id"] for e in rates] == list(dict.fromkeys(g["id"] for g in gens))  # every question, in order
        assert all(e["samples"] == 2 and e["pass_rate"] == e["verified"] / 2 for e in rates)
        assert (run_dir / f"round_{r}" / "model" / "model.safetensors").exists()
        assert state["info"][f"round_{r}/train"]["steps"] == 4
        # The checkpoints were for resuming the phase; its per-step log outlives them.
        assert list((run_dir / f"round_{r}" / "trainer").glob("checkpoint-*")) == []
        assert [h["step"] for h in _step_logs(run_dir, r)] == [1, 2, 3, 4]
    # Where the wall time went: engine start once, generation inside the engine, round 1's weights handed over.
    info = state["info"]
    assert info["round_0/validate"]["engine_start_s"] > 0 and "engine_start_s" not in info["round_1/generate"]
    assert info["round_1/generate"]["engine_generate_s"] > 0 and info["round_1/eval"]["weights_handoff_s"] > 0
    assert info["round_1/handoff"]["handoff"] == "exact"  # an fp32 engine serves the trained weights themselves
    sys.path.insert(0, str(TESTS.parent / "benchmarks"))
    from bench_rounds import plot, round_breakdown

    row = round_breakdown(info, 2)
    parts = row["generation_s"] + row["training_s"] + row["engine_start_s"] + row["overhead_s"]
    assert row["overhead_s"] > 0 and parts == pytest.approx(row["wall_s"])
    plot([round_breakdown(info, 1), row], str(tmp_path / "rounds.png"))
    assert (tmp_path / "rounds.png").stat().st_size > 1000
    # Round 2 generated from new questions with round 1's weights.
    assert {g["id"] for g in read(run_dir / "round_1/generations.jsonl")}.isdisjoint(
        {g["id"] for g in read(run_dir / "round_2/generations.jsonl")}
    )
    report = (run_dir / "report.md").read_text()
    table = [line for line in report.split("## The data")[0].splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3  # header, separator, rounds 0-2
    assert len({line.count("|") for line in table}) == 1  # every row has the header's number of cells
    assert (run_dir / "accuracy.png").stat().st_size > 1000
    # Per round, the data: filter counts, the pass-rate histogram, kept / rejected / truncated examples.
    for r in (1, 2):
        assert f"### Round {r}" in report and f"![round {r} pass rates](round_{r}/pass_rates.png)" in report
        assert (run_dir / f"round_{r}/pass_rates.png").stat().st_size > 1000
    assert "| samples | correct | duplicates | over cap | truncated | below agreement |" in report
    assert "*kept, shortest*" in report and "*rejected, longest*" in report and "*truncated*" in report
    out = capsys.readouterr().out
    assert "round 2:" in out and f"report: {run_dir / 'report.md'}" in out
    if pipeline == "self_correction":
        summary = json.loads((run_dir / "round_2" / "eval_summary.json").read_text())
        assert {"first_accuracy", "revised_accuracy", "wrong_to_right", "right_to_wrong"} <= set(summary)
        assert "w→r" in report and "| first \\ revised | right | wrong |" in report
        for row in rows:  # the loss falls on the revision: first answer and review request are in the prompt
            assert [m["role"] for m in row["prompt"]] == ["user", "assistant", "user"]


def _assert_no_truncated_rows(folder: Path, pipeline: str) -> None:
    """No training row comes from a generation cut at max_new_tokens, and the filter counted the cut ones."""
    gens, rows = read(folder / "generations.jsonl"), read(folder / "train.jsonl")
    summary = json.loads((folder / "filter_summary.json").read_text())
    finish = "finish_reason" if pipeline == "self_training" else "revision_finish_reason"
    by_row = {f"{g['id']}-{g['sample']}-{g.get('source', 'correction')}": g for g in gens}
    assert all(by_row[row["id"]][finish] == "stop" for row in rows)
    assert summary["truncated"] == sum(g[finish] == "length" for g in gens) > 0


def test_sft_baseline_trains_on_the_same_data(tmp_path, tiny):
    dyn, sft = tmp_path / "dyn", tmp_path / "sft"
    cfg = config(tiny, rounds=1, **{"training.keep_checkpoints": True})
    assert main(["run", str(write(tmp_path, cfg, "a.yaml")), "--run-dir", str(dyn)]) == 0
    cfg["training"]["trainer"] = "sft"
    assert main(["run", str(write(tmp_path, cfg, "b.yaml")), "--run-dir", str(sft)]) == 0
    assert read(dyn / "round_1/train.jsonl") == read(sft / "round_1/train.jsonl")
    info = json.loads((sft / "state.json").read_text())["info"]["round_1/train"]
    assert info["trainer"] == "sft" and info["steps"] == 4
    for run in (dyn, sft):  # training.keep_checkpoints: the last two saves (save_total_limit=2) stay
        kept = sorted(p.name for p in (run / "round_1/trainer").glob("checkpoint-*"))
        assert kept == ["checkpoint-2", "checkpoint-4"]


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"trainng": {}}, "trainng: unknown key"),
        ({"training.lora_rank": 8}, "training.lora_rank: not a field of DynSDPBConfig nor a round key"),
        ({"training.learning_rate": "fast"}, r"training.learning_rate: expected float, got 'fast'"),
        ({"rounds": "two"}, "rounds: expected int"),
        ({"generation.n": 0}, "generation: n=0: must be >= 1"),
        ({"generation.samples": 2}, "generation.samples: renamed to generation.n"),
        ({"training.lora": {"alpha": 8}}, "training.lora.alpha: renamed to training.lora.lora_alpha"),
        ({"training.lora": {"lora_dropout": 1.5}}, r"training.lora: lora_dropout=1.5: must be in \[0, 1\)"),
        ({"generation.seed": 3}, "generation.seed: set by the round"),
        ({"generation.top_k": -1}, "generation: top_k=-1: must be >= 0"),
        ({"training.trainer": "ppo"}, "training.trainer"),
        ({"training.distillation_temprature": 2}, "training.distillation_temprature: not a field of DynSDPBConfig"),
        ({"training.distillation_temperature": -1}, r"training: distillation_temperature=-1.0: must be > 0"),
        ({"training.distillation": {"temperature": 2}}, "training.distillation: .* training.distillation_temperature"),
        ({"training.extra": {"warmup_steps": 2}}, "training.extra: write SFTConfig fields directly under training:"),
        ({"training.output_dir": "x"}, "training.output_dir: set by the round"),
        (
            {"training.trainer": "sft", "training.distillation_alpha": 1.0},
            "distillation_alpha: not a field of SFTConfig",
        ),
        ({"engine": {"backend": "tgi"}}, "backend"),
        ({"pipeline": "rlhf"}, "pipeline"),
    ],
)
def test_config_errors_name_the_key(tmp_path, overrides, match):
    path = write(tmp_path, config("m", **overrides))
    with pytest.raises(UserInputError, match=match) as e:
        load_config(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "text,where",
    [
        ("model: m\ngeneration:\n  n: 2\n  temprature: 0.5\n", r"run\.yaml:4: generation\.temprature: unknown key"),
        (
            "model: m\ntraining:\n  trainer: sft\n  lora:\n    lora_alpha: 8\n    r: two\n",
            r"run\.yaml:6: training\.lora\.r: expected int, got 'two'",
        ),
        ("model: m\n\ntask:\n  name: arith\n  train_limit: 0\n", r"run\.yaml:5: task\.train_limit: must be >= 1"),
    ],
    ids=["unknown key", "nested type", "value check"],
)
def test_config_errors_name_the_line(tmp_path, text, where):
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(UserInputError, match=where):
        load_config(tmp_path / "run.yaml")


def test_training_keys_are_the_trainer_config_fields_of_a_trl_recipe(tmp_path):
    """``training:`` takes SFTConfig / DynSDPBConfig fields under their own names (as a `trl sft` recipe writes
    them) next to the round keys; they reach the round's trainer config over the rounds' defaults, and a run
    folder's config.yaml reads back the same."""
    from dynsdpb_selfplay.rounds.config import from_dict, to_dict
    from dynsdpb_selfplay.rounds.training import training_args
    from dynsdpb_selfplay.rounds.training_config import ROUND_TRAINING_DEFAULTS

    recipe = {
        "lr_scheduler_type": "cosine",
        "warmup_steps": 3,
        "weight_decay": 0.01,
        "distillation_alpha": 0.5,
        "distillation_schedule": "static",
        "per_device_train_batch_size": 2,
    }
    cfg = load_config(write(tmp_path, config("m", training={"trainer": "dynsdpb", "learning_rate": 2e-4, **recipe})))
    args = training_args(cfg, tmp_path / "run" / "round_1" / "trainer")
    assert type(args).__name__ == "DynSDPBConfig" and args.learning_rate == 2e-4
    assert (args.lr_scheduler_type, args.warmup_steps, args.weight_decay) == ("cosine", 3, 0.01)
    assert (args.distillation_alpha, args.distillation_schedule) == (0.5, "static")
    assert args.max_length == ROUND_TRAINING_DEFAULTS["max_length"] and args.logging_steps == 1  # unset: the round's
    assert args.gradient_checkpointing is False  # the round's default, not SFTConfig's (True)
    assert args.distillation_temperature == 3.0 and args.seed == cfg.seed and args.run_name == "run/round_1"
    saved = to_dict(cfg)
    assert saved["training"]["weight_decay"] == 0.01 and "args" not in saved["training"]
    assert from_dict(saved) == cfg
    sft = load_config(write(tmp_path, config("m", training={"trainer": "sft", "warmup_steps": 3})))
    assert type(training_args(sft, tmp_path / "t")).__name__ == "SFTConfig"


def test_existing_run_folder_is_not_overwritten_and_is_locked(tmp_path, tiny):
    run_dir = tmp_path / "run"
    RunDir.create(run_dir, config(tiny)).close()
    path = write(tmp_path, config(tiny))
    assert main(["run", str(path), "--run-dir", str(run_dir)]) == 2
    with RunDir.open(run_dir):
        with pytest.raises(UserInputError, match="in use by pid"):
            RunDir.open(run_dir)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(args, fault=None, sig="KILL", output_dir: Path | None = None):
    """``dynsdpb run ARGS`` in a subprocess. With ``output_dir`` its output goes to files there instead of pipes, so
    that waiting for it ends with the process even if children it left behind still hold inherited pipes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]), "HF_HUB_OFFLINE": "1"}
    # One intra-op thread: the tiny model gains nothing from more, and on a busy machine OpenMP threads spinning for
    # a core made a run take 15-150 s instead of 6 s.
    env.setdefault("OMP_NUM_THREADS", "1")
    if fault:
        env.update(DYNSDPB_FAULT=fault, DYNSDPB_FAULT_SIGNAL=sig)
    cmd = [sys.executable, "-m", "dynsdpb_selfplay.cli", "run", *args]
    # A suite started in the background (`make test &`) inherits SIGINT ignored, and so would the run: the Ctrl-C
    # fault points need it delivered.
    kw = {"env": env, "cwd": TESTS, "timeout": 600, "preexec_fn": _default_sigint}
    if output_dir is None:
        return subprocess.run(cmd, capture_output=True, text=True, **kw)
    out, err = output_dir / "stdout.txt", output_dir / "stderr.txt"
    with open(out, "w") as o, open(err, "w") as e:
        code = subprocess.run(cmd, stdout=o, stderr=e, **kw).returncode
    return subprocess.CompletedProcess(cmd, code, out.read_text(), err.read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny):
    """An uninterrupted run, as a subprocess like the crashed ones."""
    tmp = tmp_path_factory.mktemp("ref")
    proc = run_cli([str(write(tmp, config(tiny))), "--run-dir", str(tmp / "run")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"


# (fault point, signal) pairs across every phase; see dynsdpb_selfplay/faults.py for what each point means.
# SIGKILL leaves the process no chance to clean up; SIGINT (Ctrl-C) unwinds through every ``finally``.
FAULT_POINTS = [
    ("round_0/validate:point=generated", "KILL"),  # the start model scored on validation, nothing written
    ("round_0/eval:point=generated", "INT"),  # eval scored, nothing written
    ("round_0/eval:write=eval_summary.json", "KILL"),  # eval.jsonl in place, the summary only as a temporary file
    ("round_1/generate:chunk=0", "KILL"),  # chunk 0 saved, chunk 1 not
    ("round_1/generate:write=chunk-00001.jsonl", "INT"),  # chunk 1 written to its temporary file only
    ("round_1/generate:write=generations.jsonl", "KILL"),  # every chunk saved, the merged file not renamed
    ("round_1/generate:write=state.json", "INT"),  # the state that marks generation done not renamed
    ("round_1/filter:point=read", "KILL"),  # generations read, nothing written
    ("round_1/filter:write=train.jsonl", "INT"),
    ("round_1/filter:write=filter_summary.json", "KILL"),  # train.jsonl in place, its summary not
    ("round_1/train:step=1", "INT"),  # before the first checkpoint: training starts over
    ("round_1/train:step=3", "KILL"),  # mid-training: checkpoint-2 saved
    ("round_1/train:torn=2", "INT"),  # checkpoint-2 torn (weights + targets, no trainer state): starts over
    ("round_1/train:torn=4", "KILL"),  # checkpoint-4 torn: resumes from checkpoint-2
    ("round_1/train:saved=2", "KILL"),  # checkpoint-2 complete, step 3 not started
    ("round_1/train:point=trained", "INT"),  # every step done, the round's model not saved
    ("round_1/train:point=model_tmp", "KILL"),  # the round's model in model.tmp/, not moved into place
    ("round_1/train:write=state.json", "KILL"),  # model/ in place, the phase not marked done
    ("round_1/eval:point=generated", "KILL"),
    ("round_1/eval:write=eval.jsonl", "INT"),
    ("round_1/eval:point=done", "KILL"),  # right after the phase is marked done
    ("round_1/validate:write=validation.jsonl", "INT"),  # validation scored, its file only as a temporary file
    ("round_1/select:point=done", "KILL"),  # the round kept, the next not started
    ("round_2/generate:chunk=1", "INT"),  # the last chunk saved, the merged file not written
    ("round_2/filter:point=done", "INT"),
    ("round_2/train:step=3", "INT"),  # a later round's checkpoint-2
    ("round_2/eval:write=eval_summary.json", "INT"),
    ("report:point=plot", "KILL"),  # accuracy.png written, report.md not
    ("report:write=report.md", "INT"),
    ("report:write=state.json", "KILL"),  # everything written, the run not marked finished
]
assert len(FAULT_POINTS) >= 20 and {sig for _, sig in FAULT_POINTS} == {"KILL", "INT"}
assert {p.split(":")[0].split("/")[-1] for p, _ in FAULT_POINTS} == {
    "eval",
    "generate",
    "filter",
    "train",
    "report",
    "validate",
    "select",
}

# The checkpoint each round's training resumed from, for the points that interrupt training.
RESUMED_FROM = {
    "round_1/train:step=3": {1: "checkpoint-2"},
    "round_1/train:torn=4": {1: "checkpoint-2"},
    "round_1/train:saved=2": {1: "checkpoint-2"},
    "round_1/train:point=trained": {1: "checkpoint-4"},
    "round_1/train:point=model_tmp": {1: "checkpoint-4"},
    "round_1/train:write=state.json": {1: "checkpoint-4"},
    "round_2/train:step=3": {2: "checkpoint-2"},
}

# Timings, and what an attempt counts of its own work (a resumed phase generates only its missing chunks).
_TIMING = {
    "seconds",
    "train_s",
    "tokens_per_s",
    "generation_s",
    "wall_s",
    "load_s",
    "resumed_from",
    "engine_start_s",
    "weights_handoff_s",
    "engine_generate_s",
    "generated_tokens",
}


def _metrics(obj, run_dir: Path):
    """``obj`` without wall-time and throughput fields, with the run folder's path replaced by RUN."""
    if isinstance(obj, dict):
        return {k: _metrics(v, run_dir) for k, v in obj.items() if k not in _TIMING}
    if isinstance(obj, list):
        return [_metrics(v, run_dir) for v in obj]
    return obj.replace(str(run_dir), "RUN") if isinstance(obj, str) else obj


def _step_logs(run_dir: Path, r: int) -> list[dict]:
    """The per-step training logs (loss, DynSDPB metrics) of round ``r``."""
    return [h for h in read(run_dir / f"round_{r}/trainer/log_history.jsonl") if "loss" in h]


def _report_table(run_dir: Path) -> list[list[str]]:
    """The report's table without its timing columns (the last four)."""
    rows = [line.split("|")[1:-1] for line in (run_dir / "report.md").read_text().splitlines() if line.startswith("|")]
    return [row[:-4] for row in rows]


def assert_same_run(run_dir: Path, reference: Path, rounds=(1, 2)) -> None:
    """The data and metrics of a run equal the reference's, nothing lost, duplicated or left half-written."""
    state, ref_state = (json.loads((d / "state.json").read_text()) for d in (run_dir, reference))
    assert state["done"] == ref_state["done"] and state["done"][-1] == "report"
    assert _metrics(state["info"], run_dir) == _metrics(ref_state["info"], reference)
    for r in (0, *rounds):
        names = ["eval.jsonl"] + (["generations.jsonl", "train.jsonl"] if r else [])
        for name in names:
            assert read(run_dir / f"round_{r}" / name) == read(reference / f"round_{r}" / name), (r, name)
        for name in ["eval_summary.json"] + (["filter_summary.json"] if r else []):
            got, want = (json.loads((d / f"round_{r}" / name).read_text()) for d in (run_dir, reference))
            assert _metrics(got, run_dir) == _metrics(want, reference), (r, name)
        evals = read(run_dir / f"round_{r}/eval.jsonl")
        assert len({(e["id"], e["sample"]) for e in evals}) == len(evals) == 6
    for r in rounds:
        gens = read(run_dir / f"round_{r}/generations.jsonl")
        keys = [(g["id"], g["sample"]) for g in gens]
        samples = yaml.safe_load((run_dir / "config.yaml").read_text())["generation"]["n"]
        assert set(keys) == {(f"train-{i}", k) for i in range(8 * (r - 1), 8 * r) for k in range(samples)}
        assert len(keys) == len(set(keys))  # every (question, sample) exactly once
        chunks = [g for c in sorted((run_dir / f"round_{r}/generations").glob("chunk-*.jsonl")) for g in read(c)]
        assert chunks == gens
        rows = read(run_dir / f"round_{r}/train.jsonl")
        assert len({row["id"] for row in rows}) == len(rows)
        # The same batches and stored targets: every logged step (loss, CE, KL, distilled tokens) matches.
        assert _metrics(_step_logs(run_dir, r), run_dir) == _metrics(_step_logs(reference, r), reference), r
        weights = [(d / f"round_{r}/model/model.safetensors").read_bytes() for d in (run_dir, reference)]
        assert weights[0] == weights[1], r
        assert not (run_dir / f"round_{r}/model.tmp").exists()
        assert list((run_dir / f"round_{r}/trainer").glob("checkpoint-*")) == []  # dropped once the phase is done
    assert _report_table(run_dir) == _report_table(reference)
    assert (run_dir / "accuracy.png").is_file()
    assert stale_temporaries(run_dir) == []


# The phases in the order a run reaches them.
ROUND_PHASES = ("generate", "filter", "train", "handoff", "eval", "validate", "select")
PHASE_ORDER = ["round_0/validate", "round_0/eval", *(f"round_{r}/{p}" for r in (1, 2) for p in ROUND_PHASES), "report"]


# Training points reached only by a training phase that starts from step 0: a checkpoint-2 being written.
FROM_STEP_0 = {"round_1/train:torn=2", "round_1/train:saved=2"}


def fault_chains(points: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The fault points in two chains, each in run order. Inside a phase a chain's later point is reached by the
    attempt that resumes from the earlier one: generation goes on from its saved chunks, filtering and evaluation
    start over, training resumes from its last complete checkpoint (after ``step=3``: checkpoint-2; ``torn=4`` is
    then written by the resumed attempt, and ``trained``/``model_tmp`` follow the checkpoint-4 it completes). The two
    points that need training to start at step 0 go to the second chain, with round 0, round 2 and the report."""
    phase = lambda point: point[0].split(":")[0]  # noqa: E731
    ordered = sorted(points, key=lambda point: PHASE_ORDER.index(phase(point)))  # stable: list order in a phase
    second = lambda point: point[0] in FROM_STEP_0 or not phase(point).startswith("round_1/")  # noqa: E731
    return [[p for p in ordered if not second(p)], [p for p in ordered if second(p)]]


FAULT_CHAINS = fault_chains(FAULT_POINTS)
assert sorted(p for chain in FAULT_CHAINS for p in chain) == sorted(FAULT_POINTS)


def assert_crashed_at(proc: subprocess.CompletedProcess, run_dir: Path, fault: str, sig: str) -> None:
    """The attempt died of ``sig`` at ``fault``: the phase is not marked done (unless the point follows the mark),
    and a file being written is there only under its temporary name (SIGKILL; Ctrl-C removes it)."""
    assert proc.returncode == (-signal.SIGKILL if sig == "KILL" else 130), (fault, proc.stderr[-2000:])
    state = json.loads((run_dir / "state.json").read_text())
    assert "report" not in state["done"]
    phase, _, point = fault.partition(":")
    if point == "point=done":
        assert state["done"][-1] == phase
    else:
        assert phase not in state["done"], fault
        if point.startswith("write="):
            name = point.removeprefix("write=")
            left = [p.name.split(".tmp-")[0] for p in stale_temporaries(run_dir)]
            assert left == ([f".{name}"] if sig == "KILL" else []), fault


@pytest.mark.parametrize("chain", FAULT_CHAINS, ids=lambda chain: "+".join(f"{f}-{s}" for f, s in chain))
def test_killed_run_resumes_to_the_same_result(tmp_path, tiny, reference, chain):
    """The run is killed at each point of ``chain`` in turn (the first attempt fresh, each later one a ``--resume``
    of the killed run) and the last ``--resume`` ends with the uninterrupted run's data, logs, weights and report.
    Two chains cover the 30 points with 32 processes and two full runs' work (one run per point: 60 and 30)."""
    run_dir = tmp_path / "run"
    args = [str(write(tmp_path, config(tiny))), "--run-dir", str(run_dir)]
    for fault, sig in chain:
        assert_crashed_at(run_cli(args, fault=fault, sig=sig), run_dir, fault, sig)
        args = ["--resume", str(run_dir)]
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run_dir, reference)
    info = json.loads((run_dir / "state.json").read_text())["info"]
    for r in (1, 2):  # the attempt after the round's last training point is the one that finished the phase
        points = [f for f, _ in chain if f.startswith(f"round_{r}/train:")]
        want = RESUMED_FROM.get(points[-1], {}).get(r) if points else None
        got = info[f"round_{r}/train"]["resumed_from"]
        assert (got and Path(got).name) == want, (r, got)


def test_fault_points_fire_only_where_set(monkeypatch):
    from dynsdpb_selfplay.faults import armed, fault_point, in_phase, maybe_fault

    fired = []
    old = signal.signal(signal.SIGUSR1, lambda *_: fired.append(1))
    try:
        maybe_fault("round_1/train", step=3)  # no DYNSDPB_FAULT: inert
        monkeypatch.setenv("DYNSDPB_FAULT", "round_1/train:step=3")
        monkeypatch.setenv("DYNSDPB_FAULT_SIGNAL", "USR1")
        for phase, point in [
            ("round_1/train", {"step": 2}),
            ("round_1/train", {"saved": 3}),
            ("round_2/train", {"step": 3}),
            ("", {"step": 3}),
        ]:
            maybe_fault(phase, **point)
        assert fired == []
        maybe_fault("round_1/train", step=3)
        assert fired == [1]
        assert armed("round_1/train") and not armed("round_1/eval")
        fault_point(step=3)  # outside any phase: inert
        with in_phase("round_1/train"):
            with in_phase("round_1/eval"):
                fault_point(step=3)  # the inner phase is not the armed one
            assert fired == [1]
            fault_point(step=3)  # back in the outer phase, which is
        assert fired == [1, 1]
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_only_complete_checkpoints_are_resumed(tmp_path):
    """A checkpoint gets trainer_state.json last: one without it is a save killed midway, never resumed from."""
    from dynsdpb_selfplay.distill.trainer import last_complete_checkpoint
    from dynsdpb_selfplay.rounds.training import drop_checkpoints

    for step, files in [
        (2, ["model.safetensors", "trainer_state.json"]),
        (4, ["dynsdpb_targets_rank0.safetensors", "model.safetensors"]),
        (10, ["trainer_state.json"]),
    ]:
        for name in files:
            (tmp_path / f"checkpoint-{step}").mkdir(exist_ok=True)
            (tmp_path / f"checkpoint-{step}" / name).write_text("{}")
    (tmp_path / "checkpoint-10" / "trainer_state.json").unlink()
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    drop_checkpoints(tmp_path, torn_only=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    assert last_complete_checkpoint(str(tmp_path / "none")) is None


def test_resume_removes_temporaries_of_a_killed_process(tmp_path):
    run_dir = tmp_path / "run"
    RunDir.create(run_dir, {"a": 1}).close()
    leftovers = [run_dir / ".state.json.tmp-123", run_dir / "round_1/generations/.chunk-00001.jsonl.tmp-7"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"done": [')
    (run_dir / "round_1/generations/chunk-00000.jsonl").write_text("{}\n")
    assert stale_temporaries(run_dir) == sorted(leftovers)
    RunDir.open(run_dir).close()
    assert stale_temporaries(run_dir) == [] and (run_dir / "round_1/generations/chunk-00000.jsonl").exists()


@pytest.mark.parametrize("temperature,samples", [(0.0, 1), (1.0, 2)], ids=["greedy", "sampled"])
def test_same_seed_and_config_give_the_same_run(tmp_path, tiny, monkeypatch, request, temperature, samples):
    """Determinism on CPU: the same generations (greedy or seeded sampling), rows, training batches, losses, weights
    and metrics. The two runs share a process, so nothing may depend on global RNG state left by the first."""
    from dynsdpb_selfplay.distill.trainer import INDEX_COLUMN, DynSDPBMixin

    batches: list[list[int]] = []
    get_batch_samples = DynSDPBMixin.get_batch_samples

    def record(self, epoch_iterator, num_batches, device):
        out, num_items = get_batch_samples(self, epoch_iterator, num_batches, device)
        batches.append([i for b in out for i in b[INDEX_COLUMN].tolist()])
        return out, num_items

    monkeypatch.setattr(DynSDPBMixin, "get_batch_samples", record)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as run_cli's subprocesses: fast on a busy machine
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    # Greedy decoding of the random model runs past 12 tokens on most questions (cut rows are never trained on).
    cfg = config(
        tiny,
        rounds=1,
        **{
            "generation.temperature": temperature,
            "generation.n": samples,
            "generation.max_new_tokens": 12 if samples > 1 else 64,
        },
    )
    runs, steps = [tmp_path / "a", tmp_path / "b"], []
    for run_dir in runs:
        batches.clear()
        assert main(["run", str(write(tmp_path, cfg)), "--run-dir", str(run_dir)]) == 0
        steps.append(list(batches))
    a, b = runs
    assert steps[0] == steps[1] and len(steps[0]) == 4
    assert all(s[0] == prev[1] for prev, s in pairwise(steps[0])), steps[0]  # the overlap: r_s = f_(s-1)
    gens = read(a / "round_1/generations.jsonl")
    assert len(gens) == 8 * samples
    if samples > 1:  # seeded sampling, not the same text for every sample
        assert any(g["response"] != h["response"] for g, h in zip(gens[::2], gens[1::2], strict=True))
    assert_same_run(b, a, rounds=(1,))


def _vllm_processes() -> set[int]:
    """Pids of vLLM's engine-core and worker processes (they name themselves ``VLLM::...``)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return {int(line.split(None, 1)[0]) for line in out.splitlines() if line.split(None, 1)[-1].startswith("VLLM::")}


@pytest.mark.vllm
def test_sigterm_closes_the_vllm_engine_and_keeps_finished_phases(tmp_path, tiny):
    """``kill`` mid-generation unwinds like Ctrl-C: exit 130 with the resume hint, and vLLM's processes end with the
    run (killed by the default SIGTERM action they outlived it, holding GBs, until the machine ran out of memory)."""
    before = _vllm_processes()
    engine = {"backend": "vllm", "dtype": "float32", "max_model_len": 256, "multiprocessing": True}  # processes
    cfg = config(tiny, rounds=1, engine=engine)
    args = [str(write(tmp_path, cfg)), "--run-dir", str(tmp_path / "run")]
    proc = run_cli(args, "round_1/generate:chunk=0", "TERM", output_dir=tmp_path)
    assert proc.returncode == 130 and "interrupted" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads((tmp_path / "run/state.json").read_text())["done"] == ["round_0/validate", "round_0/eval"]
    deadline = time.monotonic() + 30
    while (left := _vllm_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"vLLM processes outlived the run: {sorted(left)}"


@pytest.mark.vllm
def test_one_round_with_the_vllm_engine(tmp_path, tiny):
    """The main engine, for real on CPU: one engine for the run, round 1's weights moved into it in place. On a CPU
    the engine runs inside the run's process (``engine.multiprocessing`` None), beside the training between its
    generations; the same run with vLLM's own processes gives the very same data, training steps and weights."""
    runs = {}
    for mode, extra in [("in-process", {}), ("processes", {"multiprocessing": True})]:
        run_dir = runs[mode] = tmp_path / mode
        cfg = config(tiny, rounds=1, engine={"backend": "vllm", "dtype": "float32", "max_model_len": 256, **extra})
        proc = run_cli([str(write(tmp_path, cfg)), "--run-dir", str(run_dir)])
        assert proc.returncode == 0, proc.stderr[-3000:]
        state = json.loads((run_dir / "state.json").read_text())
        assert state["done"][-1] == "report" and state["info"]["round_1/train"]["steps"] == 4
        assert json.loads((run_dir / "round_0/eval_summary.json").read_text())["backend"] == "vllm"
        after = json.loads((run_dir / "round_1/eval_summary.json").read_text())
        assert after["model"] == str(run_dir / "round_1" / "model")
        assert len(read(run_dir / "round_1/generations.jsonl")) == 16
        assert proc.stdout.count("run folder:") == 1 and "report:" in proc.stdout
    ours, theirs = runs["in-process"], runs["processes"]
    for name in ["round_0/eval.jsonl", "round_1/generations.jsonl", "round_1/train.jsonl", "round_1/eval.jsonl"]:
        assert read(ours / name) == read(theirs / name), name
    assert _metrics(_step_logs(ours, 1), ours) == _metrics(_step_logs(theirs, 1), theirs)
    weights = [(d / "round_1/model/model.safetensors").read_bytes() for d in (ours, theirs)]
    assert weights[0] == weights[1]


def test_two_generation_shards_merge_to_the_unsharded_data(tmp_path, tiny, reference):
    """Two engine processes, each over every other chunk, give the very same generations as one engine."""
    run_dir = tmp_path / "run"
    cfg = config(tiny, rounds=1, evaluation={"enabled": False}, **{"generation.shards": 2})
    proc = run_cli([str(write(tmp_path, cfg)), "--run-dir", str(run_dir)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "state.json").read_text())["info"]["round_1/generate"]["shards"] == 2
    assert read(run_dir / "round_1/generations.jsonl") == read(reference / "round_1/generations.jsonl")
    assert len(list((run_dir / "round_1/generations").glob("chunk-*.jsonl"))) == 2


def test_a_round_that_lowers_validation_accuracy_is_not_continued_from(tmp_path, tiny, monkeypatch, capsys):
    """Round 1's model is broken on purpose (every weight zero: it answers nothing); selection rejects it on the
    validation split, round 2 generates with and trains from the start model, and the report says so."""
    from safetensors.torch import load_file, save_file

    from dynsdpb_selfplay.rounds import orchestrator

    real = orchestrator.train_round

    def train_then_break_round_1(rows, init, out_dir, trainer_dir, cfg):
        info = real(rows, init, out_dir, trainer_dir, cfg)
        if out_dir.parent.name == "round_1":
            weights = out_dir / "model.safetensors"
            save_file({k: v * 0 for k, v in load_file(str(weights)).items()}, str(weights))
        return info

    monkeypatch.setattr(orchestrator, "train_round", train_then_break_round_1)
    run_dir = tmp_path / "run"
    assert main(["run", str(write(tmp_path, config(tiny))), "--run-dir", str(run_dir)]) == 0
    state = json.loads((run_dir / "state.json").read_text())
    assert state["done"][:2] == ["round_0/validate", "round_0/eval"]
    info = state["info"]
    select = info["round_1/select"]
    assert not select["kept"] and select["against"] == 0 and select["flexible"]["lost"] > 0
    assert info["round_1/validate"]["flexible_accuracy"] < info["round_0/validate"]["flexible_accuracy"]
    assert info["round_2/train"]["init"] == tiny  # trained from the start model, not round 1's
    assert info["round_2/select"]["against"] == 0 and info["round_2/select"]["kept"]
    assert info["report"]["final_round"] == 2
    # Round 2 generated with the start model: its samples come from the same weights as round 1's.
    assert read(run_dir / "round_2/generations.jsonl")[0]["response"] != ""
    assert (run_dir / "round_1/validation.jsonl").exists() and (run_dir / "round_0/validation.jsonl").exists()
    report = (run_dir / "report.md").read_text()
    (line,) = [line for line in report.splitlines() if "**rejected**" in line]
    assert line.startswith("| 1 |") and "flexible -" in line and "vs round 0" in line and "Rejected rounds: 1" in report
    assert "round 1 rejected" in capsys.readouterr().out
    # Every kept row ends with the answer line (filtering.answer_line: append is the default).
    for r in (1, 2):
        rows = read(run_dir / f"round_{r}/train.jsonl")
        assert rows and all("\n#### " in row["completion"][0]["content"] for row in rows)


def test_a_bf16_engine_serves_a_round_update_below_one_bf16_step(tmp_path, tiny):
    """At lr 1e-5 a round moves each weight far less than a bf16 step of a start model stored in bf16 (as the prepared
    SmolLM2 is): the engine (bf16) serves the stochastically rounded copy, which keeps the update, and the report says
    what it served."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.bfloat16).save_pretrained(start)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(start)
    run_dir = tmp_path / "run"
    cfg = config(
        str(start), rounds=1, **{"training.learning_rate": 1e-5, "engine.dtype": "bfloat16", "evaluation.select": False}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 on a CPU that emulates it warns: fine for a tiny model
        assert main(["run", str(write(tmp_path, cfg)), "--run-dir", str(run_dir)]) == 0
    info = json.loads((run_dir / "state.json").read_text())["info"]
    handoff = info["round_1/handoff"]
    assert handoff["handoff"] == "stochastic" and handoff["nearest_share"] < 0.5
    assert handoff["served_share"] == pytest.approx(1.0, abs=0.1)
    assert handoff["served"] == str(run_dir / "round_1/served")
    summary = json.loads((run_dir / "round_1/eval_summary.json").read_text())
    assert summary["model"] == handoff["served"]  # evaluation scored the copy the engine served
    assert "bf16 stochastic (" in (run_dir / "report.md").read_text()
