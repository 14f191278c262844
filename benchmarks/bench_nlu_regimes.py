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

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import read_config, read_runs, restore_runs, save_study  # noqa: E402
from benchmarks.regime_plots import markdown, plot  # noqa: E402
from benchmarks.regime_stats import summarize_regime  # noqa: E402
from dynsdpb_selfplay.errors import UserInputError  # noqa: E402
from dynsdpb_selfplay.signals import sigterm_unwinds  # noqa: E402

KEYS = {"model", "task", "work_dir", "seeds", "epochs", "data", "max_seq_length", "training", "regimes", "arms",
        "baselines"}  # fmt: skip
TASKS = ("gsm8k-steps",)
METRICS = ("accuracy", "mcc", "f1")


def load_bench_config(path: str) -> dict:
    data = read_config(path, KEYS)
    if data.get("task", "gsm8k-steps") not in TASKS:
        raise UserInputError(f"{path}: task: {data['task']!r} is not one of {TASKS}")
    if not data.get("regimes") or not data.get("arms"):
        raise UserInputError(f"{path}: give at least one regime (label, size, learning_rate) and one arm")
    from dynsdpb_selfplay.distill.config import DistillationArguments

    for arm, spec in data["arms"].items():
        if not isinstance(spec, dict) or set(spec) - {"trainer", "distillation"}:
            raise UserInputError(f"{path}: arms.{arm}: keys are 'trainer' (plain | dynsdpb) and 'distillation'")
        trainer, distillation = spec.get("trainer", "dynsdpb"), spec.get("distillation") or {}
        if trainer not in ("plain", "dynsdpb") or (trainer == "plain" and distillation):
            raise UserInputError(f"{path}: arms.{arm}: trainer is 'plain' (no distillation settings) or 'dynsdpb'")
        try:  # every arm is checked before hours of training, by the class's own checks
            DistillationArguments(**distillation)
        except (TypeError, ValueError) as e:
            raise UserInputError(f"{path}: arms.{arm}.distillation: {e}") from None
    return data


def splits(bench: dict, seed: int, size: int) -> tuple[list[dict], list[dict], list[dict]]:
    """``(train, validation, test)`` rows: a seeded subset of the first ``pool`` GSM8K train questions, the next
    ``validation`` ones, and the first ``test`` GSM8K test questions."""
    from dynsdpb_selfplay.nlu.data import steps_rows

    d = bench.get("data", {})
    pool, n_val = d.get("pool", 4000), d.get("validation", 400)
    everything = steps_rows("train", pool + n_val)
    order = list(range(pool))
    random.Random(f"nlu-regimes-{seed}").shuffle(order)
    train = [everything[i] for i in sorted(order[:size])]
    return train, everything[pool:], steps_rows("test", d.get("test", 400))


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


