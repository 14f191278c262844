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

import argparse
import copy
import json
import math
import os
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import gold_rows, read_config, read_runs, restore_runs, save_study  # noqa: E402
from benchmarks.regime_plots import markdown, plot  # noqa: E402
from benchmarks.regime_stats import summarize_regime  # noqa: E402
from dynsdpb_selfplay.errors import UserInputError  # noqa: E402
from dynsdpb_selfplay.signals import sigterm_unwinds  # noqa: E402

KEYS = {"model", "work_dir", "seeds", "epochs", "task", "data", "max_new_tokens", "engine", "training", "regimes",
        "arms", "metric", "baselines", "reuse_runs"}  # fmt: skip
REGIME_KEYS = {"label", "size", "learning_rate", "lora", "epochs"}
ARM_KEYS = {"trainer", "distillation"}


def load_bench_config(path: str) -> dict:
    """The study's YAML; unknown keys name the file and the section. Every run's settings are validated as a run
    config before anything trains (:func:`run_config`)."""
    data = read_config(path, KEYS)
    for section, known, items in (("regimes", REGIME_KEYS, data.get("regimes") or []),
                                  ("arms", ARM_KEYS, (data.get("arms") or {}).values())):  # fmt: skip
        for item in items:
            unknown = set(item) - known if isinstance(item, dict) else {"(not a mapping)"}
            if unknown:
                raise UserInputError(f"{path}: {section}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    if not data.get("regimes") or not data.get("arms"):
        raise UserInputError(f"{path}: give at least one regime (size, learning_rate) and one arm")
    labels = [r.get("label") for r in data["regimes"]]
    if None in labels or len(set(labels)) < len(labels):
        raise UserInputError(f"{path}: regimes: each needs a distinct 'label'")
    return data


def steps_per_epoch(bench: dict, regime: dict) -> int:
    """Optimizer steps of one epoch: ``2N`` sample visits (module docstring)."""
    batch = bench.get("training", {}).get("per_device_train_batch_size", 8)
    return math.ceil(2 * regime["size"] / batch)


def run_config(bench: dict, regime: dict, arm: str, seed: int, source: str):
    """The validated run config of one (regime, arm, seed): the bench's training section, the regime's size,
    learning rate and LoRA, the arm's trainer and distillation, and the same step count for every arm."""
    from dynsdpb_selfplay.rounds.config import from_dict

    spec = bench["arms"][arm]
    epochs = regime.get("epochs", bench.get("epochs", 4))
    training = {**bench.get("training", {}), "learning_rate": regime["learning_rate"],
                "trainer": spec.get("trainer", "dynsdpb"), **spec.get("distillation", {}),
                "max_steps": epochs * steps_per_epoch(bench, regime), "save_steps": 10**9,
                "lora": regime.get("lora")}  # fmt: skip
    data = {"model": bench.get("model", "smollm2-135m-instruct"), "seed": seed, "task": bench["task"],
            "training": training, "engine": bench.get("engine", {})}  # fmt: skip
    return from_dict(data, source=f"{source} (regime {regime['label']}, arm {arm})")


SCORING_KEYS = ("model", "task", "data", "max_new_tokens", "engine")


def reuse_runs(bench: dict, args, log_path: Path, source: str) -> int:
    """Copy into ``log_path`` the finished runs of another study's results JSON (the config's ``reuse_runs``) that
    this study would repeat exactly: the same (regime, arm, seed) with the same run config (model, task, data order,
    training settings and steps, engine) and the same scoring (``SCORING_KEYS``). A new arm is then paired with
    baseline runs that exist instead of training them again. Reused records carry ``reused_from``; runs already in
    the log stay. Returns how many were copied; a results file that scores differently raises."""
    from dynsdpb_selfplay.rounds.config import to_dict

    path = bench.get("reuse_runs")
    if not path:
        return 0
    try:
        other = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserInputError(f"{source}: reuse_runs: cannot read {path} ({e})") from None
    if other.get("benchmark") != "regimes":
        raise UserInputError(f"{source}: reuse_runs: {path} is not a bench_regimes result")
    theirs = other["config"]
    for key in SCORING_KEYS:
        if theirs.get(key) != bench.get(key):
            raise UserInputError(f"{source}: reuse_runs: {path} scores with another '{key}' ({theirs.get(key)!r} "
                                 f"there, {bench.get(key)!r} here); its runs cannot be paired with these")  # fmt: skip
    done = {(r["regime"], r["arm"], r["seed"]) for r in read_runs(log_path)}
    mine = {r["label"]: r for r in args.regimes}
    their_regimes = {r["label"]: r for r in theirs["regimes"]}
    copied = []
    for run in other.get("runs", []):
        key = (run["regime"], run["arm"], run["seed"])
        if key in done:
            continue
        if run["arm"] != "base":
            label, arm, seed = key
            if label not in mine or label not in their_regimes or seed not in args.seeds:
                continue
            if arm not in bench["arms"] or arm not in theirs["arms"]:
                continue
            ours = to_dict(run_config(bench, mine[label], arm, seed, source))
            if ours != to_dict(run_config(theirs, their_regimes[label], arm, seed, path)):
                continue
        copied.append({**run, "reused_from": path})
    if copied:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        for record in copied:
            _append(log_path, record)
        print(f"bench_regimes: reused {len(copied)} finished runs of {path} (identical run and scoring configs)",
              flush=True)  # fmt: skip
    return len(copied)


def splits(bench: dict, task, seed: int, size: int):
    """``(train, validation, test)`` examples: a seeded subset of the training pool, then two fixed splits."""
    d = bench.get("data", {})
    pool, val_start = d.get("pool", 4000), d.get("validation_start", d.get("pool", 4000))
    if val_start < pool:
        raise UserInputError(f"data.validation_start={val_start} overlaps the training pool (data.pool={pool})")
    order = list(range(pool))
    random.Random(f"regimes-{seed}").shuffle(order)
    everything = task.load("train", limit=val_start + d.get("validation", 100))
    train = [everything[i] for i in sorted(order[:size])]
    return train, everything[val_start:], task.load("test", limit=d.get("test", 200))


class Scorer:
    """Greedy scoring of test + validation in one engine call; weights are handed to the engine through a folder."""

    def __init__(self, engine, task, fmt, val, test, max_new_tokens: int, folder: Path) -> None:
        self.engine, self.task, self.fmt, self.val, self.test = engine, task, fmt, val, test
        self.max_new_tokens, self.folder = max_new_tokens, folder
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
        test_ids = {ex.id for ex in self.test}
        out = {"eval_s": time.perf_counter() - start, "tokens": result.summary["generated_tokens"],
               "truncated": result.summary["truncated"]}  # fmt: skip
        for split, records in (("test", [r for r in result.records if r["id"] in test_ids]),
                               ("val", [r for r in result.records if r["id"] not in test_ids])):  # fmt: skip
            out[split] = {k: sum(r[f"{k}_correct"] for r in records) / len(records) for k in ("flexible", "strict")}
        return out


def train_and_score(bench, regime, arm, seed, scorer: Scorer, task, fmt, base: str, folder: Path, source: str) -> dict:
    """One run: train the arm's steps, scoring after every epoch; returns the run's record."""
    from transformers import TrainerCallback

    from dynsdpb_selfplay.precision import cpu_features
    from dynsdpb_selfplay.rounds.training import build_trainer

    cfg = run_config(bench, regime, arm, seed, source)
    train, _, _ = splits(bench, task, seed, regime["size"])
    trainer, info = build_trainer(gold_rows(task, fmt, train), base, folder / "trainer", cfg)
    if trainer is None:
        raise UserInputError(f"{regime['label']} {arm} seed {seed}: nothing to train: {info['skipped']}")
    every = steps_per_epoch(bench, regime)
    epochs: list[dict] = []

    class EpochEval(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step % every == 0:
                start = time.perf_counter()
                scorer.load(trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class)
                e = {"epoch": state.global_step // every, "step": state.global_step, **scorer.score()}
                e["eval_s"] = time.perf_counter() - start  # weight hand-off included
                epochs.append(e)
                print(f"[bench_regimes] {regime['label']} {arm} seed {seed} epoch {e['epoch']}: test "
                      f"{100 * e['test']['flexible']:.1f}% val {100 * e['val']['flexible']:.1f}% "
                      f"({e['eval_s']:.0f} s to score)", flush=True)  # fmt: skip

    trainer.add_callback(EpochEval())
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "loss" in h]
    keys = {"loss": "loss", "ce": "dynsdpb/ce", "kd": "dynsdpb/kd_loss", "alpha": "dynsdpb/alpha"}
    curves = {name: [h.get(key) for h in logs] for name, key in keys.items()}
    return {"regime": regime["label"], "arm": arm, "seed": seed, "rows": info["rows"],
            "steps": trainer.state.global_step, "seconds": seconds, "bf16": bool(trainer.args.bf16),
            "cpu": cpu_features()["capability"],
            "train_s": seconds - sum(e["eval_s"] for e in epochs), "epochs": epochs, **curves,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip


def run_all(bench: dict, args, log_path: Path, source: str, on_record=lambda: None) -> None:
    """Every missing run, and the base model's scores (arm ``base``, epoch 0), with one engine; ``on_record`` is
    called after each record is appended to ``log_path``."""
    from dynsdpb_selfplay.engines import make_engine
    from dynsdpb_selfplay.models import resolve_model
    from dynsdpb_selfplay.tasks import get_task

    done = {(r["regime"], r["arm"], r["seed"]) for r in read_runs(log_path)}
    todo = [(reg, arm, seed) for seed in args.seeds for reg in args.regimes for arm in args.arms
            if (reg["label"], arm, seed) not in done]  # fmt: skip
    if not todo and ("-", "base", 0) in done:
        return
    first = run_config(bench, args.regimes[0], args.arms[0], args.seeds[0], source)
    task = get_task(first.task.name, **first.task.options)
    fmt = task.get_format(name=first.task.format)
    base = resolve_model(first.model)
    _, val, test = splits(bench, task, 0, 1)
    engine = make_engine(base, first.engine)
    scorer = Scorer(engine, task, fmt, val, test, bench.get("max_new_tokens", 128), args.work_dir / "weights")
    try:
        if ("-", "base", 0) not in done:
            record = {"regime": "-", "arm": "base", "seed": 0, "epochs": [{"epoch": 0, "step": 0, **scorer.score()}]}
            _append(log_path, record)
            on_record()
        for regime, arm, seed in todo:
            folder = args.work_dir / regime["label"] / f"{arm}-seed{seed}"
            steps = run_config(bench, regime, arm, seed, source).training.args["max_steps"]
            print(f"[bench_regimes] {regime['label']} {arm} seed {seed}: {regime['size']} rows, {steps} steps",
                  flush=True)  # fmt: skip
            record = train_and_score(bench, regime, arm, seed, scorer, task, fmt, base, folder, source)
            _append(log_path, record)
            on_record()
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        engine.close()


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


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


def summarize(bench: dict, runs: list[dict]) -> dict:
    metric = bench.get("metric", "flexible")
    baselines = tuple(bench.get("baselines", ["sft", "repeat"]))
    base = next((r for r in runs if r["arm"] == "base"), None)
    out = {"metric": metric, "base": base["epochs"][0] if base else None, "machines": machines(runs),
           "seeds_across_machines": seeds_across_machines(runs), "regimes": {}}  # fmt: skip
    for label in dict.fromkeys(r["regime"] for r in runs if r["arm"] != "base"):
        out["regimes"][label] = summarize_regime([r for r in runs if r["regime"] == label], metric, baselines)
    return out


def summary_and_table(bench: dict, runs: list[dict]) -> tuple[dict, str]:
    """The summary of ``runs`` and its markdown tables (what ``--summarize-only`` writes)."""
    summary = summarize(bench, runs)
    return summary, markdown(summary, bench)


def write_results(bench: dict, args, log_path: Path, start: float) -> str:
    """Summarize every run in ``log_path`` into ``--out`` (JSON, with a .md table and a PNG beside it); returns
    the table."""
    runs = read_runs(log_path)
    summary, table = summary_and_table(bench, runs)
    save_study({"benchmark": "regimes", "config": {**bench, "seeds": args.seeds}, "summary": summary, "runs": runs,
                "wall_s_this_invocation": time.perf_counter() - start}, args.out, table,
               lambda path: plot(summary, path))  # fmt: skip
    return table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="study YAML (benchmarks/configs/regimes_*.yaml)")
    g = p.add_argument_group("overrides")
    g.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the config's)")
    g.add_argument("--arms", nargs="+", help="arms (default: all of the config's)")
    g.add_argument("--regimes", nargs="+", help="regime labels (default: all)")
    g.add_argument("--work-dir", help="runs.jsonl and scratch weights (default: the config's work_dir)")
    g.add_argument("--summarize-only", action="store_true", help="only rebuild JSON/MD/PNG from runs.jsonl")
    o = p.add_argument_group("output")
    o.add_argument("--out", help="JSON result path (a PNG plot and a .md table are written beside it)")
    args = p.parse_args()
    start = time.perf_counter()
    try:
        bench = load_bench_config(args.config)
        args.seeds = args.seeds or bench.get("seeds", [0, 1, 2, 3, 4])
        args.arms = args.arms or list(bench["arms"])
        unknown = [a for a in args.arms if a not in bench["arms"]]
        if unknown:
            raise UserInputError(f"--arms: {unknown} not in {args.config} (arms: {', '.join(bench['arms'])})")
        args.regimes = [r for r in bench["regimes"] if not args.regimes or r["label"] in args.regimes]
        args.work_dir = Path(args.work_dir or bench.get("work_dir", "runs/bench_regimes"))
        for regime in args.regimes:  # every run's config is checked before hours of training
            for arm in args.arms:
                run_config(bench, regime, arm, args.seeds[0], args.config)
        args.work_dir.mkdir(parents=True, exist_ok=True)
        log_path = args.work_dir / "runs.jsonl"
        restore_runs(log_path, args.out, "regimes")
        reuse_runs(bench, args, log_path, args.config)
        if not args.summarize_only:  # results are rewritten after every run: a crash or a cut loses none of them
            run_all(bench, args, log_path, args.config, lambda: write_results(bench, args, log_path, start))
    except UserInputError as e:
        print(f"bench_regimes: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bench_regimes: interrupted; finished runs are in {args.work_dir / 'runs.jsonl'} and the same "
              "command resumes", file=sys.stderr)  # fmt: skip
        return 130
    print(write_results(bench, args, log_path, start))
    return 0


if __name__ == "__main__":
    with sigterm_unwinds():  # `kill` closes the vLLM engine, as Ctrl-C does
        code = main()
    sys.exit(code)
