"""The transformers backend on the tiny fixture model: batching, stops, sampling, weight updates, selection."""

from __future__ import annotations

import pytest

from dynsdpb_selfplay.engines import EngineConfig, SamplingConfig, make_engine, pick_backend
from dynsdpb_selfplay.engines.hf import HFEngine
from dynsdpb_selfplay.errors import EngineUnavailableError

PROMPTS = [
    "What is 2+3?",
    [{"role": "user", "content": "hello 12"}],
    "abc",
    "Question: Ava has 17 apples and buys 5 more. How many?",
    "x",
]


def _engine(path, **kw) -> HFEngine:
    return HFEngine.from_pretrained(str(path), EngineConfig(backend="hf", dtype="float32", **kw))


def _ids(generations):
    return [[c.token_ids for c in g.completions] for g in generations]


def test_greedy_is_independent_of_batching(tiny_model_dirs):
    """Left padding and length sorting must not change greedy outputs: batch size 1 == batch size 3."""
    sampling = SamplingConfig(max_new_tokens=24)
    engine = _engine(tiny_model_dirs[0], batch_size=1)
    one = engine.generate(PROMPTS, sampling)
    three = _engine(tiny_model_dirs[0], batch_size=3).generate(PROMPTS, sampling)
    capped = _engine(tiny_model_dirs[0], batch_size=8, max_batch_tokens=40)  # splits these prompts into batches
    assert [
        len(b)
        for b in capped._batches(
            sorted(range(5), key=lambda i: -len(one[i].prompt_token_ids)), [g.prompt_token_ids for g in one]
        )
    ] != [5]
    assert _ids(one) == _ids(three) == _ids(capped.generate(PROMPTS, sampling))
    assert len({tuple(g.completions[0].token_ids) for g in one}) > 1  # not one degenerate output for all prompts
    for prompt, g in zip(PROMPTS, one, strict=True):
        c = g.completions[0]
        assert len(c.token_ids) <= 24 and c.finish_reason in ("stop", "length")
        assert (c.finish_reason == "length") == (len(c.token_ids) == 24 and 2 not in c.token_ids)
        assert g.prompt_token_ids == engine.encode(prompt)


def test_chat_prompts_use_the_chat_template(tiny_model_dirs):
    engine = _engine(tiny_model_dirs[0])
    text = engine.render(PROMPTS[1])
    assert text == "<|user|>hello 12<|end|><|assistant|>"
    assert engine.encode(PROMPTS[1]) == engine.tokenizer(text, add_special_tokens=False).input_ids


def test_stop_strings_cut_the_text(tiny_model_dirs):
    engine = _engine(tiny_model_dirs[0])
    free = engine.generate(PROMPTS, SamplingConfig(max_new_tokens=24))
    # Stop at a character that the free-running output of the first prompt contains after its first character.
    text = free[0].completions[0].text
    stop = next(ch for ch in text[1:] if ch.strip())
    cut = engine.generate(PROMPTS[:1], SamplingConfig(max_new_tokens=24, stop=[stop]))[0].completions[0]
    assert cut.finish_reason == "stop" and stop not in cut.text and text.startswith(cut.text)
    assert len(cut.text) == text.index(stop)


def test_sampling_n_and_seed(tiny_model_dirs):
    engine = _engine(tiny_model_dirs[0])
    sampling = SamplingConfig(n=3, temperature=1.0, seed=7, max_new_tokens=12)
    a, b = engine.generate(PROMPTS, sampling), engine.generate(PROMPTS, sampling)
    assert all(len(g.completions) == 3 for g in a)
    assert _ids(a) == _ids(b)
    assert len({tuple(c.token_ids) for c in a[0].completions}) > 1
    other = engine.generate(PROMPTS, SamplingConfig(n=3, temperature=1.0, seed=8, max_new_tokens=12))
    assert _ids(other) != _ids(a)


def test_update_weights_matches_a_fresh_engine(tiny_model_dirs):
    sampling = SamplingConfig(max_new_tokens=16)
    engine = _engine(tiny_model_dirs[0])
    before = _ids(engine.generate(PROMPTS, sampling))
    engine.update_weights(str(tiny_model_dirs[1]))
    after = _ids(engine.generate(PROMPTS, sampling))
    assert after == _ids(_engine(tiny_model_dirs[1]).generate(PROMPTS, sampling))
    assert after != before


def test_lora_adapter_changes_outputs(tiny_model_dirs, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dirs[0]))
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    engine = _engine(tiny_model_dirs[0])
    sampling = SamplingConfig(max_new_tokens=16)
    plain = _ids(engine.generate(PROMPTS, sampling))
    adapted = _ids(engine.generate(PROMPTS, sampling, lora_path=str(tmp_path / "adapter")))
    assert adapted != plain
    assert _ids(engine.generate(PROMPTS, sampling)) == plain  # the adapter is off again afterwards


