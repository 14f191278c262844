"""The regime study on an encoder classifier (the paper's NLU half): plain fine-tuning against DynSDPB arms after
every epoch, over training-set sizes and seeds (all-MiniLM-L6-v2 on ``gsm8k-steps`` by default, offline).

As in ``bench_regimes``: an epoch is DynSDPB's (each row once fresh and once repeated: ``2N`` sample visits, two
passes of plain training), the same optimizer steps for every arm, so arms are compared at equal steps and visits.
After each epoch the model predicts a fixed test split and a separate validation split (GSM8K train questions
outside the training pool), and the validation split alone picks a run's best epoch.
Seed ``s`` fixes the training subset (nested across sizes), the new classification head and the data order.
Finished runs go to ``<work_dir>/runs.jsonl`` (a rerun skips them), and the ``--out`` JSON is rewritten after each,
so a cut study keeps its finished runs in a tracked file and a fresh clone resumes from it.

    DYNSDPB_GSM8K_DIR=../shared/data/gsm8k .venv/bin/python -m benchmarks.bench_nlu_regimes \\
        --config benchmarks/configs/regimes_nlu_cpu.yaml --out benchmarks/results/regimes_nlu_cpu.json
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks import harness  # noqa: E402
from benchmarks.common import read_runs  # noqa: E402
from benchmarks.harness import TrainingStudyConfig, append_run, built_values, helped  # noqa: E402
from benchmarks.regime_config import Arm, Regime  # noqa: E402
from benchmarks.regime_plots import markdown, plot  # noqa: E402
from benchmarks.regime_stats import summarize_regime  # noqa: E402
from benchmarks.study_progress import Progress, missing, run_label  # noqa: E402

CONFIGS = "benchmarks/configs/regimes_nlu_*.yaml"
FLAGS = [(("--regimes",), {"nargs": "+", "help": "regime labels (default: all)"})]
METRICS = ("accuracy", "mcc", "f1")


@dataclass
class NluArm(Arm):
    """An encoder arm: plain training, or DynSDPB with DistillationArguments fields."""

    def __post_init__(self) -> None:
        from dynsdpb_selfplay.distill.config import DistillationArguments

        if self.trainer not in ("plain", "dynsdpb") or (self.trainer == "plain" and self.distillation):
            raise ValueError("trainer: 'plain' (no distillation settings) or 'dynsdpb'")
        try:  # every arm is checked before hours of training, by the class's own checks
            DistillationArguments(**self.distillation)
        except (TypeError, ValueError) as e:
            raise ValueError(f"distillation: {e}") from None


@dataclass
class NluData:
    pool: int = helped(4000, "training rows drawn from: the first `pool` GSM8K train questions")
    validation: int = helped(400, "validation rows: the next GSM8K train questions")
    test: int = helped(400, "test rows: the first GSM8K test questions")


@dataclass
class NluRegimesStudy(TrainingStudyConfig):
    """The encoder regime study's YAML (``benchmarks/configs/regimes_nlu_*.yaml``)."""

    BENCHMARK = "nlu_regimes"

    seeds: list[int] = helped([0, 1, 2, 3, 4], "run seeds: the training subset, the new head and the data order")
    work_dir: str = helped("runs/bench_nlu_regimes", "runs.jsonl and the trainer's scratch folder")
    model: str = helped("all-minilm-l6-v2", "encoder name or path")
    task: str = helped("gsm8k-steps", "the classification task (gsm8k-steps)")
    epochs: int = helped(10, "epochs of every regime (an epoch: each row once fresh and once repeated)")
    data: NluData = helped(NluData(), "the training pool and the validation and test splits")
    max_seq_length: int = helped(128, "tokens per row")
    regimes: list[Regime] = helped([], "the regimes (label, size, learning_rate, epochs)")
    arms: dict[str, NluArm] = helped({}, "arm name -> {trainer: plain | dynsdpb, distillation}")
    baselines: list[str] = helped(["plain", "repeat"], "arms every other arm is paired with")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.arms = built_values(self.arms, NluArm)
        if self.task != "gsm8k-steps":
            raise ValueError(f"task: {self.task!r} is not one of ('gsm8k-steps',)")
        if not self.regimes or not self.arms:
            raise ValueError("regimes: give at least one regime (label, size, learning_rate) and one arm")
        labels = [r.label for r in self.regimes]
        if len(set(labels)) < len(labels):
            raise ValueError("regimes: each needs a distinct 'label'")


Config = NluRegimesStudy


def select(study: NluRegimesStudy, args) -> NluRegimesStudy:
    args.regimes = [r for r in study.regimes if not args.regimes or r.label in args.regimes]
    return study


def splits(study: NluRegimesStudy, seed: int, size: int) -> tuple[list[dict], list[dict], list[dict]]:
    """``(train, validation, test)`` rows: a seeded subset of the first ``pool`` GSM8K train questions, the next
    ``validation`` ones, and the first ``test`` GSM8K test questions."""
    from dynsdpb_selfplay.nlu.data import steps_rows

    d = study.data
    everything = steps_rows("train", d.pool + d.validation)
    order = list(range(d.pool))
    random.Random(f"nlu-regimes-{seed}").shuffle(order)
    train = [everything[i] for i in sorted(order[:size])]
    return train, everything[d.pool :], steps_rows("test", d.test)


