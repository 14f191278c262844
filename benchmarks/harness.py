"""The one ``main`` of the studies (``bench_gsm8k``, ``bench_regimes``, ``bench_nlu_regimes``, ``bench_self_training``)
and the typed base of their configs.

A study module says what it varies (its config dataclass, ``Config``), how one run is done (``run``) and how runs are
summarized (``summary_and_table``, ``draw``); this module does the rest, the same way for every study:

- the config is read from YAML into the dataclass through the library's schema code
  (:func:`dynsdpb_selfplay.rounds.schema.build`): an unknown key, a wrong type or a failed ``__post_init__`` check
  exits 2 with one line naming the file and the key (``study.yaml: regimes[0].size: ...``);
- the selection flags ``--seeds --arms --work-dir --summarize-only --status --out`` (and the study's own);
  ``--status`` says which of the study's ``planned(config, args)`` runs are finished and how long the rest will take,
  without reading an outcome (:mod:`benchmarks.study_progress`);
- finished runs are appended to ``<work_dir>/runs.jsonl`` and a rerun skips them; where the log is missing (a fresh
  clone), the runs of the ``--out`` JSON are restored into it first (:func:`common.restore_runs`), and a study with
  ``reuse_runs`` copies another study's identical runs;
- the ``--out`` JSON, its table and its figure are rewritten after every finished run (:func:`common.save_study`),
  so a study cut off keeps all its finished runs in a tracked file;
- exit codes: 0 done, 2 a bad config or a failed run the same command resumes, 130 interrupted (Ctrl-C or ``kill``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import study_progress
from benchmarks.common import read_runs, restore_runs, save_study
from dynsdpb_selfplay.errors import UserInputError
from dynsdpb_selfplay.rounds.training_config import ROUND_TRAINING_DEFAULTS

# The one default of a study's ``training.per_device_train_batch_size``: a round's (4), so a study that leaves it
# out trains with the batch ``dynsdpb run`` trains with, and every use of it (a run config, the steps of an epoch,
# an encoder's TrainingArguments) reads the same value from the config. Before, the decoder study counted an epoch's
# steps with 8 and trained with the round's 4, and the encoder study counted with 16 and trained with HF's 8. Every
# committed study config sets the batch, so none of their effective values changed.
DEFAULT_BATCH_SIZE = ROUND_TRAINING_DEFAULTS["per_device_train_batch_size"]


def helped(default, text: str, **kw):
    """A dataclass field with its ``help`` (``default`` a list, a dict or a dataclass is copied for each instance)."""
    if isinstance(default, list | dict) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": text}, **kw)
    return field(default=default, metadata={"help": text}, **kw)


@dataclass
class StudyConfig:
    """The keys every study has. A study module subclasses it (adding ``arms`` and what it varies) and sets
    ``BENCHMARK``, the name its result JSON is recorded under."""

    BENCHMARK: typing.ClassVar[str] = ""

    seeds: list[int] = helped([0, 1, 2], "run seeds; every arm runs every seed, and arms are paired by seed")
    work_dir: str = helped("runs/study", "runs.jsonl and the runs' folders (--work-dir overrides)")

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        if len(set(self.seeds)) < len(self.seeds):
            raise ValueError(f"seeds: {self.seeds} repeats a seed")


@dataclass
class TrainingStudyConfig(StudyConfig):
    """A study that fine-tunes a model itself: its ``training`` section, with the batch size filled in."""

    model: str = helped("smollm2-135m-instruct", "model name or path")
    training: dict = helped({}, f"every run's training settings; per_device_train_batch_size: {DEFAULT_BATCH_SIZE}")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.training = {"per_device_train_batch_size": DEFAULT_BATCH_SIZE, **self.training}
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            value = self.training.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"training: {key} must be a whole number >= 1 (got {value!r})")

    @property
    def step_rows(self) -> int:
        """Rows per optimizer step (one process): batch size times gradient accumulation."""
        return self.training["per_device_train_batch_size"] * self.training.get("gradient_accumulation_steps", 1)


def coerce_values(cls, data: dict) -> dict:
    """``data`` with the values of every ``dict[str, <dataclass>]`` field built (the schema keeps a mapping's values
    as they are), so that their errors name the key in full (``arms.broken.distillation: ...``)."""
    from dynsdpb_selfplay.rounds.schema import coerce

    hints, out = typing.get_type_hints(cls), dict(data)
    for key, value in data.items():
        args = typing.get_args(hints.get(key))
        if typing.get_origin(hints.get(key)) is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
            if not isinstance(value, dict):
                raise UserInputError(f"{key}: expected a mapping, got {type(value).__name__}")
            out[key] = {name: coerce(v, args[1], f"{key}.{name}") for name, v in value.items()}
    return out


def built_values(mapping: dict, tp) -> dict:
    """``mapping`` with raw dict values built as ``tp`` (a config constructed in code rather than loaded)."""
    from dynsdpb_selfplay.rounds.schema import coerce

    return {k: v if isinstance(v, tp) else coerce(v, tp, k) for k, v in mapping.items()}


def from_mapping(cls, data: dict, source: str):
    """The study config ``cls`` from a mapping (a YAML file's, or the ``config`` of a result JSON); errors are
    :class:`UserInputError` naming ``source`` and the key."""
    from dynsdpb_selfplay.rounds.schema import build

    if not isinstance(data, dict):
        raise UserInputError(f"{source}: expected a mapping at the top level")
    try:
        return build(cls, coerce_values(cls, data))
    except UserInputError as e:
        raise UserInputError(f"{source}: {e}") from None


def load_study(cls, path: str):
    """The study config ``cls`` read from the YAML file ``path``."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserInputError(f"{path}: cannot read the study config ({e})") from None
    return from_mapping(cls, data, str(path))


def recorded_config(config, args) -> dict:
    """The config a result JSON records: the study's, with the seeds and work folder this invocation used."""
    return {**dataclasses.asdict(config), "seeds": args.seeds, "work_dir": str(args.work_dir)}


def append_run(log_path: Path, record: dict) -> None:
    """Add one finished run to the study's ``runs.jsonl``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as f:
        f.write(json.dumps(record) + "\n")


def study_name(study) -> str:
    """``bench_regimes`` for the module ``benchmarks.bench_regimes``, also where it runs as ``__main__``."""
    return (study.__spec__.name if getattr(study, "__spec__", None) else study.__name__).rsplit(".", 1)[-1]


def _parser(study) -> argparse.ArgumentParser:
    name = study_name(study)
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=study.__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help=f"study YAML ({study.CONFIGS})")
    g = p.add_argument_group("selection")
    g.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the config's)")
    g.add_argument("--arms", nargs="+", help="arms, by name (default: the config's)")
    g.add_argument("--work-dir", help="runs.jsonl and the runs' folders (default: the config's work_dir)")
    g.add_argument("--summarize-only", action="store_true", help="train nothing: rebuild JSON/MD/PNG from runs.jsonl")
    g.add_argument(
        "--status", action="store_true", help="train and summarize nothing: finished and missing runs, time left"
    )
    for flags, kw in getattr(study, "FLAGS", ()):
        g.add_argument(*flags, **kw)
    o = p.add_argument_group("output")
    o.add_argument("--out", help="JSON result path (a PNG figure and a .md table are written beside it)")
    return p


def main(study, argv: list[str] | None = None) -> int:
    """Run the study module ``study`` from the command line ``argv``. The module provides:

    ``Config`` (a :class:`StudyConfig` subclass), ``CONFIGS`` (where its YAML files are, for ``--help``), ``FLAGS``
    (its own ``((flags...), add_argument kwargs)``, optional), ``select(config, args)`` (check the selection and
    every run's config before anything trains; returns the config to record, optional), ``reuse_runs(config, args,
    log_path, source)`` (optional), ``run(config, args, log_path, on_record)`` (every missing run, each appended with
    :func:`append_run` and followed by ``on_record()``; returns extra result keys, e.g. ``{"pipelines": [...]}``),
    ``keep(config, args, record)`` (which logged runs the result holds, optional: all), ``planned(config, args)``
    (the key fields of every selected run in the order ``run`` does them: ``--status``),
    ``summary_and_table(config, runs)`` and ``draw(summary, runs, path)``."""
    name = study_name(study)
    args = _parser(study).parse_args(argv)
    start, extras, log_path = time.perf_counter(), {}, None

    def write() -> str:
        runs = [r for r in read_runs(log_path) if getattr(study, "keep", lambda c, a, r: True)(config, args, r)]
        summary, table = study.summary_and_table(config, runs)
        result = {
            "benchmark": config.BENCHMARK,
            "config": recorded_config(config, args),
            "summary": summary,
            **extras,
            "runs": runs,
            "wall_s_this_invocation": time.perf_counter() - start,
        }
        save_study(result, args.out, table, lambda path: study.draw(summary, runs, path))
        return table

    try:
        config = load_study(study.Config, args.config)
        args.seeds = args.seeds or config.seeds
        args.arms = args.arms or list(config.arms)
        unknown = [a for a in args.arms if a not in config.arms]
        if unknown:
            raise UserInputError(f"--arms: {unknown} not in {args.config} (arms: {', '.join(config.arms)})")
        args.work_dir = Path(args.work_dir or config.work_dir)
        if hasattr(study, "select"):  # every run's config is checked before hours of training
            config = study.select(config, args)
        args.work_dir.mkdir(parents=True, exist_ok=True)
        log_path = args.work_dir / "runs.jsonl"
        restore_runs(log_path, args.out, config.BENCHMARK)
        extras = _kept_extras(study, args.out, config.BENCHMARK)
        if hasattr(study, "reuse_runs"):
            study.reuse_runs(config, args, log_path, args.config)
        if args.status:  # no outcome is read: a pre-declared study is read once, when all its runs exist
            print(study_progress.status(name, study.planned(config, args), log_path))
            return 0
        if not args.summarize_only:  # results are rewritten after every run: a crash or a cut loses none of them
            extras.update(study.run(config, args, log_path, write) or {})
    except (UserInputError, KeyboardInterrupt) as e:
        return _stopped(name, e, log_path)
    print(write())
    return 0


def _stopped(name: str, error: BaseException, log_path: Path | None) -> int:
    """Say why a study stopped early and return its exit status: 2 for bad input, 130 for Ctrl-C or ``kill``
    (finished runs are in ``runs.jsonl``, and the same command resumes)."""
    if isinstance(error, KeyboardInterrupt):
        where = f"are in {log_path}" if log_path else "are kept"
        print(f"{name}: interrupted; finished runs {where} and the same command resumes", file=sys.stderr)
        return 130
    print(f"{name}: error: {error}", file=sys.stderr)
    return 2


def _kept_extras(study, out: str | None, benchmark: str) -> dict:
    """The study's ``EXTRAS`` keys (results that are not runs, e.g. bench_gsm8k's pipelines) of the ``--out`` JSON
    of the same benchmark, so that rewriting it without running them (``--summarize-only``) keeps them."""
    keys = getattr(study, "EXTRAS", ())
    if not keys or not out or not Path(out).is_file():
        return {}
    result = json.loads(Path(out).read_text())
    return {k: result[k] for k in keys if k in result} if result.get("benchmark") == benchmark else {}


def run_main(study_main) -> None:
    """``sys.exit(study_main())`` with ``kill`` unwinding like Ctrl-C (the vLLM engines and child runs close)."""
    from dynsdpb_selfplay.signals import sigterm_unwinds

    with sigterm_unwinds():
        code = study_main()
    sys.exit(code)
