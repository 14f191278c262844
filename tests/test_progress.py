"""Generation progress (engines/progress.py) on the transformers engine: the reports add up to what was generated, and
the bar counts tokens against a bound that starts at the budget handed to the engine and shrinks to the tokens
generated. The vLLM engine's per-step reports: tests/test_engine_vllm.py."""

from __future__ import annotations

from dynsdpb_selfplay.engines import EngineConfig, SamplingConfig
from dynsdpb_selfplay.engines.base import progress_bar
from dynsdpb_selfplay.engines.hf import HFEngine

PROMPTS = ["What is 2+3?", "abc", "Question: Ava has 17 apples", "x", "The answer is"]


def _tokens(*groups) -> int:
    return sum(len(c.token_ids) for gens in groups for g in gens for c in g.completions)


def test_the_bar_counts_tokens_against_a_bound_that_shrinks_to_them(tiny_model_dirs):
    engine = HFEngine.from_pretrained(
        str(tiny_model_dirs[0]), EngineConfig(backend="hf", dtype="float32", batch_size=2)
    )
    ids = [engine.encode(p) for p in PROMPTS]
    greedy = SamplingConfig(max_new_tokens=24)
    sampled = SamplingConfig(n=2, temperature=1.0, seed=1, max_new_tokens=24, stop=["a"])
    events = []
    engine.progress = events.append  # a listener from before (the rounds count tokens) hears every report too
    with progress_bar(engine, 3, "test") as bar:
        first, second = engine.submit(ids[:3], greedy), engine.submit(ids[3:], sampled)
        assert (bar.n, bar.total) == (0, 3 * 24 + 2 * 2 * 24)  # the most the engine may generate, before it starts
        out = {}
        for ticket, gens in engine.completed():
            out[ticket] = gens
            if ticket == first:  # its tokens, and the bound: exact for it, the whole budget of the other
                assert (bar.n, bar.total) == (_tokens(gens), _tokens(gens) + 2 * 2 * 24)
        direct = engine.generate_ids(ids[:2], greedy)  # a direct call adds its own budget, once
        tokens = _tokens(out[first], out[second], direct)
        assert bar.n == bar.total == tokens < (3 + 2 * 2 + 2) * 24  # some completions stopped early: bound shrank
        assert bar.postfix.endswith("7/7 prompts")  # more prompts queued than the 3 the caller expected
    assert engine.progress == events.append
    assert sum(e.tokens for e in events) == tokens  # what the rounds record as generated_tokens
    assert sum(e.budget for e in events) == tokens + sum(e.unused for e in events)
    assert sum(e.queued for e in events) == sum(e.done for e in events) == 7
