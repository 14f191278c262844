"""When does DynSDPB beat plain fine-tuning? Accuracy after every epoch, per arm, over training-set sizes, full
fine-tuning and LoRA, and seeds, on a decoder LM (SmolLM2-135M-Instruct on ``arith`` by default).

Every arm of a regime runs the same optimizer steps on the same rows. An *epoch* is DynSDPB's: each of the ``N``
rows once fresh and once repeated, ``2N`` sample visits, ``2N / batch`` optimizer steps; plain SFT makes two passes
over the data in the same steps. So at every epoch all arms are equal in optimizer steps and in sample visits.
After each epoch the weights go into one long-lived engine (vLLM when installed) and are scored greedily on a fixed
test split and a separate validation split (rows of the train split that no run trains on); the validation split
alone picks a run's best epoch (``regime_stats``).

Seed ``s`` fixes the training subset (the first ``N`` of a seeded permutation of the training pool, so a smaller
size is a subset of a larger one), the initialisation (LoRA) and the data order, and is shared by all arms: arms are
compared by paired differences over seeds.

    .venv/bin/python -m benchmarks.bench_regimes --config benchmarks/configs/regimes_decoder_cpu.yaml \\
        --out benchmarks/results/regimes_decoder_cpu.json

Finished runs are appended to ``<work_dir>/runs.jsonl`` and a rerun skips them; a run cut short starts over. The
``--out`` JSON (with its table and plot) is rewritten after every finished run, so a study stopped by a crash or a
lost machine still has all its finished runs in a tracked file; where ``runs.jsonl`` is missing (a fresh clone),
the runs of the ``--out`` JSON are restored into it first.
"""

from __future__ import annotations

import copy
import os
import random
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks import harness  # noqa: E402
from benchmarks.common import gold_rows, read_runs  # noqa: E402
from benchmarks.harness import append_run  # noqa: E402
from benchmarks.regime_config import RegimesStudy, reuse_runs, run_config, select, steps_per_epoch  # noqa: E402,F401
from benchmarks.regime_plots import markdown, plot  # noqa: E402
from benchmarks.regime_stats import summarize  # noqa: E402
from benchmarks.samples import sample_rows, samples_dir, write_samples  # noqa: E402
from benchmarks.study_progress import Progress, missing, run_label  # noqa: E402
from dynsdpb_selfplay.errors import UserInputError  # noqa: E402

CONFIGS = "benchmarks/configs/regimes_*.yaml"
FLAGS = [(("--regimes",), {"nargs": "+", "help": "regime labels (default: all)"})]
Config = RegimesStudy  # the harness's interface: Config, select and reuse_runs come from regime_config


def splits(study: RegimesStudy, task, seed: int, size: int):
    """``(train, validation, test)`` examples: a seeded subset of the training pool, then two fixed splits."""
    d = study.data
    order = list(range(d.pool))
    random.Random(f"regimes-{seed}").shuffle(order)
    everything = task.load("train", limit=d.validation_start + d.validation)
    train = [everything[i] for i in sorted(order[:size])]
    return train, everything[d.validation_start :], task.load("test", limit=d.test_start + d.test)[d.test_start :]


class Scorer:
    """Greedy scoring of test + validation in one engine call; weights are handed to the engine through a folder."""

    def __init__(self, engine, task, fmt, val, test, max_new_tokens: int, folder: Path) -> None:
        self.engine, self.task, self.fmt, self.val, self.test = engine, task, fmt, val, test
        self.max_new_tokens, self.folder = max_new_tokens, folder
        self.test_ids = {ex.id for ex in test}
        self.loaded = None

    def load(self, model, tokenizer) -> None:
        """Write ``model``'s weights (a merged copy for LoRA: the training copy stays a PEFT model) and load them."""
        from peft import PeftModel

        export = copy.deepcopy(model).merge_and_unload() if isinstance(model, PeftModel) else model
        self.folder.mkdir(parents=True, exist_ok=True)
        export.save_pretrained(self.folder, safe_serialization=True)
        tokenizer.save_pretrained(self.folder)
        self.engine.update_weights(str(self.folder))
        self.loaded = str(self.folder)

    def score(self) -> dict:
        from dynsdpb_selfplay.engines.base import SamplingConfig
        from dynsdpb_selfplay.evaluate import evaluate

        start = time.perf_counter()
        greedy = SamplingConfig(max_new_tokens=self.max_new_tokens, seed=0)
        result = evaluate(self.engine, self.task, self.test + self.val, self.fmt, greedy, split="test+validation")
        out = {
            "eval_s": time.perf_counter() - start,
            "tokens": result.summary["generated_tokens"],
            "truncated": result.summary["truncated"],
        }
        for split, records in (
            ("test", [r for r in result.records if r["id"] in self.test_ids]),
            ("val", [r for r in result.records if r["id"] not in self.test_ids]),
        ):
            out[split] = {k: sum(r[f"{k}_correct"] for r in records) / len(records) for k in ("flexible", "strict")}
        return out, result.records

    def rows(self, records: list[dict], epoch: int) -> list[dict]:
        """Per-sample rows of one scoring (:mod:`benchmarks.samples`)."""
        return sample_rows(records, epoch, lambda i: "test" if i in self.test_ids else "val")


