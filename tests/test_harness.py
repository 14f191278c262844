"""benchmarks.harness, the one main of the studies, on a study that trains nothing: typed configs with errors
naming the file and key, the selection flags, a result rewritten after every run, resume, restore and
--summarize-only, exit codes."""

import json
import sys
import types
from dataclasses import dataclass

import pytest
import yaml
from helpers import REPO

if str(REPO) not in sys.path:  # the benchmarks package, as `python -m pytest` from the repository root has it
    sys.path.insert(0, str(REPO))

from benchmarks import harness  # noqa: E402
from benchmarks.harness import DEFAULT_BATCH_SIZE, TrainingStudyConfig, append_run, helped, load_study  # noqa: E402
from dynsdpb_selfplay.errors import UserInputError  # noqa: E402


@dataclass
class ToyStudy(TrainingStudyConfig):
    BENCHMARK = "toy"

    arms: dict[str, dict] = helped({"a": {}, "b": {}}, "arms")
    scale: float = helped(1.0, "what a run multiplies its seed by")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale <= 0:
            raise ValueError(f"scale: must be > 0 (got {self.scale})")


def toy_module(trained: list) -> types.ModuleType:
    study = types.ModuleType("benchmarks.bench_toy")
    study.__doc__ = "A toy study.\n\nMore."
    study.Config, study.CONFIGS = ToyStudy, "toy.yaml"

    def run(config, args, log_path, on_record):
        done = {(r["arm"], r["seed"]) for r in harness.read_runs(log_path)}
        for seed in args.seeds:
            for arm in args.arms:
                if (arm, seed) not in done:
                    trained.append((arm, seed))
                    append_run(log_path, {"arm": arm, "seed": seed, "value": config.scale * seed})
                    on_record()

    study.run = run
    study.summary_and_table = lambda config, runs: ({"n": len(runs)}, f"{len(runs)} runs\n")
    study.draw = lambda summary, runs, path: None
    return study


def test_a_study_config_is_typed_and_its_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("seeds: [3]\nscale: 2\n")
    study = load_study(ToyStudy, str(path))
    assert study.seeds == [3] and study.scale == 2.0 and study.work_dir == "runs/study"
    # the one batch-size default, where the config leaves it out (a round's)
    assert study.training == {"per_device_train_batch_size": DEFAULT_BATCH_SIZE} and DEFAULT_BATCH_SIZE == 4
    path.write_text("training: {per_device_train_batch_size: 8, gradient_accumulation_steps: 2}\n")
    assert load_study(ToyStudy, str(path)).step_rows == 16
    for text, match in [
        ("colour: red\n", r"toy\.yaml: colour: unknown key; known: arms, model, scale, seeds, training, work_dir"),
        ("scale: big\n", r"toy\.yaml: scale: expected float, got 'big'"),
        ("scale: -1\n", r"toy\.yaml: scale: must be > 0 \(got -1\.0\)"),
        ("seeds: []\n", r"toy\.yaml: seeds: give at least one seed"),
        ("training: {per_device_train_batch_size: 0}\n", r"toy\.yaml: training: per_device_train_batch_size must"),
        ("- 1\n", r"toy\.yaml: expected a mapping at the top level"),
        ("seeds: [1\n", r"toy\.yaml: cannot read the study config"),
    ]:
        path.write_text(text)
        with pytest.raises(UserInputError, match=match):
            load_study(ToyStudy, str(path))


