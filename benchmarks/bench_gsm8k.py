"""Effect on accuracy: plain SFT, repetition alone, static DLB and DynSDPB fine-tuning of one model on the same gold
solutions, scored on the same held-out questions, over seeds.

Arms (each starts from the same base model, with the same LoRA, learning rate and batch shape):

    sft      plain SFTTrainer, E epochs                 the baseline at equal epochs
    sft_2x   plain SFTTrainer, 2E epochs                equal compute: DynSDPB's optimizer steps and sample visits
    repeat   DynSDPB trainer with alpha = 0, E epochs   overlapping batches alone, no distillation
    static   DynSDPB, fixed alpha and tau (DLB)
    dynamic  DynSDPB, alpha and tau adapted per sample

Half of every DynSDPB batch repeats the previous step's fresh half, so E epochs take twice plain SFT's optimizer
steps: ``sft`` is the equal-epochs baseline and ``sft_2x`` the equal-compute one.

For each task of the config, each (arm, seed) run trains with the rounds' trainer (``train_round``: resumable
checkpoints, LoRA merged into the saved weights); one long-lived engine (vLLM when installed) takes the new weights in
place and scores the test subset greedily. Per run: strict and flexible accuracy, optimizer steps, training seconds,
and from the trainer's log the per-step CE, KL and distillation term alpha*tau^2*KL, so one sees whether the
regulariser does any work. A ``pipeline`` section also runs a ``dynsdpb run`` config once per trainer (sft, dynsdpb).

    DYNSDPB_GSM8K_DIR=../shared/data/gsm8k .venv/bin/python -m benchmarks.bench_gsm8k \\
        --config benchmarks/configs/gsm8k_cpu.yaml --out benchmarks/results/gsm8k_cpu.json

Every finished run is appended to ``<work_dir>/runs.jsonl`` at once and a rerun skips it (a training run cut short
resumes from its checkpoint), so a crash costs at most the run in progress; the ``--out`` JSON is rewritten after
each. Each run's scored generations stay in
``<work_dir>/<task>/<arm>-seed<seed>.eval.jsonl``; its weights are deleted once scored unless ``--keep-models``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.common import gold_rows, read_runs, run_pipeline  # noqa: E402
from benchmarks.gsm8k_summary import curve_means, draw, markdown, summarize, training_curve  # noqa: E402,F401
from benchmarks.harness import TrainingStudyConfig, append_run, helped  # noqa: E402
from benchmarks.study_progress import Progress, missing  # noqa: E402
from dynsdpb_selfplay.errors import UserInputError  # noqa: E402

ARMS = {  # name -> (trainer, epochs multiplier, distillation overrides)
    "sft": ("sft", 1, None),
    "sft_2x": ("sft", 2, None),
    "repeat": ("dynsdpb", 1, {"distillation_alpha": 0.0, "distillation_schedule": "static"}),
    "static": ("dynsdpb", 1, {"distillation_schedule": "static"}),
    "dynamic": ("dynsdpb", 1, {"distillation_schedule": "dynamic"}),
}
CONFIGS = "benchmarks/configs/gsm8k_{cpu,gpu}.yaml"
FLAGS = [
    (("--tasks",), {"nargs": "+", "help": "only these tasks of the config (by label, else name)"}),
    (("--no-pipeline",), {"action": "store_true", "help": "skip the sft-vs-dynsdpb pipeline runs"}),
    (("--keep-models",), {"action": "store_true", "help": "keep each run's weights (default: delete once scored)"}),
]
EXTRAS = ("pipelines",)


@dataclass
class PipelinePair:
    config: str = helped("", "a `dynsdpb run` config, run once per trainer")
    trainers: list[str] = helped(["sft", "dynsdpb"], "the trainers it is run with")

    def __post_init__(self) -> None:
        if not self.config:
            raise ValueError("config: give the `dynsdpb run` config")


@dataclass
class Gsm8kStudy(TrainingStudyConfig):
    """bench_gsm8k's YAML (``benchmarks/configs/gsm8k_*.yaml``)."""

    BENCHMARK = "gsm8k"

    work_dir: str = helped("runs/bench_gsm8k", "checkpoints, scored generations and runs.jsonl")
    arms: list[str] = helped(list(ARMS), f"arms, of {', '.join(ARMS)}")
    engine: dict = helped({}, "the run config's engine section (scoring)")
    distillation: dict = helped({}, "DynSDPBConfig fields (distillation_*) of the static and dynamic arms")
    tasks: list[dict] = helped([], "run config task sections, each with label and max_new_tokens (default 256)")
    pipeline: PipelinePair | None = helped(None, "a pipeline run once per trainer (sft against dynsdpb)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in self.distillation:  # DynSDPBConfig field names, as in a run config's training:
            if not key.startswith("distillation_"):
                raise ValueError(f"distillation: {key}: write the DynSDPBConfig field, distillation_{key}")
        for arm in self.arms:
            if arm not in ARMS:
                raise ValueError(f"arms: unknown arm {arm!r}; arms: {', '.join(ARMS)}")
        if not self.tasks:
            raise ValueError("tasks: give at least one task (name, train_limit, eval_limit, ...)")
        labels = [task_label(t) for t in self.tasks]
        if len(set(labels)) < len(labels):
            raise ValueError("tasks: two tasks have the same label; give each a distinct 'label'")


Config = Gsm8kStudy


def task_label(task: dict) -> str:
    """What a task's runs are recorded under: its ``label`` (to run a task twice with other options), else its name."""
    return task.get("label") or task.get("name")


def run_config(study: Gsm8kStudy, task: dict, arm: str, seed: int, source: str):
    """The validated :class:`RunConfig` of one run: the task's section, the arm's trainer, epochs and distillation."""
    from dynsdpb_selfplay.rounds.config import from_dict

    trainer, mult, distill = ARMS[arm]
    task = dict(task)
    label = task_label(task)
    task.pop("label", None)
    max_new = task.pop("max_new_tokens", 256)
    training = dict(study.training)
    training["trainer"] = trainer
    training["num_train_epochs"] = mult * training.get("num_train_epochs", 1.0)
    if distill is not None:  # the study's distillation_* fields (DynSDPBConfig names), then the arm's
        training.update({**study.distillation, **distill})
    data = {
        "model": study.model,
        "seed": seed,
        "rounds": 1,
        "task": task,
        "training": training,
        "evaluation": {"max_new_tokens": max_new},
        "engine": study.engine,
    }
    return from_dict(data, source=f"{source} (task {label}, arm {arm})")


def select(study: Gsm8kStudy, args) -> Gsm8kStudy:
    """The ``--tasks`` chosen; every selected run's config is checked before anything trains."""
    args.tasks = [t for t in study.tasks if not args.tasks or task_label(t) in args.tasks]
    for t in args.tasks:
        for arm in args.arms:
            run_config(study, t, arm, args.seeds[0], args.config)
    return study


def keep(study: Gsm8kStudy, args, record: dict) -> bool:
    """The result holds the runs of the selected tasks."""
    return record["task"] in {task_label(t) for t in args.tasks}


def planned(study: Gsm8kStudy, args) -> list[dict]:
    """Per selected task: its base model's score, then every (arm, seed), seed by seed (the pipeline pair is not a
    run of ``runs.jsonl``: ``--status`` does not count it)."""
    out = []
    for t in args.tasks:
        name = task_label(t)
        out += [{"task": name, "arm": "base", "seed": 0}]
        out += [{"task": name, "arm": arm, "seed": seed} for seed in args.seeds for arm in args.arms]
    return out


def eval_record(engine, task, fmt, cfg, weights: str, records_path: Path) -> dict:
    """Score ``weights`` greedily on the task's test subset; the per-sample records go to ``records_path``."""
    from dynsdpb_selfplay.engines.base import SamplingConfig
    from dynsdpb_selfplay.evaluate import evaluate
    from dynsdpb_selfplay.jsonl import write_jsonl

    examples = task.load(cfg.task.eval_split, limit=cfg.task.eval_limit)
    greedy = SamplingConfig(max_new_tokens=cfg.evaluation.max_new_tokens, seed=cfg.seed)
    result = evaluate(engine, task, examples, fmt, greedy, model_name=weights, split=cfg.task.eval_split)
    write_jsonl(records_path, result.records)
    keep = ("strict_accuracy", "flexible_accuracy", "n_samples", "truncated", "generated_tokens", "wall_s")
    return {k: result.summary[k] for k in keep}


def run_task(study: Gsm8kStudy, task_spec: dict, args, log_path: Path, on_record) -> None:
    """Every missing (arm, seed) run of one task, and the base model's score (arm ``base``)."""
    from dynsdpb_selfplay.engines import make_engine
    from dynsdpb_selfplay.models import resolve_model
    from dynsdpb_selfplay.rounds.training import train_round
    from dynsdpb_selfplay.tasks import get_task

    name, source = task_label(task_spec), args.config
    mine = [p for p in planned(study, args) if p["task"] == name]
    todo = missing(mine, read_runs(log_path))
    if not todo:
        return
    first = run_config(study, task_spec, args.arms[0], args.seeds[0], source)
    task = get_task(first.task.name, **first.task.options)
    fmt = task.get_format(name=first.task.format)
    base = resolve_model(first.model)
    engine, loaded = make_engine(base, first.engine), base
    progress = Progress("bench_gsm8k", todo)
    try:
        for arm, seed in ((p["arm"], p["seed"]) for p in todo):
            progress.start(f"{name} {arm} seed {seed}")
            cfg = first if arm == "base" else run_config(study, task_spec, arm, seed, source)
            record = {"task": name, "arm": arm, "seed": seed}
            weights, folder = base, args.work_dir / name / f"{arm}-seed{seed}"
            if arm != "base":
                examples = task.load(cfg.task.train_split, limit=cfg.task.train_limit)
                print(f"[bench_gsm8k] {name} {arm} seed {seed}: training on {len(examples)} solutions", flush=True)
                info = train_round(gold_rows(task, fmt, examples), base, folder / "model", folder / "trainer", cfg)
                if "skipped" in info:
                    raise UserInputError(f"{name} {arm} seed {seed}: training skipped: {info['skipped']}")
                curve = training_curve(folder / "trainer")
                record.update(
                    trainer=info["trainer"],
                    rows=info["rows"],
                    steps=info["steps"],
                    train_loss=info["train_loss"],
                    train_s=info["train_s"],
                    curve=curve,
                    **curve_means(curve),
                )
                weights = info["model"]
            if weights != loaded:
                engine.update_weights(weights)
                loaded = weights
            record.update(eval_record(engine, task, fmt, cfg, weights, folder.with_name(folder.name + ".eval.jsonl")))
            print(
                f"[bench_gsm8k] {name} {arm} seed {seed}: strict {record['strict_accuracy']:.3f} flexible "
                f"{record['flexible_accuracy']:.3f}",
                flush=True,
            )
            record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            append_run(log_path, {**record, "wall_s": progress.done()})
            on_record()
            if arm != "base" and not args.keep_models:
                shutil.rmtree(folder)
    finally:
        engine.close()


def run_pipelines(spec: PipelinePair, args, source: str) -> list[dict]:
    """``dynsdpb run`` of the pipeline config once per trainer (resumed if cut short); per-round accuracy and steps."""
    from benchmarks.bench_rounds import rounds_summary

    path = Path(spec.config)
    base = yaml.safe_load(path.read_text())

    def config(trainer: str) -> dict:  # the pipeline's own config with the trainer changed; run_pipeline sets run_dir
        cfg = {**base, "training": {**base.get("training", {}), "trainer": trainer}}
        cfg.pop("run_dir", None)
        return cfg

    out = []
    for trainer in spec.trainers:
        run_dir = args.work_dir / f"pipeline_{trainer}"
        state = run_pipeline(
            run_dir, lambda t=trainer: config(t), f"{source}: pipeline {path} with trainer {trainer}", "bench_gsm8k"
        )
        out.append(
            {"trainer": trainer, "config": str(path), "run_dir": str(run_dir), "rounds": rounds_summary(state["info"])}
        )
    return out


def run(study: Gsm8kStudy, args, log_path: Path, on_record) -> dict:
    """Every missing run of each selected task (and its base model's score), then the pipeline pair."""
    for t in args.tasks:
        run_task(study, t, args, log_path, on_record)
    if not study.pipeline or args.no_pipeline:
        return {}
    pipelines = run_pipelines(study.pipeline, args, args.config)
    for pl in pipelines:
        print(
            f"pipeline {pl['trainer']}: "
            + ", ".join(f"round {r['round']} flexible {100 * r['flexible_accuracy']:.1f}%" for r in pl["rounds"])
        )
    return {"pipelines": pipelines}


def summary_and_table(study: Gsm8kStudy, runs: list[dict]) -> tuple[dict, str]:
    """The summary of ``runs`` and its markdown tables (what a rerun with every run finished writes)."""
    summary = summarize(runs)
    return summary, markdown(summary)


def main(argv: list[str] | None = None) -> int:
    return harness.main(sys.modules[__name__], argv)


if __name__ == "__main__":  # `kill` closes the vLLM engine and the pipeline child's, as Ctrl-C does
    harness.run_main(main)