def one_run(bench: dict, regime: dict, arm: str, seed: int, val, test, work_dir: Path) -> dict:
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

    spec = bench["arms"][arm]
    path = encoder_path(bench.get("model", "all-minilm-l6-v2"))
    max_len = bench.get("max_seq_length", 128)
    train, _, _ = splits(bench, seed, regime["size"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = bench.get("training", {}).get("per_device_train_batch_size", 16)
    every = math.ceil(2 * regime["size"] / batch)  # an epoch: 2N sample visits, as in bench_regimes
    epochs = regime.get("epochs", bench.get("epochs", 10))
    args = TrainingArguments(**{"output_dir": str(work_dir / "scratch"), "use_cpu": True, "report_to": "none",
                                "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True, "seed": seed,
                                **bench.get("training", {}), "learning_rate": regime["learning_rate"],
                                "max_steps": epochs * every})  # fmt: skip
    set_seed(seed)  # the new classification head is drawn from this seed
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    trainer = Trainer(model=model, args=args, train_dataset=encode_rows(train, tokenizer, max_len),
                      data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    if spec.get("trainer", "dynsdpb") == "dynsdpb":
        attach_dynsdpb(trainer, **spec.get("distillation", {}))
    sets = {name: {"rows": list(encode_rows(rows, tokenizer, max_len)), "tokenizer": tokenizer,
                   "labels": [r["label"] for r in rows]} for name, rows in (("val", val), ("test", test))}  # fmt: skip
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
    print(f"[bench_nlu_regimes] {regime['label']} {arm} seed {seed}: test accuracy % per epoch {curve} "
          f"({seconds:.0f} s)", flush=True)  # fmt: skip
    return {"regime": regime["label"], "arm": arm, "seed": seed, "rows": len(train),
            "steps": trainer.state.global_step, "seconds": seconds, "epochs": scored,
            "loss": [h["loss"] for h in logs], "alpha": [h.get("dynsdpb/alpha") for h in logs],
            "kd": [h.get("dynsdpb/kd_loss") for h in logs],
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip


def summary_and_table(bench: dict, runs: list[dict]) -> tuple[dict, str]:
    """The summary per metric of ``runs`` and its markdown tables (what ``--summarize-only`` writes)."""
    baselines = tuple(bench.get("baselines", ["plain", "repeat"]))
    summary, tables = {}, []
    for metric in METRICS:  # the first one (accuracy unless the config says) is the one plotted
        summary[metric] = {"metric": metric, "base": None, "regimes": {}}
        for label in dict.fromkeys(r["regime"] for r in runs):
            mine = [r for r in runs if r["regime"] == label]
            summary[metric]["regimes"][label] = summarize_regime(mine, metric, baselines)
        tables.append(f"### {metric}\n\n" + markdown(summary[metric], {"baselines": list(baselines)}))
    return summary, "\n".join(tables)


def write_results(bench: dict, seeds: list[int], log_path: Path, out: str | None, start: float) -> str:
    """Summarize every run in ``log_path`` per metric into ``out`` (JSON, with a .md table and a PNG of accuracy
    beside it); returns the tables."""
    runs = read_runs(log_path)
    summary, table = summary_and_table(bench, runs)
    save_study({"benchmark": "nlu_regimes", "config": {**bench, "seeds": seeds}, "summary": summary, "runs": runs,
                "wall_s_this_invocation": time.perf_counter() - start}, out, table,
               lambda path: plot(summary["accuracy"], path))  # fmt: skip
    return table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="study YAML (benchmarks/configs/regimes_nlu_*.yaml)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the config's)")
    p.add_argument("--arms", nargs="+", help="arms (default: all of the config's)")
    p.add_argument("--regimes", nargs="+", help="regime labels (default: all)")
    p.add_argument("--summarize-only", action="store_true", help="only rebuild JSON/MD/PNG from runs.jsonl")
    p.add_argument("--out", help="JSON result path (a PNG plot and a .md table are written beside it)")
    args = p.parse_args()
    start = time.perf_counter()
    try:
        bench = load_bench_config(args.config)
        seeds = args.seeds or bench.get("seeds", [0, 1, 2, 3, 4])
        arms = args.arms or list(bench["arms"])
        regimes = [r for r in bench["regimes"] if not args.regimes or r["label"] in args.regimes]
        work_dir = Path(bench.get("work_dir", "runs/bench_nlu_regimes"))
        work_dir.mkdir(parents=True, exist_ok=True)
        log_path = work_dir / "runs.jsonl"
        restore_runs(log_path, args.out, "nlu_regimes")
        done = {(r["regime"], r["arm"], r["seed"]) for r in read_runs(log_path)}
        todo = [(g, a, s) for s in seeds for g in regimes for a in arms if (g["label"], a, s) not in done]
        if todo and not args.summarize_only:
            _, val, test = splits(bench, 0, 1)
            for regime, arm, seed in todo:
                record = one_run(bench, regime, arm, seed, val, test, work_dir)
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                write_results(bench, seeds, log_path, args.out, start)  # a crash or a cut loses no finished run
    except UserInputError as e:
        print(f"bench_nlu_regimes: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench_nlu_regimes: interrupted; finished runs are kept and the same command resumes", file=sys.stderr)
        return 130
    print(write_results(bench, seeds, log_path, args.out, start))
    return 0


if __name__ == "__main__":
    with sigterm_unwinds():
        code = main()
    sys.exit(code)
