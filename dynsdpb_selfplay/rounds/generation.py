"""Generation phases: sampled solutions (self-training) and answer-then-revise trajectories (self-correction).

Questions are processed in chunks; each finished chunk is one atomically written file, and chunk ``i`` samples with
seed ``hash(run seed, round, i)``, so an interrupted phase resumes at the first missing chunk and produces exactly
the records an uninterrupted run would have: nothing lost, nothing duplicated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from ..engines.base import Engine, SamplingConfig
from ..errors import UserInputError
from ..tasks.base import Example, PromptFormat, Task
from .faults import maybe_fault
from .rundir import read_jsonl_records, write_jsonl

__all__ = ["chunk_seed", "run_chunked", "self_correction_records", "self_training_records"]


def chunk_seed(seed: int, round_index: int, chunk: int) -> int:
    digest = hashlib.sha256(f"{seed}/{round_index}/{chunk}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def run_chunked(
    examples: list[Example],
    out_dir: Path,
    chunk_size: int,
    make_records: Callable[[list[Example], int], list[dict]] | None,
    seed_of: Callable[[int], int],
    desc: str,
    fault_phase: str = "",
    select: Callable[[int], bool] | None = None,
) -> list[dict]:
    """``make_records(chunk, seed)`` for every chunk not on disk yet; all records, in question order.

    With ``select``, only chunks ``i`` with ``select(i)`` are generated (a shard) and only their records returned.
    Chunk ``i``'s records depend only on its questions and ``seed_of(i)``, so shards merged in chunk order equal
    an unsharded run."""
    chunks = [examples[i : i + chunk_size] for i in range(0, len(examples), chunk_size)]
    records: list[dict] = []
    for i, chunk in enumerate(tqdm(chunks, desc=desc, unit="chunk", leave=False)):
        if select is not None and not select(i):
            continue
        path = out_dir / f"chunk-{i:05d}.jsonl"
        if path.exists():
            records += read_jsonl_records(path)
            continue
        if make_records is None:
            raise RuntimeError(f"{path} is missing after the generation shards finished")
        new = make_records(chunk, seed_of(i))
        write_jsonl(path, new, fault_phase)
        records += new
        maybe_fault(fault_phase, chunk=i)
    return records


def _with_hint(prompt, gold: str):
    if not isinstance(prompt, list):
        raise UserInputError("generation.rationalize needs a chat prompt format")
    hinted = [dict(m) for m in prompt]
    hinted[-1]["content"] += f"\n\n(Hint: the correct final answer is {gold}. Explain how to reach it.)"
    return hinted


def _score(task: Task, fmt: PromptFormat, ex: Example, text: str) -> dict:
    s = task.score(text, ex, fmt)
    return {"strict_answer": s.strict, "flexible_answer": s.flexible, "strict_correct": bool(s.strict_correct),
            "flexible_correct": bool(s.flexible_correct)}  # fmt: skip


def _solution_record(task: Task, fmt: PromptFormat, ex: Example, k: int, source: str, prompt, completion) -> dict:
    return {"id": ex.id, "sample": k, "source": source, "gold": ex.answer, "prompt": prompt,
            "response": completion.text, "finish_reason": completion.finish_reason,
            **_score(task, fmt, ex, completion.text)}  # fmt: skip


def self_training_records(
    engine: Engine, task: Task, fmt: PromptFormat, sampling: SamplingConfig, rationalize: bool, verify: str
) -> Callable[[list[Example], int], list[dict]]:
    """Sample ``sampling.n`` solutions per question; optionally rationalize the unsolved ones with a hint."""

    def make(chunk: list[Example], seed: int) -> list[dict]:
        prompts = [task.build_prompt(ex, fmt) for ex in chunk]
        gens = engine.generate(prompts, SamplingConfig(**{**vars(sampling), "seed": seed}))
        records = []
        for ex, prompt, gen in zip(chunk, prompts, gens, strict=True):
            records += [_solution_record(task, fmt, ex, k, "sample", prompt, c) for k, c in enumerate(gen.completions)]
        if rationalize:
            solved = {r["id"] for r in records if r[f"{verify}_correct"]}
            todo = [(ex, p) for ex, p in zip(chunk, prompts, strict=True) if ex.id not in solved]
            if todo:
                hinted = [_with_hint(p, ex.answer) for ex, p in todo]
                gens = engine.generate(hinted, SamplingConfig(**{**vars(sampling), "seed": seed + 1}))
                # Recorded with the original prompt: the hint is removed from what the model will be trained on.
                for (ex, prompt), gen in zip(todo, gens, strict=True):
                    records += [
                        _solution_record(task, fmt, ex, k, "rationalized", prompt, c)
                        for k, c in enumerate(gen.completions)
                    ]
        return records

    return make


def correction_turns(prompt, first: str, instruction: str) -> list[dict]:
    if not isinstance(prompt, list):
        raise UserInputError("the self_correction pipeline needs a chat prompt format (task.format)")
    return [*prompt, {"role": "assistant", "content": first}, {"role": "user", "content": instruction}]


def self_correction_records(
    engine: Engine, task: Task, fmt: PromptFormat, sampling: SamplingConfig, instruction: str, verify: str
) -> Callable[[list[Example], int], list[dict]]:
    """First attempt, then a review turn; each record holds both answers and whether each verifies."""

    def make(chunk: list[Example], seed: int) -> list[dict]:
        prompts = [task.build_prompt(ex, fmt) for ex in chunk]
        first = engine.generate(prompts, SamplingConfig(**{**vars(sampling), "seed": seed}))
        convs, meta = [], []
        for ex, prompt, gen in zip(chunk, prompts, first, strict=True):
            for k, c in enumerate(gen.completions):
                convs.append(correction_turns(prompt, c.text, instruction))
                meta.append((ex, prompt, k, c.text))
        revised = engine.generate(convs, SamplingConfig(**{**vars(sampling), "n": 1, "seed": seed + 1}))
        records = []
        for (ex, prompt, k, text), gen in zip(meta, revised, strict=True):
            rev = gen.completions[0].text
            a, b = _score(task, fmt, ex, text), _score(task, fmt, ex, rev)
            records.append({"id": ex.id, "sample": k, "gold": ex.answer, "prompt": prompt, "first": text,
                            "revision": rev, "first_correct": a[f"{verify}_correct"],
                            "revised_correct": b[f"{verify}_correct"], "first_answer": a["flexible_answer"],
                            "revised_answer": b["flexible_answer"]})  # fmt: skip
        return records

    return make
