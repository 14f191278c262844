"""Do self-training rounds raise held-out accuracy, and does DynSDPB inside them matter? The same ``dynsdpb run``
config run as several arms (each a few changed keys, e.g. ``training.trainer: sft``), over seeds (the run seed:
sampling, data order, LoRA init).

Per (arm, seed) one pipeline run (a child ``dynsdpb run``, resumed if cut short, its record appended to
``<work_dir>/runs.jsonl`` once finished); per round the held-out accuracy of
each run, its mean and 95% t-interval over seeds, the paired (same seed) difference of each arm to each baseline arm,
and each round's gain over round 0 (the base model, the same for every run).

    .venv/bin/python -m benchmarks.bench_self_training --config benchmarks/configs/self_training_cpu.yaml \\
        --out benchmarks/results/self_training_cpu.json

The study config names a pipeline config, what to change in it for every run and for each arm (dotted keys)::

    pipeline: pipelines/configs/demo.yaml
    set: {rounds: 3, training.accumulate_data: true}
    arms:
      sft: {training.trainer: sft}
      dynsdpb: {training.trainer: dynsdpb}
    baselines: [sft]
    seeds: [0, 1, 2]
    work_dir: runs/bench_self_training_cpu
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.bench_rounds import rounds_summary  # noqa: E402
from benchmarks.common import pct, read_runs, run_pipeline  # noqa: E402
from benchmarks.harness import StudyConfig, append_run, helped  # noqa: E402
from benchmarks.samples import bootstrap_text, paired_bootstrap, sample_rows, samples_dir, write_samples  # noqa: E402
from benchmarks.study_progress import Progress, missing, run_label  # noqa: E402
from dynsdpb_selfplay.stats import difference_summary, paired_differences, t_summary  # noqa: E402

CONFIGS = "benchmarks/configs/self_training_*.yaml"
DEFAULT_ARMS = {"sft": {"training.trainer": "sft"}, "dynsdpb": {"training.trainer": "dynsdpb"}}


@dataclass
class SelfTrainingStudy(StudyConfig):
    """The self-training study's YAML (``benchmarks/configs/self_training_*.yaml``)."""

    BENCHMARK = "self_training"

    work_dir: str = helped("runs/bench_self_training", "runs.jsonl and one pipeline run folder per (arm, seed)")
    pipeline: str = helped("", "the `dynsdpb run` config to study")
    set: dict = helped({}, "dotted keys changed in the pipeline config for every run")
    arms: dict[str, dict] = helped(DEFAULT_ARMS, "arm name -> {dotted.key: value} changed for that arm")
    baselines: list[str] = helped(["sft"], "arms every other arm is paired with")
    metric: str = helped("flexible_accuracy", "the per-round accuracy summarized")
    secondary_metrics: list[str] = helped(
        [], "more per-round values summarized the same way, for the arms whose runs record them (e.g. strict_accuracy)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.pipeline:
            raise ValueError("pipeline: give the `dynsdpb run` config to study")
        if not self.arms or not all(isinstance(v, dict) for v in self.arms.values()):
            raise ValueError("arms: a mapping of arm name -> {dotted.key: value}")
        for name in self.baselines:
            if name not in self.arms:
                raise ValueError(f"baselines: {name!r} is not an arm ({', '.join(self.arms)})")


Config = SelfTrainingStudy


def select(study: SelfTrainingStudy, args) -> SelfTrainingStudy:
    """Only the ``--arms`` chosen are run and reported (baselines among them)."""
    arms = {a: study.arms[a] for a in args.arms}
    return dataclasses.replace(study, arms=arms, baselines=[b for b in study.baselines if b in arms])


def pipeline_config(study: SelfTrainingStudy, arm: str, seed: int) -> dict:
    """The pipeline config with the study's ``set`` overrides, the arm's and the seed (dotted keys). A run whose
    trainer is not ``dynsdpb`` drops the ``training.distillation_*`` fields the pipeline sets for DynSDPB
    (``SFTConfig`` refuses them): every other field stays as the pipeline and the study set it."""
    from dynsdpb_selfplay.distill.config import DistillationArguments
    from dynsdpb_selfplay.rounds.schema import set_dotted_value

    cfg = yaml.safe_load(Path(study.pipeline).read_text())
    overrides = {**study.set, **study.arms[arm], "seed": seed}
    if overrides.get("training.trainer", cfg.get("training", {}).get("trainer")) != "dynsdpb":
        for f in dataclasses.fields(DistillationArguments):
            cfg.get("training", {}).pop(f.name, None)
    for key, value in overrides.items():
        set_dotted_value(cfg, key, value, f"{study.pipeline} (arm {arm}) {key}")
    cfg.pop("run_dir", None)
    return cfg


def save_samples(run_dir: Path, rounds: list[dict], where: Path, name: str) -> str | None:
    """Every round's greedy test answers (``round_r/eval.jsonl``; :mod:`benchmarks.samples` rows, ``epoch`` = round)
    gzipped into ``where/<name>.jsonl.gz``, and a self-correction run's reviews (``eval_correction.jsonl``, as
    recorded) into ``<name>_review.jsonl.gz``; returns the first path (``None`` when no round has answers)."""
    from dynsdpb_selfplay.jsonl import read_jsonl

    rows, reviews = [], []
    for r in (x["round"] for x in rounds):
        folder = run_dir / f"round_{r}"
        if (folder / "eval.jsonl").is_file():
            rows += sample_rows(read_jsonl(folder / "eval.jsonl"), r, lambda _id: "test")
        if (folder / "eval_correction.jsonl").is_file():
            reviews += [{"round": r, **row} for row in read_jsonl(folder / "eval_correction.jsonl")]
    if reviews:
        write_samples(where / f"{name}_review.jsonl.gz", reviews)
    return write_samples(where / f"{name}.jsonl.gz", rows) if rows else None


def run_one(study: SelfTrainingStudy, arm: str, seed: int, work_dir: Path, samples: Path | None = None) -> dict:
    """One pipeline run (started, resumed, or read back when finished); its per-round accuracies, and with
    ``samples`` (a folder) its per-sample files (:func:`save_samples`)."""
    from dynsdpb_selfplay.rounds.config import from_dict

    def config() -> dict:
        cfg = pipeline_config(study, arm, seed)
        from_dict(cfg, source=f"{study.pipeline} (arm {arm}, seed {seed})")  # fail before hours
        return cfg

    run_dir = work_dir / f"{arm}-seed{seed}"
    state = run_pipeline(run_dir, config, f"{arm} seed {seed}", "bench_self_training")
    record = {"arm": arm, "seed": seed, "run_dir": str(run_dir), "rounds": rounds_summary(state["info"])}
    if samples is not None and (saved := save_samples(run_dir, record["rounds"], samples, f"{arm}_seed{seed}")):
        record["samples"] = saved
    return record


def summarize(runs: list[dict], metric: str = "flexible_accuracy", baselines: tuple[str, ...] = ("sft",)) -> dict:
    """Per arm and round: mean and 95% t-interval over seeds, the gain over round 0, and the paired (same seed)
    difference to each baseline arm, as ``minus_<baseline>``; where both runs saved their rounds' test answers
    (:func:`save_samples`), also its seed x item bootstrap, ``minus_<baseline>_bootstrap``."""

    by = {
        (r["arm"], r["seed"]): {x["round"]: x[metric] for x in r["rounds"] if x.get(metric) is not None} for r in runs
    }
    run_of = {(r["arm"], r["seed"]): r for r in runs}
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        if not all(by[(arm, s)] for a, s in by if a == arm):
            continue  # this arm's runs do not record the metric (a self_correction value for a self_training run)
        seeds = sorted(s for a, s in by if a == arm)
        rounds = sorted(set.intersection(*(set(by[(arm, s)]) for s in seeds)))
        cell = {"seeds": seeds, "rounds": {}}
        for k in rounds:
            entry = {"accuracy": t_summary([by[(arm, s)][k] for s in seeds])}
            if k:
                entry["gain_over_round_0"] = t_summary([by[(arm, s)][k] - by[(arm, s)][0] for s in seeds])
            for base in baselines:
                theirs = {s: acc[k] for (a, s), acc in by.items() if a == base and k in acc}
                if arm != base and (diff := paired_differences({s: by[(arm, s)][k] for s in seeds}, theirs)):
                    entry[f"minus_{base}"] = diff
                    if boot := _bootstrap(run_of, arm, base, [s for s in seeds if s in theirs], k, metric):
                        entry[f"minus_{base}_bootstrap"] = boot
            cell["rounds"][k] = entry
        out[arm] = cell
    return out


def planned(study: SelfTrainingStudy, args) -> list[dict]:
    """Every (arm, seed) run, seed by seed."""
    return [{"arm": arm, "seed": seed} for seed in args.seeds for arm in study.arms]


SAMPLE_METRICS = {"flexible_accuracy": "flexible", "strict_accuracy": "strict"}  # a summary metric -> its sample field


def _bootstrap(run_of: dict, arm: str, base: str, seeds: list[int], k: int, metric: str) -> dict | None:
    """Seed x item bootstrap of ``arm - base`` after round ``k`` from the runs' per-sample files (each round's test
    answers: :func:`save_samples`); ``None`` for a metric without per-question values or runs without the files."""
    if metric not in SAMPLE_METRICS:
        return None
    return paired_bootstrap([(run_of[(arm, s)], run_of[(base, s)], k, k) for s in seeds], SAMPLE_METRICS[metric])


def run(study: SelfTrainingStudy, args, log_path: Path, on_record) -> None:
    """Every (arm, seed) run not in ``log_path`` (started, resumed, or read back), appended once finished."""
    todo = missing(planned(study, args), read_runs(log_path))
    where, progress = samples_dir(args.out, args.work_dir), Progress("bench_self_training", todo)
    for p in todo:
        progress.start(run_label(p))
        record = run_one(study, p["arm"], p["seed"], args.work_dir, where)
        append_run(log_path, {**record, "wall_s": progress.done()})
        on_record()


def keep(study: SelfTrainingStudy, args, record: dict) -> bool:
    """The result holds the runs of the selected arms and seeds."""
    return record["arm"] in study.arms and record["seed"] in args.seeds


def summary_and_table(study: SelfTrainingStudy, runs: list[dict]) -> tuple[dict, str]:
    """The summary of ``runs`` and its markdown table (what ``--summarize-only`` writes)."""
    baselines = tuple(study.baselines)
    summary = summarize(runs, study.metric, baselines)
    table = markdown(summary, baselines)
    for metric in study.secondary_metrics:
        for arm, cell in summarize(runs, metric, baselines).items():
            summary[arm].setdefault("secondary", {})[metric] = cell["rounds"]
        table += f"\n{metric}:\n\n" + markdown(
            {arm: {"rounds": c["secondary"][metric]} for arm, c in summary.items() if metric in c.get("secondary", {})},
            baselines,
        )
    if gains := review_gain(runs):
        for arm, per_round in gains.items():
            summary[arm]["review_gain"] = per_round
        table += "\n" + review_markdown(gains)
    return summary, table


def review_gain(runs: list[dict]) -> dict:
    """Per arm whose runs review their answers (self-correction) and per round: after-review minus first-attempt
    accuracy, paired within each run (:func:`dynsdpb_selfplay.stats.difference_summary` over seeds), the pipeline's
    own question: does the review help?"""
    out: dict = {}
    for r in runs:
        for x in r["rounds"]:
            if x.get("revised_accuracy") is not None and x.get("first_accuracy") is not None:
                by_round = out.setdefault(r["arm"], {}).setdefault(x["round"], [])
                by_round.append(x["revised_accuracy"] - x["first_accuracy"])
    return {arm: {k: difference_summary(v) for k, v in sorted(rounds.items())} for arm, rounds in out.items()}


def review_markdown(gains: dict) -> str:
    lines = [
        "after review − first attempt (paired within each run; points, 95% t-interval over seeds):",
        "",
        "| arm | round | after review − first attempt | runs up / down |",
        "|---|---|---|---|",
    ]
    for arm, per_round in gains.items():
        for k, d in per_round.items():
            lines.append(f"| {arm} | {k} | {pct(d)} | {d['wins']} / {d['losses']} |")
    return "\n".join(lines) + "\n"


def markdown(summary: dict, baselines: tuple[str, ...] = ("sft",)) -> str:
    booted = [
        b for b in baselines if any(f"minus_{b}_bootstrap" in e for c in summary.values() for e in c["rounds"].values())
    ]
    head = ["arm", "round", "accuracy %", "gain over round 0", *(f"minus {b} (paired)" for b in baselines)]
    head += [f"minus {b}, seed x item bootstrap" for b in booted]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, cell in summary.items():
        for k, e in cell["rounds"].items():
            cells = [
                arm,
                str(k),
                pct(e["accuracy"]),
                pct(e.get("gain_over_round_0")),
                *(pct(e.get(f"minus_{b}")) for b in baselines),
                *(bootstrap_text(x) if (x := e.get(f"minus_{b}_bootstrap")) else "-" for b in booted),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def draw(summary: dict, runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for arm, cell in summary.items():
        ks = list(cell["rounds"])
        mean = [100 * cell["rounds"][k]["accuracy"]["mean"] for k in ks]
        half = [0.0 if (h := cell["rounds"][k]["accuracy"]["ci95"]) != h else 100 * h for k in ks]
        ax.errorbar(ks, mean, yerr=half, marker="o", capsize=3, label=f"{arm} ({len(cell['seeds'])} seeds)")
    ax.set_xticks(sorted({k for cell in summary.values() for k in cell["rounds"]}))
    ax.set_xlabel("round (0 = base model)")
    ax.set_ylabel("held-out accuracy, %")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    return harness.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    harness.run_main(main)
