"""Generation phases: sampled solutions (self-training) and answer-then-revise trajectories (self-correction).

Questions are processed in chunks; each finished chunk is one atomically written file, and chunk ``i`` samples with
seed ``hash(run seed, round, i)``, so an interrupted phase resumes at the missing chunks and produces the records an
uninterrupted run would have: nothing lost, nothing duplicated.

Every pending chunk is handed to the engine at once (:meth:`~..engines.base.Engine.submit`), so vLLM batches the
whole round (a chunk's follow-up pass, the hinted retry or the review turn, is queued as soon as its first pass
completes), and each chunk is saved as soon as its last pass completes. A chunk's records come from a *chunk
program*: a generator that yields ``(prompts, sampling)`` requests, receives their generations, and returns the
chunk's records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path

from ..engines.base import Engine, SamplingConfig, progress_bar
from ..errors import UserInputError
from ..faults import fault_point
from ..jsonl import read_jsonl, write_jsonl
from ..tasks.base import Example, PromptFormat, Task, check_examples
from ..tasks.prompts import correction_turns
from .filtering import solved
from .rundir import REDO_HINT

__all__ = [
    "Adaptive",
    "chunk_seed",
    "generate_round",
    "round_questions",
    "run_chunked",
    "run_program",
    "run_programs",
    "self_correction_records",
    "self_training_records",
]

ChunkProgram = Generator[tuple[list, SamplingConfig], list, list[dict]]


def chunk_seed(seed: int, round_index: int, chunk: int) -> int:
    digest = hashlib.sha256(f"{seed}/{round_index}/{chunk}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def run_programs(engine: Engine, programs: dict[int, ChunkProgram], on_done: Callable[[int, list[dict]], None]):
    """Drive chunk programs to completion through the engine's queue: every program's first request is submitted at
    once, each follow-up as soon as the request before it completes; ``on_done(key, records)`` when one returns."""
    waiting: dict[int, tuple[int, ChunkProgram]] = {}

    def advance(key: int, program: ChunkProgram, result: list | None) -> None:
        try:
            prompts, sampling = next(program) if result is None else program.send(result)
        except StopIteration as stop:
            on_done(key, stop.value)
            return
        waiting[engine.submit([engine.encode(p) for p in prompts], sampling)] = (key, program)

    for key, program in programs.items():
        advance(key, program, None)
    for ticket, generations in engine.completed():
        advance(*waiting.pop(ticket), generations)
    if waiting:
        raise RuntimeError(f"the engine finished with {len(waiting)} chunk(s) still waiting for generations")


def run_program(engine: Engine, program: ChunkProgram) -> list[dict]:
    """The records of one chunk program (e.g. the self-correction evaluation of a held-out set)."""
    out: list[dict] = []
    run_programs(engine, {0: program}, lambda _, records: out.extend(records))
    return out


def run_chunked(
    examples: list[Example],
    out_dir: Path,
    chunk_size: int,
    make_records: Callable[[list[Example], int], ChunkProgram] | None,
    seed_of: Callable[[int], int],
    desc: str,
    engine: Engine | None = None,
    select: Callable[[int], bool] | None = None,
) -> list[dict]:
    """Generate every chunk not on disk yet (``make_records(chunk, seed)`` is its program) and return all records,
    in question order.

    With ``select``, only chunks ``i`` with ``select(i)`` are generated (a shard) and only their records returned.
    Chunk ``i``'s records depend only on its questions and ``seed_of(i)``, so shards merged in chunk order equal an
    unsharded run."""
    chunks = [examples[i : i + chunk_size] for i in range(0, len(examples), chunk_size)]
    mine = [i for i in range(len(chunks)) if select is None or select(i)]
    records: dict[int, list[dict]] = {}
    for i in mine:
        path = out_dir / f"chunk-{i:05d}.jsonl"
        if path.exists():
            records[i] = read_jsonl(path, hint=REDO_HINT)
    missing = [i for i in mine if i not in records]
    if missing:
        if make_records is None or engine is None:
            raise RuntimeError(f"{out_dir / f'chunk-{missing[0]:05d}.jsonl'} is missing after the generation shards")

        def save(i: int, new: list[dict]) -> None:
            write_jsonl(out_dir / f"chunk-{i:05d}.jsonl", new)
            records[i] = new
            fault_point(chunk=i)

        total = sum(len(chunks[i]) for i in missing)
        with progress_bar(engine, total, desc):
            run_programs(engine, {i: make_records(chunks[i], seed_of(i)) for i in missing}, save)
    return [r for i in mine for r in records[i]]


def _with_hint(prompt, gold: str):
    if not isinstance(prompt, list):
        raise UserInputError("generation.rationalize needs a chat prompt format")
    hinted = [dict(m) for m in prompt]
    hinted[-1]["content"] += f"\n\n(Hint: the correct final answer is {gold}. Explain how to reach it.)"
    return hinted


def _score(task: Task, fmt: PromptFormat, ex: Example, text: str) -> dict:
    s = task.score(text, ex, fmt)
    return {
        "strict_answer": s.strict,
        "flexible_answer": s.flexible,
        "strict_correct": bool(s.strict_correct),
        "flexible_correct": bool(s.flexible_correct),
    }


def _solution_record(task: Task, fmt: PromptFormat, ex: Example, k: int, source: str, prompt, completion) -> dict:
    return {
        "id": ex.id,
        "sample": k,
        "source": source,
        "gold": ex.answer,
        "prompt": prompt,
        "response": completion.text,
        "finish_reason": completion.finish_reason,
        "tokens": len(completion.token_ids),
        **_score(task, fmt, ex, completion.text),
    }


@dataclass(frozen=True)
class Adaptive:
    """Adaptive sampling: ``first`` samples per question, then the rest of the chunk's budget (``sampling.n`` per
    question) split evenly over the questions not solved in every first sample, at most ``max_samples`` in all per
    question. What cannot be split evenly is not spent."""

    first: int
    max_samples: int


def _sampled(task, fmt, chunk, prompts, gens, first_index: int = 0) -> dict[str, list[dict]]:
    return {
        ex.id: [
            _solution_record(task, fmt, ex, first_index + k, "sample", prompt, c) for k, c in enumerate(gen.completions)
        ]
        for ex, prompt, gen in zip(chunk, prompts, gens, strict=True)
    }


def self_training_records(
    task: Task,
    fmt: PromptFormat,
    sampling: SamplingConfig,
    rationalize: bool,
    verify: str,
    adaptive: Adaptive | None = None,
) -> Callable[[list[Example], int], ChunkProgram]:
    """Sample ``sampling.n`` solutions per question (with ``adaptive``: a first pass, then more for the questions
    not yet reliably solved, within the same budget); optionally rationalize the unsolved ones with a hint."""

    def program(chunk: list[Example], seed: int) -> ChunkProgram:
        prompts = [task.build_prompt(ex, fmt) for ex in chunk]
        first = sampling.n if adaptive is None else min(adaptive.first, sampling.n)
        gens = yield prompts, replace(sampling, n=first, seed=seed)
        by_question = _sampled(task, fmt, chunk, prompts, gens)
        if adaptive is not None:
            todo = [
                (ex, p)
                for ex, p in zip(chunk, prompts, strict=True)
                if not all(solved(r, verify) for r in by_question[ex.id])
            ]
            budget = (sampling.n - first) * len(chunk)
            extra = min(adaptive.max_samples - first, budget // len(todo)) if todo else 0
            if extra >= 1:
                gens = yield [p for _, p in todo], replace(sampling, n=extra, seed=seed + 2)
                more = _sampled(task, fmt, [ex for ex, _ in todo], [p for _, p in todo], gens, first_index=first)
                for qid, new in more.items():
                    by_question[qid] += new
        records = [r for ex in chunk for r in by_question[ex.id]]
        if rationalize:
            solved_ids = {r["id"] for r in records if solved(r, verify)}
            todo = [(ex, p) for ex, p in zip(chunk, prompts, strict=True) if ex.id not in solved_ids]
            if todo:
                hinted = [_with_hint(p, ex.answer) for ex, p in todo]
                gens = yield hinted, replace(sampling, seed=seed + 1)
                # Recorded with the original prompt: the hint is removed from what the model will be trained on.
                for (ex, prompt), gen in zip(todo, gens, strict=True):
                    records += [
                        _solution_record(task, fmt, ex, k, "rationalized", prompt, c)
                        for k, c in enumerate(gen.completions)
                    ]
        return records

    return program


def self_correction_records(
    task: Task, fmt: PromptFormat, sampling: SamplingConfig, instruction: str, verify: str
) -> Callable[[list[Example], int], ChunkProgram]:
    """First attempt, then a review turn; each record holds both answers and whether each verifies."""

    def program(chunk: list[Example], seed: int) -> ChunkProgram:
        prompts = [task.build_prompt(ex, fmt) for ex in chunk]
        first = yield prompts, replace(sampling, seed=seed)
        convs, meta = [], []
        for ex, prompt, gen in zip(chunk, prompts, first, strict=True):
            for k, c in enumerate(gen.completions):
                convs.append(correction_turns(prompt, c.text, instruction))
                meta.append((ex, prompt, k, c.text, c.finish_reason, len(c.token_ids)))
        revised = yield convs, replace(sampling, n=1, seed=seed + 1)
        records = []
        for (ex, prompt, k, text, finish, tokens), gen in zip(meta, revised, strict=True):
            rev = gen.completions[0]
            a, b = _score(task, fmt, ex, text), _score(task, fmt, ex, rev.text)
            records.append(
                {
                    "id": ex.id,
                    "sample": k,
                    "gold": ex.answer,
                    "prompt": prompt,
                    "first": text,
                    "revision": rev.text,
                    "first_correct": a[f"{verify}_correct"],
                    "revised_correct": b[f"{verify}_correct"],
                    "first_answer": a["flexible_answer"],
                    "revised_answer": b["flexible_answer"],
                    "first_finish_reason": finish,
                    "revision_finish_reason": rev.finish_reason,
                    "tokens": tokens + len(rev.token_ids),
                    "revision_tokens": len(rev.token_ids),
                }
            )
        return records

    return program


def round_questions(cfg, task: Task, r: int) -> list[Example]:
    """The questions round ``r`` generates from: the whole ``task.train_split``, or its ``r``-th block of
    ``task.train_limit`` questions (the first block every round when ``new_questions_each_round`` is off)."""
    t = cfg.task
    what = f"round {r}: task.train_split {t.train_split!r}"
    if t.train_limit is None:
        return check_examples(task.load(t.train_split), what)
    block = r - 1 if t.new_questions_each_round else 0
    first, end = block * t.train_limit, (block + 1) * t.train_limit
    examples = task.load(t.train_split, limit=end)
    what += f" (questions {first}-{end - 1}, task.train_limit={t.train_limit})"
    return check_examples(examples[first:], what)


def generate_round(
    cfg,
    task: Task,
    fmt: PromptFormat,
    r: int,
    out_dir: Path,
    engine: Engine | None,
    shard: tuple[int, int] | None = None,
) -> list[dict]:
    """Round ``r``'s generation records, generating the chunks missing from ``out_dir`` (only those of shard ``k``
    of ``n`` when given: chunks ``i % n == k``); with ``engine=None`` every chunk must be on disk already."""
    g = cfg.generation
    sampling = g.sampling(stop=fmt.stop)
    if cfg.pipeline == "self_training":
        adaptive = Adaptive(g.adaptive_first, g.adaptive_max_samples or 2 * g.n) if g.adaptive else None
        make = self_training_records(task, fmt, sampling, g.rationalize, cfg.filtering.verify, adaptive)
    else:
        make = self_correction_records(task, fmt, sampling, g.correction_prompt, cfg.filtering.verify)
    select = None if shard is None else (lambda i: i % shard[1] == shard[0])
    return run_chunked(
        round_questions(cfg, task, r),
        out_dir,
        g.chunk_size,
        make,
        lambda i: chunk_seed(cfg.seed, r, i),
        f"round {r} generation",
        engine=engine,
        select=select,
    )
