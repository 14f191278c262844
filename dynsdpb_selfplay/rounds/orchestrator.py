"""The round loop: evaluate the start model, then per round generate -> filter -> train -> evaluate; then report.

Each phase is skipped when ``state.json`` marks it done, so ``run(run_dir)`` both starts and resumes a run. One
generation engine lives for the whole run; after a training phase its weights are replaced in place
(``engine.update_weights``) instead of starting a new engine.
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
from ..tasks import get_task
from .config import RunConfig, from_dict
from .filtering import filter_self_correction, filter_self_training, pass_rates, transitions
from .generation import generate_round, run_program, self_correction_records
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
        self.timings = {"engine_start_s": 0.0, "weights_handoff_s": 0.0, "engine_generate_s": 0.0,
                        "generated_tokens": 0}  # fmt: skip
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

        def count(prompts: int, tokens: int) -> None:
            self.timings["generated_tokens"] += tokens

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
        return {"questions": len(rates), "records": len(records), "shards": shards,
                "generated_tokens": sum(rec.get("tokens", 0) for rec in records)}  # fmt: skip

    def _filter(self, r: int) -> dict:
        cfg, out = self.cfg, self.run_dir.round(r)
        records = read_jsonl(out / "generations.jsonl", hint=REDO_HINT)
        fault_point(point="read")
        f = cfg.filtering
        bounds = {"min_pass_rate": f.min_pass_rate, "max_pass_rate": f.max_pass_rate}
        if cfg.pipeline == "self_training":
            rows, stats, verdicts = filter_self_training(records, f.verify, f.max_per_question, f.labels,
                                                         f.min_agreement, **bounds)  # fmt: skip
        else:
            rows, stats, verdicts = filter_self_correction(records, cfg.generation.correction_prompt,
                                                           f.keep_right_to_right, **bounds)  # fmt: skip
        write_jsonl(out / "train.jsonl", rows)
        write_json(out / "examples.json", pick_examples(records, verdicts))
        write_json(out / "filter_summary.json", stats)
        return stats

    def _train(self, r: int, weights: str) -> dict:
        cfg, out = self.cfg, self.run_dir.round(r)
        rows = []
        first = 1 if cfg.training.accumulate_data else r
        for k in range(first, r + 1):
            rows += read_jsonl(self.run_dir.round(k) / "train.jsonl", hint=REDO_HINT)
        init = weights if cfg.training.init == "continue" else self.base
        return train_round(rows, init, out / "model", out / "trainer", cfg)

    def _evaluate(self, r: int, weights: str) -> dict:
        cfg, out = self.cfg, self.run_dir.round(r)
        engine = self.engines.get(weights)
        examples = self.task.load(cfg.task.eval_split, limit=cfg.task.eval_limit)
        greedy = SamplingConfig(max_new_tokens=cfg.evaluation.max_new_tokens, seed=cfg.seed)
        result = evaluate(engine, self.task, examples, self.fmt, greedy, model_name=weights, split=cfg.task.eval_split)
        summary, records = dict(result.summary), result.records
        if cfg.pipeline == "self_correction":
            make = self_correction_records(self.task, self.fmt, greedy, cfg.generation.correction_prompt,
                                           cfg.filtering.verify)  # fmt: skip
            corr = run_program(engine, make(examples, cfg.seed))
            trans = transitions(corr)
            n = len(corr)
            summary.update(trans)
            summary["revised_ci95"] = wilson_interval(round(trans["revised_accuracy"] * n), n)
        fault_point(point="generated")
        if cfg.pipeline == "self_correction":
            write_jsonl(out / "eval_correction.jsonl", corr)
        write_jsonl(out / "eval.jsonl", records)
        write_json(out / "eval_summary.json", summary)
        keep = ("strict_accuracy", "strict_ci95", "flexible_accuracy", "flexible_ci95", "n_samples", "tokens_per_s",
                "first_accuracy", "revised_accuracy", "wrong_to_right", "right_to_wrong", "revised_ci95")  # fmt: skip
        return {k: summary[k] for k in keep if k in summary}

    # ---------------------------------------------------------------------------------------------- run
    def run(self) -> Path:
        cfg, rd = self.cfg, self.run_dir
        rounds: dict[int, dict] = {}
        weights = self.base
        try:
            if cfg.evaluation.enabled:
                rounds[0] = {"eval": self._phase("round_0/eval", self._evaluate, r=0, weights=weights)}
                self.log(round_line(0, rounds[0]))
            for r in range(1, cfg.rounds + 1):
                info = rounds[r] = {}
                info["generate"] = self._phase(f"round_{r}/generate", self._generate, r=r, weights=weights)
                info["filter"] = self._phase(f"round_{r}/filter", self._filter, r=r)
                info["train"] = self._phase(f"round_{r}/train", self._train, r=r, weights=weights)
                if not cfg.training.keep_checkpoints:  # after the phase is marked done: they were for resuming it
                    drop_checkpoints(rd.round(r) / "trainer")
                weights = info["train"]["model"]
                if cfg.evaluation.enabled:
                    info["eval"] = self._phase(f"round_{r}/eval", self._evaluate, r=r, weights=weights)
                self.log(round_line(r, info))
        finally:
            self.engines.close()
            lifetime.record_to(None)
        with in_phase("report"):
            md, png = write_report(rd.path, rd.config(), rounds)
            rd.mark_done("report", report=str(md), plot=str(png) if png else None)
        self.log(f"report: {md}" + (f" (plot: {png})" if png else ""))
        return md


def run(run_dir: RunDir, log=print) -> Path:
    return Orchestrator(run_dir, log=log).run()
