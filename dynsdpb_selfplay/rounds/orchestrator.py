"""The round loop: evaluate the start model, then per round generate -> filter -> train -> hand off -> evaluate ->
select; then report.

Each phase is skipped when ``state.json`` marks it done, so ``run(run_dir)`` both starts and resumes a run. One
generation engine lives for the whole run; after a training phase its weights are replaced in place
(``engine.update_weights``) instead of starting a new engine. Two models move through the loop: the fp32 weights
training continues from, and the copy the engine serves (``handoff.py``: the same weights, or a stochastically
rounded copy where rounding to the engine's format would drop the round's update).

Selection (``evaluation.select``, on by default): the start model and every round's model are scored on
``task.validation_split``; a round whose model is worse than the model it started from beyond noise (strict or
flexible accuracy, :func:`~dynsdpb_selfplay.stats.paired_drop`) is rejected: the next round generates and trains from
the model that round started from. The report shows the test split for every round, rejected ones included.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..engines import lifetime, make_engine, with_lora
from ..engines.base import Engine, SamplingConfig
from ..errors import UserInputError
from ..evaluate import evaluate, wilson_interval
from ..faults import fault_point, in_phase
from ..jsonl import read_jsonl, write_json, write_jsonl
from ..models import resolve_model
from ..precision import resolve_dtype
from ..stats import paired_drop
from ..tasks import get_task
from ..tasks.scoring import is_correct
from .config import RunConfig, from_dict
from .filtering import AnswerLines, filter_self_correction, filter_self_training, pass_rates, transitions
from .generation import generate_round, run_program, self_correction_records
from .handoff import hand_off
from .report import round_line, write_report
from .rundir import REDO_HINT, RunDir
from .shards import run_shards
from .showcase import pick_examples
from .training import drop_checkpoints, train_round

__all__ = ["Orchestrator", "run"]


class _EngineHolder:
    """Creates the engine on first use and moves new weights into it; times both, and the engine's generation (with
    the tokens it generated), so each phase can report where its wall time went (``timings``)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.engine, self.weights = cfg, None, None
        self.engine_config = cfg.engine
        if cfg.training.lora is not None and cfg.training.lora_handoff == "adapter":  # rounds hand over adapters
            self.engine_config = with_lora(cfg.engine, cfg.training.lora.r)
        self.timings = {
            "engine_start_s": 0.0,
            "weights_handoff_s": 0.0,
            "engine_generate_s": 0.0,
            "generated_tokens": 0,
        }
        self._inside = False

    def get(self, weights: str) -> Engine:
        start = time.perf_counter()
        if self.engine is None:
            self.engine = make_engine(weights, self.engine_config)
            self.timings["engine_start_s"] += time.perf_counter() - start
            self._instrument(self.engine)
        elif weights != self.weights:
            self.engine.update_weights(weights)
            self.timings["weights_handoff_s"] += time.perf_counter() - start
        self.weights = weights
        return self.engine

    def _instrument(self, engine: Engine) -> None:
        """Count the time spent inside ``generate_ids`` and inside each step of ``completed`` (once when one runs
        inside the other), and the tokens the engine reports."""
        generate_ids, completed = engine.generate_ids, engine.completed

        def timed(fn):
            def wrapper(*args, **kwargs):
                if self._inside:
                    return fn(*args, **kwargs)
                self._inside, t = True, time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self._inside = False
                    self.timings["engine_generate_s"] += time.perf_counter() - t

            return wrapper

        def timed_completed():
            it = completed()
            step = timed(lambda: next(it, None))
            while (item := step()) is not None:
                yield item

        def count(event) -> None:  # an engines.progress.Progress
            self.timings["generated_tokens"] += event.tokens

        engine.generate_ids, engine.completed, engine.progress = timed(generate_ids), timed_completed, count

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