def _predict(model, encoded, batch: int = 64) -> list[int]:
    import torch
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(encoded["tokenizer"])
    out = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(encoded["rows"]), batch):
            inputs = collate(encoded["rows"][i : i + batch])
            out += model(**{k: v.to(model.device) for k, v in inputs.items()}).logits.argmax(-1).tolist()
    model.train(was_training)
    return out


def one_run(study: NluRegimesStudy, regime: Regime, arm: str, seed: int, val, test, work_dir: Path) -> dict:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    from dynsdpb_selfplay import attach_dynsdpb
    from dynsdpb_selfplay.nlu.compare import encode_rows
    from dynsdpb_selfplay.nlu.data import encoder_path, metrics

    spec = study.arms[arm]
    path = encoder_path(study.model)
    max_len = study.max_seq_length
    train, _, _ = splits(study, seed, regime.size)
    tokenizer = AutoTokenizer.from_pretrained(path)
    every = math.ceil(2 * regime.size / study.step_rows)  # an epoch: 2N sample visits, as in bench_regimes
    epochs = regime.epochs or study.epochs
    args = TrainingArguments(
        **{
            "output_dir": str(work_dir / "scratch"),
            "use_cpu": True,
            "report_to": "none",
            "save_strategy": "no",
            "logging_steps": 1,
            "disable_tqdm": True,
            "seed": seed,
            **study.training,
            "learning_rate": regime.learning_rate,
            "max_steps": epochs * every,
        }
    )
    set_seed(seed)  # the new classification head is drawn from this seed
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encode_rows(train, tokenizer, max_len),
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    if spec.trainer == "dynsdpb":
        attach_dynsdpb(trainer, **spec.distillation)
    sets = {
        name: {
            "rows": list(encode_rows(rows, tokenizer, max_len)),
            "tokenizer": tokenizer,
            "labels": [r["label"] for r in rows],
        }
        for name, rows in (("val", val), ("test", test))
    }
    for s in sets.values():
        s["rows"] = [{k: v for k, v in r.items() if k != "label"} for r in s["rows"]]
    scored: list[dict] = []

    class EpochEval(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if state.global_step % every == 0:
                start = time.perf_counter()
                e = {"epoch": state.global_step // every, "step": state.global_step}
                for name, s in sets.items():
                    e[name] = metrics(_predict(trainer.model, s), s["labels"])
                e["eval_s"] = time.perf_counter() - start
                scored.append(e)

    trainer.add_callback(EpochEval())
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "loss" in h]
    curve = " ".join(f"{100 * e['test']['accuracy']:.0f}" for e in scored)
    print(
        f"[bench_nlu_regimes] {regime.label} {arm} seed {seed}: test accuracy % per epoch {curve} ({seconds:.0f} s)",
        flush=True,
    )
    return {
        "regime": regime.label,
        "arm": arm,
        "seed": seed,
        "rows": len(train),
        "steps": trainer.state.global_step,
        "seconds": seconds,
        "epochs": scored,
        "loss": [h["loss"] for h in logs],
        "alpha": [h.get("dynsdpb/alpha") for h in logs],
        "kd": [h.get("dynsdpb/kd_loss") for h in logs],
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def planned(study: NluRegimesStudy, args) -> list[dict]:
    """Every selected (regime, arm, seed), seed by seed."""
    return [{"regime": g.label, "arm": a, "seed": s} for s in args.seeds for g in args.regimes for a in args.arms]


def run(study: NluRegimesStudy, args, log_path: Path, on_record) -> None:
    """Every missing (regime, arm, seed) run, appended to ``log_path`` and followed by ``on_record()``."""
    todo = missing(planned(study, args), read_runs(log_path))
    if todo:
        _, val, test = splits(study, 0, 1)
    regimes, progress = {g.label: g for g in args.regimes}, Progress("bench_nlu_regimes", todo)
    for p in todo:
        progress.start(run_label(p))
        record = one_run(study, regimes[p["regime"]], p["arm"], p["seed"], val, test, args.work_dir)
        append_run(log_path, {**record, "wall_s": progress.done()})
        on_record()


def summary_and_table(study: NluRegimesStudy, runs: list[dict]) -> tuple[dict, str]:
    """The summary per metric of ``runs`` and its markdown tables (what ``--summarize-only`` writes)."""
    baselines = tuple(study.baselines)
    summary, tables = {}, []
    for metric in METRICS:  # the first one (accuracy) is the one plotted
        summary[metric] = {"metric": metric, "base": None, "regimes": {}}
        for label in dict.fromkeys(r["regime"] for r in runs):
            mine = [r for r in runs if r["regime"] == label]
            summary[metric]["regimes"][label] = summarize_regime(mine, metric, baselines)
        tables.append(f"### {metric}\n\n" + markdown(summary[metric], {"baselines": list(baselines)}))
    return summary, "\n".join(tables)


def draw(summary: dict, runs: list[dict], path: str) -> None:
    plot(summary["accuracy"], path)


def main(argv: list[str] | None = None) -> int:
    return harness.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    harness.run_main(main)