def test_config_validation():
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1)
    with pytest.raises(ValueError, match="greedy"):
        SamplingConfig(n=2)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)
    with pytest.raises(ValueError, match="top_k=-1"):
        SamplingConfig(top_k=-1)
    with pytest.raises(ValueError, match=r"min_p=1\.0"):
        SamplingConfig(min_p=1.0)
    with pytest.raises(ValueError, match="backend"):
        EngineConfig(backend="tgi")
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        EngineConfig(gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="multiprocessing=False .* tensor_parallel_size=2"):
        EngineConfig(multiprocessing=False, tensor_parallel_size=2)


@pytest.mark.parametrize(
    "fields,env,on_cpu,want",
    [
        ({}, None, True, False),  # one CPU worker: in this process
        ({}, None, False, True),  # a GPU: vLLM's own default
        ({"tensor_parallel_size": 2}, None, True, True),
        ({"distributed_executor_backend": "mp"}, None, True, True),
        ({}, "1", True, True),  # the user's VLLM_ENABLE_V1_MULTIPROCESSING wins over None
        ({}, "0", False, False),
        ({"multiprocessing": True}, "0", True, True),  # an explicit field wins over the variable
    ],
)
def test_when_vllm_gets_processes_of_its_own(monkeypatch, fields, env, on_cpu, want):
    from dynsdpb_selfplay.engines.vllm import use_multiprocessing

    if env is None:
        monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    else:
        monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", env)
    assert use_multiprocessing(EngineConfig(**fields), on_cpu) is want


@pytest.mark.parametrize("fields,backend", [({}, "uni"), ({"tensor_parallel_size": 2}, None)])
def test_an_in_process_engine_core_keeps_several_workers_in_processes(monkeypatch, tiny_model_dirs, fields, backend):
    """VLLM_ENABLE_V1_MULTIPROCESSING=0 puts the engine core in this process; only a single worker joins it there
    (vLLM's one-process executor), several keep theirs (a stand-in ``vllm.LLM`` records the arguments)."""
    import sys
    import types

    from dynsdpb_selfplay.engines.vllm import VLLMEngine

    seen = {}

    class LLM:
        def __init__(self, **kwargs):
            seen.update(kwargs)

        def get_tokenizer(self):
            return None

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM))
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv("DYNSDPB_SKIP_MEMORY_CHECK", "1")
    engine = VLLMEngine(str(tiny_model_dirs[0]), EngineConfig(backend="vllm", **fields))
    assert engine.in_process and seen.get("distributed_executor_backend") == backend


def test_missing_vllm_says_how_to_install(monkeypatch, tiny_model_dirs):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert pick_backend("auto") == "hf"
    with pytest.raises(EngineUnavailableError, match="pip install vllm"):
        make_engine(str(tiny_model_dirs[0]), EngineConfig(backend="vllm"))
    assert isinstance(make_engine(str(tiny_model_dirs[0]), EngineConfig(backend="auto", dtype="float32")), HFEngine)


def test_queued_groups_run_in_submission_order_each_as_its_own_batch(tiny_model_dirs):
    engine = HFEngine.from_pretrained(str(tiny_model_dirs[0]), EngineConfig(backend="hf", dtype="float32"))
    greedy = SamplingConfig(max_new_tokens=6)
    ids = [engine.encode(p) for p in ("12", "abc", "Say 7.", "x y")]
    first, second = engine.submit(ids[:2], greedy), engine.submit(ids[2:], greedy)
    order, out = [], {}
    for ticket, gens in engine.completed():
        order.append(ticket)
        out[ticket] = [g.completions[0].token_ids for g in gens]
    assert order == [first, second]
    assert out[first] == [g.completions[0].token_ids for g in engine.generate_ids(ids[:2], greedy)]
    assert out[second] == [g.completions[0].token_ids for g in engine.generate_ids(ids[2:], greedy)]


@pytest.mark.parametrize("cut", [{"top_k": 1}, {"min_p": 0.999}], ids=["top_k", "min_p"])
def test_tail_cuts_reach_the_sampler(tiny_model_dirs, cut):
    """Sampling at temperature 1.5 with a tail cut that keeps only the most likely token is greedy decoding; the same
    sampling without the cut is not (so the cut, not the seed, made it so)."""
    engine = _engine(tiny_model_dirs[0])
    greedy = _ids(engine.generate(PROMPTS, SamplingConfig(max_new_tokens=16)))
    hot = dict(temperature=1.5, seed=0, max_new_tokens=16)
    assert _ids(engine.generate(PROMPTS, SamplingConfig(**hot, **cut))) == greedy
    assert _ids(engine.generate(PROMPTS, SamplingConfig(**hot))) != greedy
