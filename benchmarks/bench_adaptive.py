"""Adaptive sampling against uniform sampling: kept training rows per generated token, same questions and budget.

Uniform: ``--samples`` solutions for every question. Adaptive (``generation.adaptive``): ``--first`` per question,
then the rest of each chunk's budget spread over the questions not solved in every first sample (at most
``--max-samples`` per question). Both go through the round's own generation program and filter (verify, drop
truncated, deduplicate, cap at ``--max-per-question``), on one engine, with the same chunk seeds. The headline is
(kept rows / generated token) adaptive over uniform; also per question pass rates and where the samples went.

    python -m benchmarks.bench_adaptive --out benchmarks/results/adaptive_arith.json
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import save  # noqa: E402
from dynsdpb_selfplay.signals import sigterm_unwinds  # noqa: E402


def generate(engine, task, fmt, questions, args, adaptive) -> tuple[list[dict], float]:
    from dynsdpb_selfplay.engines.base import SamplingConfig, progress_bar
    from dynsdpb_selfplay.rounds.generation import chunk_seed, run_programs, self_training_records

    sampling = SamplingConfig(
        n=args.samples,
        temperature=args.temperature,
        top_p=0.95,
        max_new_tokens=args.max_new_tokens,
        stop=list(fmt.stop),
    )
    make = self_training_records(task, fmt, sampling, False, args.verify, adaptive)
    chunks = [questions[i : i + args.chunk_size] for i in range(0, len(questions), args.chunk_size)]
    out: dict[int, list[dict]] = {}
    start = time.perf_counter()
    with progress_bar(engine, len(questions), "uniform" if adaptive is None else "adaptive"):
        programs = {i: make(c, chunk_seed(args.seed, 1, i)) for i, c in enumerate(chunks)}
        run_programs(engine, programs, out.__setitem__)
    return [r for i in range(len(chunks)) for r in out[i]], time.perf_counter() - start


def summarize(records: list[dict], seconds: float, args) -> dict:
    from collections import Counter

    from dynsdpb_selfplay.rounds.filtering import filter_self_training, pass_rates

    rows, stats, _ = filter_self_training(records, args.verify, args.max_per_question)
    tokens = sum(r["tokens"] for r in records)
    per_question = Counter(r["id"] for r in records)
    rates = pass_rates(records, args.verify)
    return {
        "rows": len(rows),
        "generated_tokens": tokens,
        "samples": len(records),
        "rows_per_1k_tokens": 1000 * len(rows) / max(tokens, 1),
        "questions_kept": stats["questions_kept"],
        "truncated": stats["truncated"],
        "correct_samples": stats["correct_samples"],
        "duplicates": stats.get("duplicates", 0),
        "over_cap": stats.get("over_cap", 0),
        "samples_per_question": dict(sorted(Counter(per_question.values()).items())),
        "questions_solved_every_time": sum(e["pass_rate"] == 1 for e in rates.values()),
        "questions_never_solved": sum(e["verified"] == 0 for e in rates.values()),
        "generation_s": seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=1, help="arith difficulty")
    p.add_argument("--format", default="chat-0shot")
    p.add_argument("--questions", type=int, default=96)
    p.add_argument("--samples", type=int, default=4, help="the budget: samples per question")
    p.add_argument("--first", type=int, default=2)
    p.add_argument("--max-samples", type=int, default=8)
    p.add_argument("--max-per-question", type=int, default=2)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--verify", default="flexible")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--backend", default="auto")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    config = dict(vars(args))

    from dynsdpb_selfplay.engines import EngineConfig, make_engine
    from dynsdpb_selfplay.rounds.generation import Adaptive
    from dynsdpb_selfplay.tasks import get_task

    task = get_task("arith", steps=args.steps)
    fmt = task.get_format(name=args.format)
    questions = task.load("train", limit=args.questions)
    results = []
    with make_engine(args.model, EngineConfig(backend=args.backend, max_model_len=1024)) as engine:
        for seed in args.seeds:
            args.seed = seed
            for name, adaptive in (("uniform", None), ("adaptive", Adaptive(args.first, args.max_samples))):
                records, seconds = generate(engine, task, fmt, questions, args, adaptive)
                results.append({"seed": seed, "sampling": name, **summarize(records, seconds, args)})
                print(results[-1], flush=True)
                report(results, config | {"backend": engine.name})  # after every run: a stopped one keeps the rest


def report(results: list[dict], config: dict) -> None:
    total = {name: [r for r in results if r["sampling"] == name] for name in ("uniform", "adaptive")}
    if not all(total.values()):
        return
    per_token = {
        name: sum(r["rows"] for r in rs) / sum(r["generated_tokens"] for r in rs) for name, rs in total.items()
    }
    headline = {
        "rows_per_token_ratio": per_token["adaptive"] / per_token["uniform"],
        "rows_per_1k_tokens": {k: 1000 * v for k, v in per_token.items()},
        "rows": {k: sum(r["rows"] for r in rs) for k, rs in total.items()},
        "generated_tokens": {k: sum(r["generated_tokens"] for r in rs) for k, rs in total.items()},
    }
    print("headline:", headline, flush=True)
    save({"config": config, "runs": results, "headline": headline}, config["out"])


if __name__ == "__main__":
    with sigterm_unwinds():  # `kill` closes the vLLM engine
        main()
