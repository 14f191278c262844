"""The shipped run configs load and validate, and name formats their tasks have."""

from pathlib import Path

import pytest

from dynsdpb_selfplay.rounds.config import load_config
from dynsdpb_selfplay.tasks import get_task

CONFIGS = sorted((Path(__file__).parent.parent / "pipelines" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_is_valid(path):
    cfg = load_config(path)
    task = get_task(cfg.task.name, **cfg.task.options)
    fmt = task.get_format(name=cfg.task.format)
    assert fmt.chat or cfg.pipeline == "self_training"


def test_there_are_demo_and_gpu_configs():
    assert {"demo", "gsm8k_self_training_gpu", "gsm8k_self_correction_gpu"} <= {p.stem for p in CONFIGS}


ACCELERATE = sorted((Path(__file__).parent.parent / "pipelines" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE, ids=[p.stem for p in ACCELERATE])
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"single_gpu": "NO", "multi_gpu": "MULTI_GPU", "fsdp2": "FSDP"}
    expected.update(zero2="DEEPSPEED", zero3="DEEPSPEED")
    config = load_config_from_file(str(path))
    assert config.distributed_type.value == expected[path.stem]
    if path.stem.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])
    if path.stem == "fsdp2":
        assert config.fsdp_config["fsdp_version"] == 2
