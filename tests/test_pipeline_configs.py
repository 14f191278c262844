"""The shipped configs load and validate: run configs (with formats their tasks have), `dynsdpb classify` configs
(``nlu_*.yaml``) and accelerate configs; the setup script checks the disk before it installs."""

import os
import subprocess
from pathlib import Path

import pytest

from dynsdpb_selfplay.rounds.config import load_config
from dynsdpb_selfplay.tasks import get_task

ROOT = Path(__file__).parent.parent
ALL = sorted((ROOT / "pipelines" / "configs").glob("*.yaml"))
CONFIGS = [p for p in ALL if not p.stem.startswith("nlu_")]
NLU_CONFIGS = [p for p in ALL if p.stem.startswith("nlu_")]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_is_valid(path):
    cfg = load_config(path)
    task = get_task(cfg.task.name, **cfg.task.options)
    fmt = task.get_format(name=cfg.task.format)
    assert fmt.chat or cfg.pipeline == "self_training"


@pytest.mark.parametrize("path", NLU_CONFIGS, ids=[p.stem for p in NLU_CONFIGS])
def test_shipped_classify_config_parses(path, gsm8k_data, monkeypatch):
    from dynsdpb_selfplay.cli.classify import make_parser
    from dynsdpb_selfplay.nlu.compare import load_splits

    script_args, training_args = make_parser().parse_args_and_config(args=["--config", str(path)])
    assert set(script_args.trainers) == {"plain", "dynsdpb"} and len(script_args.seeds) >= 3
    assert training_args.distillation_schedule == "dynamic"
    monkeypatch.setenv("DYNSDPB_GSM8K_DIR", str(gsm8k_data))
    train, test = load_splits(script_args)
    assert len(train) == script_args.limit and len(test) == script_args.eval_limit


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


def test_setup_refuses_to_start_on_a_full_disk(tmp_path):
    """scripts/setup.sh says how much space it needs before pip fails halfway with 'No space left on device'."""
    env = {**os.environ, "VENV": str(tmp_path / "venv"), "DYNSDPB_SETUP_MIN_FREE_GB": str(10**9)}
    done = subprocess.run(["bash", str(ROOT / "scripts/setup.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert f"setup: {tmp_path} has" in done.stderr and f"needs about {10**9} GB" in done.stderr
    assert not (tmp_path / "venv").exists()  # nothing half-made
