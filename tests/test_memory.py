"""The memory check before a model is loaded (dynsdpb_selfplay/memory.py), with a faked ``MemAvailable``: the
commands stop at once with a message that names the settings, instead of being OOM-killed halfway."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from dynsdpb_selfplay import memory
from dynsdpb_selfplay.cli import main
from dynsdpb_selfplay.memory import GIB, InsufficientMemoryError, check_memory, parameter_count, vllm_cpu_need


def fake_available(monkeypatch, nbytes: int) -> None:
    monkeypatch.setattr(memory, "mem_available", lambda: nbytes)


def test_the_estimate_counts_weights_kv_cache_start_up_batch_and_processes(tiny_model_dirs):
    path = tiny_model_dirs[0]
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())
    assert parameter_count(path) == params
    need = vllm_cpu_need(str(path), "float32", 2, 256)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    assert need.parts == {
        "weights (float32)": 4 * params,
        "KV cache": 2 * GIB,
        "start-up batch of 2048 tokens": 2048 * vocab * 4,
        "engine processes": memory.VLLM_PROCESSES,
    }
    assert vllm_cpu_need(str(path), "bfloat16", 2, 4096).parts["start-up batch of 4096 tokens"] == 4096 * vocab * 4
    assert parameter_count("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # a hub id: unknown, not checked


def test_a_need_over_memavailable_stops_with_the_settings_named(tiny_model_dirs, monkeypatch):
    need = vllm_cpu_need(str(tiny_model_dirs[0]), "float32", 2, 256)
    fake_available(monkeypatch, need.total + 1)
    check_memory(need)
    fake_available(monkeypatch, need.total - 1)
    with pytest.raises(InsufficientMemoryError) as e:
        check_memory(need)
    for setting in (
        "engine.cpu_kvcache_space_gb",
        "VLLM_CPU_KVCACHE_SPACE",
        "engine.max_model_len",
        "KV cache 2.00",
        "DYNSDPB_SKIP_MEMORY_CHECK=1",
    ):
        assert setting in str(e.value)
    monkeypatch.setenv("DYNSDPB_SKIP_MEMORY_CHECK", "1")
    check_memory(need)


def test_eval_with_vllm_stops_before_starting_the_engine(tiny_model_dirs, tmp_path, monkeypatch, capsys):
    """No engine process is started (the check runs before vLLM is imported): exit 2 and one line."""
    fake_available(monkeypatch, GIB)
    argv = [
        "eval",
        "--model",
        str(tiny_model_dirs[0]),
        "--task",
        "arith",
        "--limit",
        "2",
        "--backend",
        "vllm",
        "--max-model-len",
        "256",
        "--output",
        str(tmp_path / "e.jsonl"),
    ]
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynsdpb eval: error: the vLLM engine needs 5.9 GiB") and "only 1.0 GiB" in err
    assert "--max-model-len" in err and "KV cache 4.00" in err


def test_a_run_stops_before_training_that_cannot_fit_and_keeps_what_is_done(
    tiny_model_dirs, tmp_path, monkeypatch, capsys
):
    """The transformers engine fits, the training phase does not: the run stops there, naming training settings."""
    from helpers import round_config as config
    from helpers import write_config as write

    model = str(tiny_model_dirs[0])
    engine = memory.hf_need(model, "float32").total
    training = memory.training_need(model, 2, 64, lora=False).total  # test_rounds.config's batch and max_length
    assert engine < training
    fake_available(monkeypatch, (engine + training) // 2)
    write(tmp_path, config(model, rounds=1))
    assert main(["run", str(tmp_path / "run.yaml"), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "training needs at least" in err and "training.per_device_train_batch_size" in err
    assert "training.max_length" in err and f"--resume {tmp_path / 'run'}" in err
    done = json.loads((tmp_path / "run" / "state.json").read_text())["done"]
    assert done == ["round_0/validate", "round_0/eval", "round_1/generate", "round_1/filter"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for host memory (a CPU engine)")
def test_the_transformers_engine_is_checked_too(tiny_model_dirs, monkeypatch):
    from dynsdpb_selfplay.engines import EngineConfig
    from dynsdpb_selfplay.engines.hf import HFEngine

    fake_available(monkeypatch, 1000)
    with pytest.raises(InsufficientMemoryError, match="transformers engine needs at least .* engine.dtype"):
        HFEngine.from_pretrained(str(tiny_model_dirs[0]), EngineConfig(backend="hf", dtype="float32"))
