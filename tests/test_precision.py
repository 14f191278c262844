"""The number format: one rule for ``auto`` (bf16 only where the processor computes it natively) used by engines,
training, ``dynsdpb sft`` and the shipped configs; and rounds hand the next round the exact trained weights."""

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from dynsdpb_selfplay import DynSDPBConfig, precision
from dynsdpb_selfplay.engines.base import EngineConfig
from dynsdpb_selfplay.precision import EmulatedBF16Warning, cpu_features, resolve_bf16, resolve_dtype
from dynsdpb_selfplay.rounds import training
from dynsdpb_selfplay.rounds.config import load_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to be a CPU machine of a given kind: ``cpu(capability, flags)``."""

    def make(capability: str, flags: set[str]):
        cpu_features.cache_clear()
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: "avx512_bf16" in flags, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: "amx_bf16" in flags, raising=False)
        monkeypatch.setattr(precision, "_cpuinfo_flags", lambda: set(flags))

    yield make
    cpu_features.cache_clear()


AVX2 = ("AVX2", {"avx2", "fma"})
AVX512_NO_BF16 = ("AVX512", {"avx2", "avx512f", "avx512bw", "avx512vl"})  # "AVX512" does not imply bf16
AVX512_BF16 = ("AVX512", {"avx2", "avx512f", "avx512bw", "avx512_bf16"})
AMX = ("AMX", {"avx512f", "amx_tile", "amx_bf16"})


@pytest.mark.parametrize(("kind", "native"), [(AVX2, False), (AVX512_NO_BF16, False), (AVX512_BF16, True), (AMX, True)])
def test_auto_is_bf16_only_where_the_cpu_has_bf16_instructions(cpu, kind, native):
    cpu(*kind)
    assert cpu_features()["native_bf16"] is native
    assert cpu_features()["capability"] == kind[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        assert resolve_dtype("auto") == ("bfloat16" if native else "float32")
        assert resolve_bf16(None) is native
        assert resolve_dtype("float32") == "float32" and resolve_bf16(False) is False


@pytest.mark.parametrize(("kind", "warns"), [(AVX2, True), (AVX512_NO_BF16, True), (AVX512_BF16, False)])
def test_an_explicit_bf16_wins_and_warns_where_it_is_emulated(cpu, kind, warns):
    cpu(*kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_dtype("bfloat16") == "bfloat16"
        assert resolve_bf16(True) is True
    emulated = [w for w in caught if issubclass(w.category, EmulatedBF16Warning)]
    assert len(emulated) == (2 if warns else 0)
    if warns:
        assert "no bf16 instructions" in str(emulated[0].message) and kind[0] in str(emulated[0].message)


def test_dynsdpb_config_and_sft_recipes_default_to_the_native_format(cpu, tmp_path):
    from dynsdpb_selfplay.cli.sft import make_parser

    cpu(*AVX2)
    assert DynSDPBConfig(output_dir=str(tmp_path), use_cpu=True).bf16 is False  # TRL's default would be True
    assert DynSDPBConfig(output_dir=str(tmp_path), use_cpu=True, fp16=False, bf16=False).bf16 is False
    argv = ["--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", str(tmp_path), "--use_cpu"]
    _, args, _, _ = make_parser().parse_args_and_config(args=argv)
    assert args.bf16 is False
    with pytest.warns(EmulatedBF16Warning):
        assert DynSDPBConfig(output_dir=str(tmp_path), use_cpu=True, bf16=True).bf16 is True
    cpu(*AVX512_BF16)
    assert DynSDPBConfig(output_dir=str(tmp_path), use_cpu=True).bf16 is True
    # Without use_cpu, transformers refuses bf16 when there is no accelerator; the CPU is then the device anyway.
    config = DynSDPBConfig(output_dir=str(tmp_path))
    assert (config.bf16, config.use_cpu) == (True, True)
    _, args, _, _ = make_parser().parse_args_and_config(args=argv)
    assert args.bf16 is True


def test_round_training_takes_the_native_format(cpu, tmp_path):
    cfg = load_config(REPO / "pipelines" / "configs" / "gsm8k_self_training_gpu.yaml")  # sets no bf16
    cpu(*AVX2)
    assert training.training_args(cfg, tmp_path).bf16 is False
    cpu(*AMX)
    assert training.training_args(cfg, tmp_path).bf16 is True


def test_shipped_configs_leave_the_number_format_to_the_machine():
    configs = sorted((REPO / "pipelines" / "configs").glob("*.yaml"))
    runs = [c for c in configs if "nlu" not in c.name]  # the NLU recipe is a `dynsdpb classify` config
    assert len(runs) >= 3
    for path in runs:
        cfg = load_config(path)
        assert cfg.engine.dtype == "auto", path
        # fp32 training is a choice every machine computes natively (the demo makes it: docs/LOG.md); bf16 is not.
        assert cfg.training.args.get("bf16") in (None, False), path
    assert EngineConfig().dtype == "auto"
    for path in sorted((REPO / "benchmarks" / "configs").glob("*.yaml")):
        text = path.read_text()
        assert "bfloat16" not in text and "bf16: true" not in text, path


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_round_hands_the_next_round_exactly_the_trained_weights(tmp_path, lora, monkeypatch):
    """bf16 autocast on purpose: its master weights are fp32, and saving them rounded to bf16 lost most of each
    update. The saved model must reload (as the next round's training loads it) bit for bit."""
    from helpers import save_tiny_model

    from dynsdpb_selfplay.rounds.config import from_dict

    base = save_tiny_model(tmp_path / "base")
    train = {"per_device_train_batch_size": 2, "learning_rate": 1e-4, "max_steps": 3, "max_length": 64, "bf16": True}
    if lora:
        train["lora"] = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    cfg = from_dict(
        {
            "model": str(base),
            "task": {"name": "round_fixtures:EchoTask"},
            "training": train,
            "engine": {"backend": "hf", "dtype": "float32"},
        }
    )
    trained = {}
    save = training.save_round_model

    def spy(trainer, tokenizer, out_dir, **kw):
        model = trainer.model
        final = copy.deepcopy(model).merge_and_unload() if lora else model
        trained.update({k: v.detach().clone() for k, v in final.state_dict().items()})
        return save(trainer, tokenizer, out_dir, **kw)

    monkeypatch.setattr(training, "save_round_model", spy)
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Say {i}."}],
            "completion": [{"role": "assistant", "content": f"{i} {i} {i}"}],
        }
        for i in range(8)
    ]
    with pytest.warns(EmulatedBF16Warning) if not precision.native_bf16() else warnings.catch_warnings():
        info = training.train_round(rows, str(base), tmp_path / "model", tmp_path / "trainer", cfg)
    assert info["steps"] == 3
    start = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).state_dict()
    reloaded = AutoModelForCausalLM.from_pretrained(info["model"], dtype=torch.float32).state_dict()
    assert json.loads((Path(info["model"]) / "config.json").read_text())["dtype"] == "float32"
    assert reloaded.keys() == trained.keys()
    changed = 0
    for name, weight in trained.items():
        assert weight.dtype == torch.float32, name
        assert torch.equal(reloaded[name], weight), f"{name}: the saved weights differ from the trained ones"
        changed += int(not torch.equal(weight, start[name]))
    assert changed > 0  # the round did update the weights, and all of the update reached the next round
