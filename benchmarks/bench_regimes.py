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
import json
import math
import os
import random
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks import harness  # noqa: E402
from benchmarks.common import gold_rows, read_runs  # noqa: E402
from benchmarks.harness import TrainingStudyConfig, append_run, built_values, from_mapping, helped  # noqa: E402
from benchmarks.regime_plots import markdown, plot  # noqa: E402
from benchmarks.regime_stats import primary_outcome, summarize_regime  # noqa: E402
from benchmarks.samples import sample_rows, samples_dir, write_samples  # noqa: E402
from dynsdpb_selfplay.errors import UserInputError  # noqa: E402

CONFIGS = "benchmarks/configs/regimes_*.yaml"
FLAGS = [(("--regimes",), {"nargs": "+", "help": "regime labels (default: all)"})]


@dataclass
class Regime:
    """One training regime: a training-set size and learning rate (and LoRA, for the decoder study)."""

    label: str = helped("", "the name the regime's runs are recorded under (distinct)")
    size: int = helped(0, "training rows (the first of a seeded permutation of the pool: nested across sizes)")
    learning_rate: float | None = helped(None, "the learning rate of every arm")
    epochs: int | None = helped(None, "epochs of this regime (default: the study's)")

    def __post_init__(self) -> None:
        if not self.label:
            raise ValueError("label: give each regime a label")
        if self.size < 1:
            raise ValueError(f"size: must be >= 1 (got {self.size})")
        if self.learning_rate is None or self.learning_rate <= 0:
            raise ValueError(f"learning_rate: give the regime's learning rate, > 0 (got {self.learning_rate})")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs: must be >= 1 (got {self.epochs})")


@dataclass
class LoraRegime(Regime):
    lora: dict | None = helped(None, "the run config's training.lora (none: full fine-tuning)")


@dataclass
class Arm:
    """What an arm changes: the trainer and its DynSDPBConfig distillation fields."""

    trainer: str = helped("dynsdpb", "the run config's training.trainer")
    distillation: dict = helped({}, "DynSDPBConfig fields (distillation_*) of the arm")
    training: dict = helped(
        {},
        "other training-section fields of the arm, applied last (e.g. label_smoothing_factor: 0.1); a 'lora' "
        "mapping is merged into the regime's (e.g. lora: {lora_dropout: 0.1})",
    )

    def __post_init__(self) -> None:
        for key in ("trainer", "learning_rate", "max_steps", "save_steps"):
            if key in self.training:
                raise ValueError(f"training: {key} is the study's to set (trainer, regime, epochs), not an arm's")
        if "lora" in self.training and not isinstance(self.training["lora"], dict):
            raise ValueError("training.lora: give a mapping of fields merged into the regime's lora")