def test_the_harness_runs_rewrites_resumes_restores_and_summarizes(tmp_path, capsys):
    trained: list = []
    study = toy_module(trained)
    path, out, work = tmp_path / "toy.yaml", tmp_path / "res" / "toy.json", tmp_path / "work"
    path.write_text(yaml.safe_dump({"seeds": [1, 2], "work_dir": str(work)}))
    common = ["--config", str(path), "--out", str(out)]
    assert harness.main(study, [*common, "--arms", "a"]) == 0
    assert trained == [("a", 1), ("a", 2)]
    result = json.loads(out.read_text())
    assert result["benchmark"] == "toy" and result["summary"] == {"n": 2} and result["config"]["seeds"] == [1, 2]
    assert out.with_suffix(".md").read_text() == "2 runs\n" and "2 runs" in capsys.readouterr().out
    # resume: only the missing runs; --seeds and --work-dir select
    assert harness.main(study, [*common, "--seeds", "2"]) == 0 and trained[2:] == [("b", 2)]
    # --summarize-only trains nothing; a fresh clone (no runs.jsonl) gets the runs back from --out
    (work / "runs.jsonl").unlink()
    assert harness.main(study, [*common, "--summarize-only"]) == 0 and len(trained) == 3
    assert "restored 3 finished runs" in capsys.readouterr().out and json.loads(out.read_text())["summary"]["n"] == 3
    other = tmp_path / "other"
    assert harness.main(study, [*common, "--work-dir", str(other), "--summarize-only"]) == 0
    assert (other / "runs.jsonl").is_file() and len(trained) == 3
    # exit 2 with one line naming the file and the key, or the flag
    assert harness.main(study, [*common, "--arms", "c"]) == 2
    assert capsys.readouterr().err.startswith("bench_toy: error: --arms: ['c'] not in")
    path.write_text("scale: 0\n")
    assert harness.main(study, common) == 2
    assert capsys.readouterr().err == f"bench_toy: error: {path}: scale: must be > 0 (got 0.0)\n"


def test_status_lists_finished_and_missing_runs_and_the_time_left_without_summarizing(tmp_path, capsys):
    trained: list = []
    study = toy_module(trained)
    study.planned = lambda config, args: [
        {"arm": "base", "seed": 0},
        *({"arm": a, "seed": s} for s in args.seeds for a in args.arms),
    ]
    path, out, work = tmp_path / "toy.yaml", tmp_path / "toy.json", tmp_path / "work"
    path.write_text(yaml.safe_dump({"seeds": [1, 2, 3], "work_dir": str(work)}))
    append_run(work / "runs.jsonl", {"arm": "base", "seed": 0, "value": 0.0, "wall_s": 90.0})
    append_run(work / "runs.jsonl", {"arm": "a", "seed": 1, "value": 1.0, "wall_s": 600.0})
    append_run(work / "runs.jsonl", {"arm": "b", "seed": 1, "value": 1.0, "seconds": 1200.0, "reused_from": "x"})
    append_run(work / "runs.jsonl", {"arm": "a", "seed": 9, "value": 9.0, "wall_s": 60.0})  # not planned
    assert harness.main(study, ["--config", str(path), "--out", str(out), "--status"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "bench_toy: 3 of 7 planned runs finished (1 reused)",
        "missing, in the order they run: a seed 2, b seed 2, a seed 3, b seed 3",
        # the pace of the runs it trained itself: the reused one, the unplanned one and the base model's scoring
        # (minutes, not a trained run's pace) do not count
        "at the median pace of its 1 runs trained so far (10 min a run): about 40 min left on a machine like theirs",
    ]
    assert trained == [] and not out.exists()  # nothing trained, no result written (no outcome read)
    assert harness.main(study, ["--config", str(path), "--out", str(out), "--status", "--seeds", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "every planned run is finished: the result can be read"


def test_progress_says_which_run_of_how_many_and_the_time_left(capsys, monkeypatch):
    from benchmarks import study_progress

    clock = iter([0.0, 90.0, 90.0, 1890.0, 1890.0, 5490.0, 5490.0])
    monkeypatch.setattr(study_progress.time, "perf_counter", lambda: next(clock))
    todo = [{"arm": "base", "seed": 0}, {"arm": "a", "seed": 1}, {"arm": "b", "seed": 1}, {"arm": "a", "seed": 2}]
    progress = study_progress.Progress("bench_toy", todo)
    progress.start("the base model's scores")
    assert progress.done() == 90.0
    progress.start("a seed 1")
    assert progress.done() == 1800.0
    progress.start("b seed 1")
    assert progress.done() == 3600.0
    progress.start("a seed 2")
    assert capsys.readouterr().out.splitlines() == [
        "[bench_toy] run 1/4: the base model's scores",
        "[bench_toy] run 2/4: a seed 1",  # the base model's 90 s of scoring is no trained run's pace
        "[bench_toy] run 3/4: b seed 1 (about 60 min left)",  # two trained runs left at 30 min each
        "[bench_toy] run 4/4: a seed 2 (about 45 min left)",  # one left at the mean of 30 and 60
    ]
    assert study_progress.run_label({"regime": "-", "arm": "base", "seed": 0}) == "base seed 0"