def train_and_score(
    study, regime, arm, seed, scorer: Scorer, task, fmt, base: str, folder: Path, source: str, samples: Path
) -> dict:
    """One run: train the arm's steps, scoring after every epoch; writes its per-sample rows to ``samples`` and
    returns the run's record."""
    from transformers import TrainerCallback

    from dynsdpb_selfplay.precision import cpu_features
    from dynsdpb_selfplay.rounds.training import build_trainer

    cfg = run_config(study, regime, arm, seed, source)
    train, _, _ = splits(study, task, seed, regime.size)
    trainer, info = build_trainer(gold_rows(task, fmt, train), base, folder / "trainer", cfg)
    if trainer is None:
        raise UserInputError(f"{regime.label} {arm} seed {seed}: nothing to train: {info['skipped']}")
    every = steps_per_epoch(study, regime)
    epochs: list[dict] = []
    rows: list[dict] = []

    class EpochEval(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step % every == 0:
                start = time.perf_counter()
                scorer.load(trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class)
                scores, records = scorer.score()
                e = {"epoch": state.global_step // every, "step": state.global_step, **scores}
                rows.extend(scorer.rows(records, e["epoch"]))
                e["eval_s"] = time.perf_counter() - start  # weight hand-off included
                epochs.append(e)
                print(
                    f"[bench_regimes] {regime.label} {arm} seed {seed} epoch {e['epoch']}: test "
                    f"{100 * e['test']['flexible']:.1f}% val {100 * e['val']['flexible']:.1f}% "
                    f"({e['eval_s']:.0f} s to score)",
                    flush=True,
                )

    trainer.add_callback(EpochEval())
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "loss" in h]
    keys = {"loss": "loss", "ce": "dynsdpb/ce", "kd": "dynsdpb/kd_loss", "alpha": "dynsdpb/alpha"}
    curves = {name: [h.get(key) for h in logs] for name, key in keys.items()}
    return {
        "regime": regime.label,
        "arm": arm,
        "seed": seed,
        "rows": info["rows"],
        "steps": trainer.state.global_step,
        "seconds": seconds,
        "bf16": bool(trainer.args.bf16),
        "cpu": cpu_features()["capability"],
        "train_s": seconds - sum(e["eval_s"] for e in epochs),
        "epochs": epochs,
        **curves,
        "samples": write_samples(samples, rows),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def planned(study: RegimesStudy, args) -> list[dict]:
    """The base model's scoring, then every selected (regime, arm, seed), seed by seed: all arms of a seed run
    together, so a study continued on another machine keeps each seed's pairs on one."""
    runs = [
        {"regime": reg.label, "arm": arm, "seed": seed}
        for seed in args.seeds
        for reg in args.regimes
        for arm in args.arms
    ]
    return [{"regime": "-", "arm": "base", "seed": 0}, *runs]


def run(study: RegimesStudy, args, log_path: Path, on_record) -> None:
    """Every missing run, and the base model's scores (arm ``base``, epoch 0), with one engine; ``on_record`` is
    called after each record is appended to ``log_path``."""
    from dynsdpb_selfplay.engines import make_engine
    from dynsdpb_selfplay.models import resolve_model
    from dynsdpb_selfplay.tasks import get_task

    todo = missing(planned(study, args), read_runs(log_path))
    if not todo:
        return
    source = args.config
    first = run_config(study, args.regimes[0], args.arms[0], args.seeds[0], source)
    task = get_task(first.task.name, **first.task.options)
    fmt = task.get_format(name=first.task.format)
    base = resolve_model(first.model)
    _, val, test = splits(study, task, 0, 1)
    engine = make_engine(base, first.engine)
    scorer = Scorer(engine, task, fmt, val, test, study.max_new_tokens, args.work_dir / "weights")
    where = samples_dir(args.out, args.work_dir)
    regimes = {r.label: r for r in args.regimes}
    progress = Progress("bench_regimes", todo)
    try:
        for planned_run in todo:
            if planned_run["arm"] == "base":
                progress.start("the base model's scores")
                scores, records = scorer.score()
                saved = write_samples(where / "base.jsonl.gz", scorer.rows(records, 0))
                record = {**planned_run, "epochs": [{"epoch": 0, "step": 0, **scores}], "samples": saved}
                append_run(log_path, {**record, "wall_s": progress.done()})
                on_record()
                continue
            regime, arm, seed = regimes[planned_run["regime"]], planned_run["arm"], planned_run["seed"]
            folder = args.work_dir / regime.label / f"{arm}-seed{seed}"
            steps = run_config(study, regime, arm, seed, source).training.args["max_steps"]
            progress.start(f"{run_label(planned_run)}: {regime.size} rows, {steps} steps")
            samples = where / f"{regime.label}_{arm}_seed{seed}.jsonl.gz"
            record = train_and_score(study, regime, arm, seed, scorer, task, fmt, base, folder, source, samples)
            append_run(log_path, {**record, "wall_s": progress.done()})
            on_record()
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        engine.close()


def summary_and_table(study: RegimesStudy, runs: list[dict]) -> tuple[dict, str]:
    """The summary of ``runs`` and its markdown tables (what ``--summarize-only`` writes)."""
    summary = summarize(runs, study.metric, tuple(study.baselines), study.primary)
    return summary, markdown(summary, {"baselines": study.baselines})


def draw(summary: dict, runs: list[dict], path: str) -> None:
    plot(summary, path)


def main(argv: list[str] | None = None) -> int:
    return harness.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    harness.run_main(main)