class Orchestrator:
    def __init__(self, run_dir: RunDir, log=print) -> None:
        self.run_dir, self.log = run_dir, log
        self.cfg: RunConfig = from_dict(run_dir.config())
        self.task = get_task(self.cfg.task.name, **self.cfg.task.options)
        self.fmt = self.task.get_format(name=self.cfg.task.format)
        if not self.fmt.chat and (self.cfg.pipeline == "self_correction" or self.cfg.generation.rationalize):
            what = "pipeline: self_correction" if self.cfg.pipeline == "self_correction" else "generation.rationalize"
            raise UserInputError(f"{what} needs a chat prompt format; task.format={self.fmt.name!r} is plain text")
        self.base = resolve_model(self.cfg.model)
        self.engines = _EngineHolder(self.cfg)
        # This process's engine or shards, recorded while they run, for a resume after a kill (RunDir.lock).
        lifetime.record_to(run_dir.engine_records / f"{os.getpid()}.json")

    # ------------------------------------------------------------------------------------------- phases
    def _phase(self, name: str, fn, **kw) -> dict:
        """Run ``fn`` unless ``name`` is done; record its info and duration; return the info."""
        if self.run_dir.is_done(name):
            return self.run_dir.phase_info(name)
        start, before = time.perf_counter(), dict(self.engines.timings)
        with in_phase(name):
            info = fn(**kw)
            info["seconds"] = info.get("seconds", 0.0) + time.perf_counter() - start
            for key, total in self.engines.timings.items():  # this phase's share of engine start, hand-off, generation
                if total > before[key]:
                    info[key] = total - before[key]
            self.run_dir.mark_done(name, **info)
            fault_point(point="done")
        return info

    def _generation_chunks(self, r: int, engine) -> list[dict]:
        return generate_round(self.cfg, self.task, self.fmt, r, self.run_dir.round(r) / "generations", engine)

    def _generate(self, r: int, weights: str) -> dict:
        shards = self.cfg.generation.shards
        if shards > 1:
            # Independent engine processes, one per shard of the chunks; this process only merges their files.
            self.engines.close()
            run_shards(self.run_dir.path, r, weights, shards)
            records = self._generation_chunks(r, engine=None)  # every chunk is on disk now: read in order
        else:
            records = self._generation_chunks(r, self.engines.get(weights))
        out = self.run_dir.round(r)
        write_jsonl(out / "generations.jsonl", records)
        rates = pass_rates(records, self.cfg.filtering.verify)
        write_jsonl(out / "pass_rates.jsonl", list(rates.values()))
        # Every question yields at least one record, so the ids count the questions without loading them again.
        return {
            "questions": len(rates),
            "records": len(records),
            "shards": shards,
            "generated_tokens": sum(rec.get("tokens", 0) for rec in records),
        }

    def _filter(self, r: int) -> dict:
        cfg, out = self.cfg, self.run_dir.round(r)
        records = read_jsonl(out / "generations.jsonl", hint=REDO_HINT)
        fault_point(point="read")
        f = cfg.filtering
        lines = AnswerLines(
            f.answer_line,
            line=lambda answer: self.task.answer_line(answer, self.fmt),
            stated=lambda text: self.task.stated_answer(text, self.fmt),
            same=is_correct,
        )
        bounds = {"min_pass_rate": f.min_pass_rate, "max_pass_rate": f.max_pass_rate, "answer_lines": lines}
        if cfg.pipeline == "self_training":
            rows, stats, verdicts = filter_self_training(
                records, f.verify, f.max_per_question, f.labels, f.min_agreement, **bounds
            )
        else:
            rows, stats, verdicts = filter_self_correction(
                records, cfg.generation.correction_prompt, f.keep_right_to_right, **bounds
            )
        write_jsonl(out / "train.jsonl", rows)
        write_json(out / "examples.json", pick_examples(records, verdicts))
        write_json(out / "filter_summary.json", stats)
        return stats

    def _init(self, weights: str) -> str:
        return weights if self.cfg.training.init == "continue" else self.base

    def _train(self, r: int, weights: str) -> dict:
        cfg, out = self.cfg, self.run_dir.round(r)
        rows = []
        first = 1 if cfg.training.accumulate_data else r
        for k in range(first, r + 1):
            rows += read_jsonl(self.run_dir.round(k) / "train.jsonl", hint=REDO_HINT)
        init = self._init(weights)
        return {**train_round(rows, init, out / "model", out / "trainer", cfg), "init": init}

    def _hand_off(self, r: int, weights: str, trained: str) -> dict:
        """The copy of round ``r``'s trained weights the engine serves, and the share of the update it keeps."""
        e = self.cfg.engine
        dtype = resolve_dtype(e.dtype)
        return hand_off(
            self._init(weights),
            trained,
            self.run_dir.round(r) / "served",
            dtype,
            e.handoff,
            e.min_update_share,
            seed=self.cfg.seed,
            round_index=r,
        )

    def _score(self, weights: str, split: str, limit: int | None):
        """Greedy answers of the served ``weights`` to the first ``limit`` questions of ``split``, scored: the
        examples, the sampling used, and the :class:`~dynsdpb_selfplay.evaluate.EvalResult`."""
        cfg = self.cfg
        examples = self.task.load(split, limit=limit)
        greedy = SamplingConfig(max_new_tokens=cfg.evaluation.max_new_tokens, seed=cfg.seed)
        engine = self.engines.get(weights)
        return (
            examples,
            greedy,
            evaluate(engine, self.task, examples, self.fmt, greedy, model_name=weights, split=split),
        )

    def _validate(self, r: int, weights: str) -> dict:
        """Score ``weights`` (the copy the engine serves) on the validation split: ``round_r/validation.jsonl``."""
        out = self.run_dir.round(r)
        _, _, result = self._score(weights, self.cfg.task.validation_split, self.cfg.task.validation_limit)
        fault_point(point="generated")
        write_jsonl(out / "validation.jsonl", result.records)
        return _scores(result.summary)

    def _select(self, r: int, start: int) -> dict:
        """Whether round ``r``'s model is kept: not worse than round ``start``'s (the model it started from) beyond
        noise on the validation split, in strict or flexible accuracy."""
        read = lambda k: read_jsonl(self.run_dir.round(k) / "validation.jsonl", hint=REDO_HINT)  # noqa: E731
        before, after = read(start), read(r)
        if [x["id"] for x in before] != [x["id"] for x in after]:
            raise RuntimeError(
                f"round {r}: its validation questions differ from round {start}'s; delete "
                f"{self.run_dir.round(r) / 'validation.jsonl'} and resume"
            )
        alpha, info = self.cfg.evaluation.select_alpha, {"against": start}
        for kind in ("strict", "flexible"):
            info[kind] = paired_drop([x[f"{kind}_correct"] for x in before], [x[f"{kind}_correct"] for x in after])
        worse = [k for k in ("strict", "flexible") if info[k]["lost"] > info[k]["gained"] and info[k]["p"] < alpha]
        info["kept"] = not worse
        if worse:
            info["why"] = ", ".join(
                f"{k} {info[k]['gained'] - info[k]['lost']:+d} (p={info[k]['p']:.3f})" for k in worse
            )
        return info

    def _evaluate(self, r: int, weights: str) -> dict:
        cfg, out = self.cfg, self.run_dir.round(r)
        examples, greedy, result = self._score(weights, cfg.task.eval_split, cfg.task.eval_limit)
        summary, records = dict(result.summary), result.records
        if cfg.pipeline == "self_correction":
            make = self_correction_records(
                self.task, self.fmt, greedy, cfg.generation.correction_prompt, cfg.filtering.verify
            )
            corr = run_program(self.engines.get(weights), make(examples, cfg.seed))
            trans = transitions(corr)
            n = len(corr)
            summary.update(trans)
            summary["revised_ci95"] = wilson_interval(round(trans["revised_accuracy"] * n), n)
        fault_point(point="generated")
        if cfg.pipeline == "self_correction":
            write_jsonl(out / "eval_correction.jsonl", corr)
        write_jsonl(out / "eval.jsonl", records)
        write_json(out / "eval_summary.json", summary)
        keep = ("first_accuracy", "revised_accuracy", "wrong_to_right", "right_to_wrong", "revised_ci95")
        return {**_scores(summary), **{k: summary[k] for k in keep if k in summary}}

    # ---------------------------------------------------------------------------------------------- run
    def run(self) -> Path:
        cfg, rd = self.cfg, self.run_dir
        rounds: dict[int, dict] = {0: {}}
        weights = served = self.base  # what training continues from; what the engine serves
        start = 0  # the round whose model the next round starts from
        try:
            if cfg.evaluation.select:
                rounds[0]["validate"] = self._phase("round_0/validate", self._validate, r=0, weights=served)
            if cfg.evaluation.enabled:
                rounds[0]["eval"] = self._phase("round_0/eval", self._evaluate, r=0, weights=served)
            if rounds[0]:
                self.log(round_line(0, rounds[0]))
            for r in range(1, cfg.rounds + 1):
                info = rounds[r] = {}
                info["generate"] = self._phase(f"round_{r}/generate", self._generate, r=r, weights=served)
                info["filter"] = self._phase(f"round_{r}/filter", self._filter, r=r)
                info["train"] = self._phase(f"round_{r}/train", self._train, r=r, weights=weights)
                if not cfg.training.keep_checkpoints:  # after the phase is marked done: they were for resuming it
                    drop_checkpoints(rd.round(r) / "trainer")
                trained, round_served = info["train"]["model"], served
                if "skipped" not in info["train"]:
                    info["handoff"] = self._phase(
                        f"round_{r}/handoff", self._hand_off, r=r, weights=weights, trained=trained
                    )
                    round_served = info["handoff"]["served"]
                if cfg.evaluation.enabled:
                    info["eval"] = self._phase(f"round_{r}/eval", self._evaluate, r=r, weights=round_served)
                kept = True
                if cfg.evaluation.select and "skipped" not in info["train"]:
                    info["validate"] = self._phase(f"round_{r}/validate", self._validate, r=r, weights=round_served)
                    info["select"] = self._phase(f"round_{r}/select", self._select, r=r, start=start)
                    kept = info["select"]["kept"]
                self.log(round_line(r, info))
                if kept:
                    weights, served, start = trained, round_served, r
                else:
                    self.log(
                        f"round {r} rejected: its model is worse than round {start}'s on "
                        f"{cfg.task.validation_split} ({info['select']['why']}); round {r + 1} starts from "
                        f"round {start}'s model"
                    )
        finally:
            self.engines.close()
            lifetime.record_to(None)
        with in_phase("report"):
            md, png = write_report(rd.path, rd.config(), {r: info for r, info in rounds.items() if info})
            rd.mark_done(
                "report",
                report=str(md),
                plot=str(png) if png else None,
                final_round=start,
                model=weights,
                served=served,
            )
        self.log(f"report: {md}" + (f" (plot: {png})" if png else ""))
        self.log(f"final model: {weights} (round {start})")
        return md


def _scores(summary: dict) -> dict:
    """What a round's phase info keeps of an evaluation summary (the full summary is in the round's folder)."""
    keep = (
        "strict_accuracy",
        "strict_ci95",
        "flexible_accuracy",
        "flexible_ci95",
        "n_samples",
        "tokens_per_s",
        "truncated",
        "generated_tokens",
    )
    out = {k: summary[k] for k in keep if k in summary}
    if summary.get("n_samples"):
        out["mean_output_tokens"] = summary["generated_tokens"] / summary["n_samples"]
    return out


def run(run_dir: RunDir, log=print) -> Path:
    return Orchestrator(run_dir, log=log).run()
