"""The decoder regime study's configuration (``benchmarks/configs/regimes_decoder_*.yaml``) and what follows from it
alone: each run's validated run config (:func:`run_config`), the selection checked before anything trains
(:func:`select`), and which finished runs of another study are the same runs (:func:`reuse_runs`).
:mod:`benchmarks.bench_regimes` trains and scores them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import read_runs
from benchmarks.harness import TrainingStudyConfig, append_run, built_values, from_mapping, helped
from dynsdpb_selfplay.errors import UserInputError


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


def steps_per_epoch(study: RegimesStudy, regime: Regime) -> int:
    """Optimizer steps of one epoch: ``2N`` sample visits (:mod:`benchmarks.bench_regimes`)."""
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
