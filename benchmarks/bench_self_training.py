"""Do self-training rounds raise held-out accuracy, and does DynSDPB inside them matter? The same ``dynsdpb run``
config run as several arms (each a few changed keys, e.g. ``training.trainer: sft``), over seeds (the run seed:
sampling, data order, LoRA init).

Per (arm, seed) one pipeline run (a child ``dynsdpb run``, resumed if cut short); per round the held-out accuracy of
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

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml  # noqa: E402

from benchmarks.bench_rounds import rounds_summary  # noqa: E402
from benchmarks.common import read_config, run_pipeline, save_study  # noqa: E402
from dynsdpb_selfplay.errors import UserInputError  # noqa: E402
from dynsdpb_selfplay.signals import sigterm_unwinds  # noqa: E402
from dynsdpb_selfplay.stats import paired_differences, t_summary  # noqa: E402

KEYS = {"pipeline", "set", "arms", "baselines", "seeds", "work_dir", "metric"}
DEFAULT_ARMS = {"sft": {"training.trainer": "sft"}, "dynsdpb": {"training.trainer": "dynsdpb"}}


def load_study(path: str) -> dict:
    data = read_config(path, KEYS, "study config")
    if "pipeline" not in data:
        raise UserInputError(f"{path}: pipeline: give the `dynsdpb run` config to study")
    arms = data.setdefault("arms", DEFAULT_ARMS)
    if not isinstance(arms, dict) or not all(isinstance(v, dict) for v in arms.values()):
        raise UserInputError(f"{path}: arms: a mapping of arm name -> {{dotted.key: value}}")
    for name in data.setdefault("baselines", ["sft"]):
        if name not in arms:
            raise UserInputError(f"{path}: baselines: {name!r} is not an arm ({', '.join(arms)})")
    return data


def pipeline_config(study: dict, arm: str, seed: int) -> dict:
    """The pipeline config with the study's ``set`` overrides, the arm's and the seed (dotted keys). A run whose
    trainer is not ``dynsdpb`` drops the ``training.distillation_*`` fields the pipeline sets for DynSDPB
    (``SFTConfig`` refuses them): every other field stays as the pipeline and the study set it."""
    from dynsdpb_selfplay.distill.config import DistillationArguments
    from dynsdpb_selfplay.rounds.schema import set_dotted_value

    cfg = yaml.safe_load(Path(study["pipeline"]).read_text())
    overrides = {**study.get("set", {}), **study.get("arms", DEFAULT_ARMS)[arm], "seed": seed}
    if overrides.get("training.trainer", cfg.get("training", {}).get("trainer")) != "dynsdpb":
        for f in dataclasses.fields(DistillationArguments):
            cfg.get("training", {}).pop(f.name, None)
    for key, value in overrides.items():
        set_dotted_value(cfg, key, value, f"{study['pipeline']} (arm {arm}) {key}")
    cfg.pop("run_dir", None)
    return cfg


def run_one(study: dict, arm: str, seed: int, work_dir: Path) -> dict:
    """One pipeline run (started, resumed, or read back when finished); its per-round accuracies."""
    from dynsdpb_selfplay.rounds.config import from_dict

    def config() -> dict:
        cfg = pipeline_config(study, arm, seed)
        from_dict(cfg, source=f"{study['pipeline']} (arm {arm}, seed {seed})")  # fail before hours
        return cfg

    run_dir = work_dir / f"{arm}-seed{seed}"
    state = run_pipeline(run_dir, config, f"{arm} seed {seed}", "bench_self_training")
    return {"arm": arm, "seed": seed, "run_dir": str(run_dir), "rounds": rounds_summary(state["info"])}


def summarize(runs: list[dict], metric: str = "flexible_accuracy", baselines: tuple[str, ...] = ("sft",)) -> dict:
    """Per arm and round: mean and 95% t-interval over seeds, the gain over round 0, and the paired (same seed)
    difference to each baseline arm, as ``minus_<baseline>``."""

    by = {(r["arm"], r["seed"]): {x["round"]: x[metric] for x in r["rounds"]} for r in runs}
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
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
            cell["rounds"][k] = entry
        out[arm] = cell
    return out


def summary_and_table(study: dict, runs: list[dict]) -> tuple[dict, str]:
    """The summary of ``runs`` and its markdown table (what a rerun with every run finished writes)."""
    baselines = tuple(study["baselines"])
    summary = summarize(runs, study.get("metric", "flexible_accuracy"), baselines)
    return summary, markdown(summary, baselines)


def markdown(summary: dict, baselines: tuple[str, ...] = ("sft",)) -> str:
    def pct(s):
        return (
            "-" if not s else f"{100 * s['mean']:.1f}" + ("" if s["ci95"] != s["ci95"] else f" ± {100 * s['ci95']:.1f}")
        )

    head = ["arm", "round", "accuracy %", "gain over round 0", *(f"minus {b} (paired)" for b in baselines)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, cell in summary.items():
        for k, e in cell["rounds"].items():
            cells = [arm, str(k), pct(e["accuracy"]), pct(e.get("gain_over_round_0")),
                     *(pct(e.get(f"minus_{b}")) for b in baselines)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str) -> None:
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="study YAML (benchmarks/configs/self_training_*.yaml)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the config's)")
    p.add_argument("--arms", nargs="+", help="arms to run and report, by name (default: the config's)")
    p.add_argument("--out", help="JSON result path (a PNG plot and a .md table are written beside it)")
    args = p.parse_args()
    start = time.perf_counter()
    try:
        study = load_study(args.config)
        seeds = args.seeds or study.get("seeds", [0, 1, 2])
        if args.arms:
            unknown = [a for a in args.arms if a not in study["arms"]]
            if unknown:
                raise UserInputError(f"--arms: {unknown} not in {args.config} (arms: {', '.join(study['arms'])})")
            study["arms"] = {a: study["arms"][a] for a in args.arms}
            study["baselines"] = [b for b in study["baselines"] if b in study["arms"]]
        work_dir = Path(study.get("work_dir", "runs/bench_self_training"))
        work_dir.mkdir(parents=True, exist_ok=True)
        runs = [run_one(study, arm, s, work_dir) for s in seeds for arm in study["arms"]]
    except UserInputError as e:
        print(f"bench_self_training: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench_self_training: interrupted; the same command resumes the runs", file=sys.stderr)
        return 130
    summary, table = summary_and_table(study, runs)
    print(table)
    save_study({"benchmark": "self_training", "config": {**study, "seeds": seeds}, "summary": summary, "runs": runs,
                "wall_s_this_invocation": time.perf_counter() - start}, args.out, table,
               lambda path: plot(summary, path))  # fmt: skip
    return 0


if __name__ == "__main__":
    with sigterm_unwinds():
        code = main()
    sys.exit(code)