@dataclass
class Primary:
    """The pre-declared primary outcome: one arm minus each of several controls, paired by seed at one epoch, with
    the p-values of the paired t-tests Holm-adjusted over the controls."""

    arm: str = helped("", "the arm under test (e.g. dynamic)")
    versus: list[str] = helped([], "the controls it is compared with")
    how: str = helped("final", "which epoch: final (the last) or val (validation-selected)")
    alpha: float = helped(0.05, "family-wise error rate over the controls (Holm)")

    def __post_init__(self) -> None:
        if not self.arm or not self.versus:
            raise ValueError("primary: give arm and versus (the controls)")
        if self.how not in ("final", "val"):
            raise ValueError(f"primary.how: final or val, not {self.how!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"primary.alpha: must be in (0, 1) (got {self.alpha})")


@dataclass
class RegimeData:
    pool: int = helped(4000, "training rows drawn from: the first `pool` of the train split")
    validation_start: int | None = helped(None, "where the validation rows start in the train split (default: pool)")
    validation: int = helped(100, "validation rows (they alone pick a run's best epoch)")
    test: int = helped(200, "test rows: `test` rows of the test split from `test_start`")
    test_start: int = helped(
        0, "where the test rows start in the test split (a new study can skip rows earlier ones used)"
    )

    def __post_init__(self) -> None:
        if self.test < 1 or self.test_start < 0:
            raise ValueError(f"test: >= 1 rows from test_start >= 0 (got {self.test} from {self.test_start})")
        self.validation_start = self.pool if self.validation_start is None else self.validation_start
        if self.validation_start < self.pool:
            raise ValueError(f"validation_start: {self.validation_start} overlaps the training pool ({self.pool} rows)")


@dataclass
class RegimesStudy(TrainingStudyConfig):
    """The decoder regime study's YAML (``benchmarks/configs/regimes_decoder_*.yaml``)."""

    BENCHMARK = "regimes"

    seeds: list[int] = helped([0, 1, 2, 3, 4], "run seeds: the training subset, initialisation and data order")
    work_dir: str = helped("runs/bench_regimes", "runs.jsonl and scratch weights")
    epochs: int = helped(4, "epochs of every regime (an epoch: each row once fresh and once repeated)")
    task: dict = helped({}, "the run config's task section (name, options, format)")
    data: RegimeData = helped(RegimeData(), "the training pool and the validation and test splits")
    max_new_tokens: int = helped(128, "greedy scoring's token limit")
    engine: dict = helped({}, "the run config's engine section (scoring)")
    regimes: list[LoraRegime] = helped([], "the regimes (label, size, learning_rate, lora, epochs)")
    arms: dict[str, Arm] = helped({}, "arm name -> {trainer, distillation}")
    metric: str = helped("flexible", "the accuracy summarized: flexible or strict")
    baselines: list[str] = helped(["sft", "repeat"], "arms every other arm is paired with")
    reuse_runs: str | None = helped(None, "another study's result JSON whose identical runs are reused")
    primary: Primary | None = helped(None, "the pre-declared primary outcome (arm, versus, how, alpha)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.arms = built_values(self.arms, Arm)
        if not self.regimes or not self.arms:
            raise ValueError("regimes: give at least one regime (size, learning_rate) and one arm")
        labels = [r.label for r in self.regimes]
        if len(set(labels)) < len(labels):
            raise ValueError("regimes: each needs a distinct 'label'")
        if not self.task:
            raise ValueError("task: give the run config's task section (name, options, format)")
        if self.metric not in ("flexible", "strict"):
            raise ValueError(f"metric: flexible or strict, not {self.metric!r}")
        if self.primary is not None:
            missing = [a for a in (self.primary.arm, *self.primary.versus) if a not in self.arms]
            if missing:
                raise ValueError(f"primary: {missing} not among the arms ({', '.join(self.arms)})")

    def epochs_of(self, regime: Regime) -> int:
        return regime.epochs or self.epochs


Config = RegimesStudy


def steps_per_epoch(study: RegimesStudy, regime: Regime) -> int:
    """Optimizer steps of one epoch: ``2N`` sample visits (module docstring)."""
    return math.ceil(2 * regime.size / study.step_rows)


def run_config(study: RegimesStudy, regime: LoraRegime, arm: str, seed: int, source: str):
    """The validated run config of one (regime, arm, seed): the study's training section, the regime's size,
    learning rate and LoRA, the arm's trainer and distillation, and the same step count for every arm."""
    from dynsdpb_selfplay.rounds.config import from_dict

    spec = study.arms[arm]
    extra = dict(spec.training)
    if "lora" in extra and not regime.lora:
        raise UserInputError(f"{source}: arm {arm} changes lora, but regime {regime.label} trains without LoRA")
    lora = {**regime.lora, **extra.pop("lora")} if "lora" in extra else regime.lora
    training = {
        **study.training,
        "learning_rate": regime.learning_rate,
        "trainer": spec.trainer,
        **spec.distillation,
        "max_steps": study.epochs_of(regime) * steps_per_epoch(study, regime),
        "save_steps": 10**9,
        "lora": lora,
        **extra,
    }
    data = {"model": study.model, "seed": seed, "task": study.task, "training": training, "engine": study.engine}
    return from_dict(data, source=f"{source} (regime {regime.label}, arm {arm})")


def select(study: RegimesStudy, args) -> RegimesStudy:
    """The ``--regimes`` chosen; every selected run's config is checked before anything trains."""
    args.regimes = [r for r in study.regimes if not args.regimes or r.label in args.regimes]
    for regime in args.regimes:
        for arm in args.arms:
            run_config(study, regime, arm, args.seeds[0], args.config)
    return study


SCORING_KEYS = ("model", "task", "data", "max_new_tokens", "engine")


def reuse_runs(study: RegimesStudy, args, log_path: Path, source: str) -> int:
    """Copy into ``log_path`` the finished runs of another study's results JSON (the config's ``reuse_runs``) that
    this study would repeat exactly: the same (regime, arm, seed) with the same run config (model, task, data order,
    training settings and steps, engine) and the same scoring (``SCORING_KEYS``). A new arm is then paired with
    baseline runs that exist instead of training them again. Reused records carry ``reused_from``; runs already in
    the log stay. Returns how many were copied; a results file that scores differently raises."""
    from dynsdpb_selfplay.rounds.config import to_dict

    path = study.reuse_runs
    if not path:
        return 0
    try:
        other = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserInputError(f"{source}: reuse_runs: cannot read {path} ({e})") from None
    if other.get("benchmark") != "regimes":
        raise UserInputError(f"{source}: reuse_runs: {path} is not a bench_regimes result")
    theirs = from_mapping(RegimesStudy, other["config"], f"{source}: reuse_runs: {path}")
    for key in SCORING_KEYS:
        if getattr(theirs, key) != getattr(study, key):
            there, here = getattr(theirs, key), getattr(study, key)
            raise UserInputError(
                f"{source}: reuse_runs: {path} scores with another '{key}' ({there!r} there, "
                f"{here!r} here); its runs cannot be paired with these"
            )
    done = {(r["regime"], r["arm"], r["seed"]) for r in read_runs(log_path)}
    mine = {r.label: r for r in args.regimes}
    their_regimes = {r.label: r for r in theirs.regimes}
    copied = []
    for run in other.get("runs", []):
        key = (run["regime"], run["arm"], run["seed"])
        if key in done:
            continue
        if run["arm"] != "base":
            label, arm, seed = key
            if label not in mine or label not in their_regimes or seed not in args.seeds:
                continue
            if arm not in study.arms or arm not in theirs.arms:
                continue
            ours = to_dict(run_config(study, mine[label], arm, seed, source))
            if ours != to_dict(run_config(theirs, their_regimes[label], arm, seed, path)):
                continue
        copied.append({**run, "reused_from": path})
    for record in copied:
        append_run(log_path, record)
    if copied:
        print(
            f"bench_regimes: reused {len(copied)} finished runs of {path} (identical run and scoring configs)",
            flush=True,
        )
    return len(copied)


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


def run(study: RegimesStudy, args, log_path: Path, on_record) -> None:
    """Every missing run, and the base model's scores (arm ``base``, epoch 0), with one engine; ``on_record`` is
    called after each record is appended to ``log_path``."""
    from dynsdpb_selfplay.engines import make_engine
    from dynsdpb_selfplay.models import resolve_model
    from dynsdpb_selfplay.tasks import get_task

    done = {(r["regime"], r["arm"], r["seed"]) for r in read_runs(log_path)}
    todo = [
        (reg, arm, seed)
        for seed in args.seeds
        for reg in args.regimes
        for arm in args.arms
        if (reg.label, arm, seed) not in done
    ]
    if not todo and ("-", "base", 0) in done:
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
    try:
        if ("-", "base", 0) not in done:
            scores, records = scorer.score()
            saved = write_samples(where / "base.jsonl.gz", scorer.rows(records, 0))
            record = {"regime": "-", "arm": "base", "seed": 0, "epochs": [{"epoch": 0, "step": 0, **scores}]}
            append_run(log_path, {**record, "samples": saved})
            on_record()
        for regime, arm, seed in todo:
            folder = args.work_dir / regime.label / f"{arm}-seed{seed}"
            steps = run_config(study, regime, arm, seed, source).training.args["max_steps"]
            print(f"[bench_regimes] {regime.label} {arm} seed {seed}: {regime.size} rows, {steps} steps", flush=True)
            samples = where / f"{regime.label}_{arm}_seed{seed}.jsonl.gz"
            record = train_and_score(study, regime, arm, seed, scorer, task, fmt, base, folder, source, samples)
            append_run(log_path, record)
            on_record()
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        engine.close()


def machines(runs: list[dict]) -> list[dict]:
    """The processor kinds and number formats the trained runs came from, with their run counts: a study's paired
    differences mean something only within one (runs recorded before these fields existed count as unknown)."""
    kinds = Counter((r.get("cpu"), r.get("bf16")) for r in runs if r["arm"] != "base")
    return [{"cpu": cpu, "bf16": bf16, "runs": n} for (cpu, bf16), n in kinds.items()]


def seeds_across_machines(runs: list[dict]) -> list[str]:
    """``"<regime> seed <s>"`` for each seed whose arms ran on more than one processor kind or number format: its
    paired differences compare more than the arm. A study continued on another machine keeps every seed's arms
    together (runs go seed by seed), so this is empty unless a machine change fell between two arms of a seed."""
    kinds: dict[tuple, set] = {}
    for r in runs:
        if r["arm"] != "base":
            kinds.setdefault((r["regime"], r["seed"]), set()).add((r.get("cpu"), r.get("bf16")))
    return [f"{regime} seed {seed}" for (regime, seed), k in kinds.items() if len(k) > 1]


def summarize(
    runs: list[dict], metric: str = "flexible", baselines: tuple[str, ...] = ("sft", "repeat"), primary=None
) -> dict:
    """Per regime: :func:`regime_stats.summarize_regime`; with ``primary`` (a :class:`Primary`), also its outcome
    per regime (:func:`regime_stats.primary_outcome`)."""
    base = next((r for r in runs if r["arm"] == "base"), None)
    out = {
        "metric": metric,
        "base": base["epochs"][0] if base else None,
        "machines": machines(runs),
        "seeds_across_machines": seeds_across_machines(runs),
        "regimes": {},
    }
    for label in dict.fromkeys(r["regime"] for r in runs if r["arm"] != "base"):
        mine = [r for r in runs if r["regime"] == label]
        out["regimes"][label] = summarize_regime(mine, metric, baselines)
        if primary is not None:
            out.setdefault("primary", {})[label] = primary_outcome(mine, metric, primary)
    return out


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
