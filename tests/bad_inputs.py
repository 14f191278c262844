"""Builders of bad inputs for tests/test_bad_input.py: data files, model folders, recipes and run configs.

Each helper takes the test context ``c`` (``c.tmp`` a fresh folder, ``c.model`` the tiny model folder) and returns
what the case calls, so the table in test_bad_input.py stays one line per case.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from helpers import arithmetic_rows, make_tokenizer, round_config, write_config

from dynsdpb_selfplay.cli import main
from dynsdpb_selfplay.tasks import GSM8K, Arith, Example, Task

__all__ = [
    "DupTask",
    "eval_cli",
    "gsm8k",
    "model_variant",
    "round_config",
    "run_cli",
    "sft_cli",
    "sft_recipe",
    "unwritable",
    "write_config",
]

GOOD = json.dumps({"question": "q", "answer": "a\n#### 1"})


class DupTask(Task):
    """A user task whose loader gives two examples the same id."""

    name = "dup"
    formats = Arith.formats

    def load(self, split, limit=None):
        return [Example("q0", "Say 1.", "1"), Example("q0", "Say 2.", "2")][:limit]

    def build_prompt(self, example, fmt):
        return example.question


def gsm8k(content: str | bytes):
    """Load the test split of a GSM8K folder whose test.jsonl holds ``content``."""

    def call(c):
        (c.tmp / "test.jsonl").write_bytes(content if isinstance(content, bytes) else content.encode())
        return GSM8K(c.tmp).load("test")

    return call


def eval_cli(c, *args: str) -> int:
    return main(["eval", "--backend", "hf", "--dtype", "float32", "--max-new-tokens", "4", *args])


def model_variant(c, chat_template: bool = True, pad: bool = True, weights: str = "safetensors") -> str:
    """A copy of the tiny model; its tokenizer without a chat template or pad token, or its weights pickled."""
    src, dst = Path(c.model), c.tmp / "variant"
    dst.mkdir()
    for name in ("config.json", "generation_config.json"):
        shutil.copy(src / name, dst / name)
    if weights == "safetensors":
        shutil.copy(src / "model.safetensors", dst / "model.safetensors")
    elif weights == "pickle":
        (dst / "pytorch_model.bin").write_bytes(b"a pickle that must never be loaded")
    tok = make_tokenizer()
    tok.chat_template = tok.chat_template if chat_template else None
    tok.pad_token = tok.pad_token if pad else None
    tok.save_pretrained(dst)
    return str(dst)


def unwritable(c) -> Path:
    """A folder nobody can create: under a regular file (chmod cannot stop root, who runs some CI containers)."""
    (c.tmp / "a-file").write_text("not a folder")
    return c.tmp / "a-file" / "out"


def run_cli(c, cfg: dict, *args: str) -> int:
    return main(["run", str(write_config(c.tmp, cfg)), *args])


def sft_recipe(c, rows: list[dict] | str, model: str | None = None, **overrides) -> Path:
    """A `trl sft` recipe over ``rows`` (or raw JSONL text), the tiny model, two-row batches, CPU."""
    data = c.tmp / "train.jsonl"
    data.write_text(rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "model_name_or_path": model or c.model,
        "output_dir": str(c.tmp / "out"),
        "datasets": [{"path": "json", "data_files": str(data), "split": "train"}],
        "max_steps": 1,
        "per_device_train_batch_size": 2,
        "max_length": 64,
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "gradient_checkpointing": False,
        **overrides,
    }
    path = c.tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def sft_cli(c, rows: list[dict] | str | None = None, **overrides) -> int:
    rows = arithmetic_rows(8) if rows is None else rows
    return main(["sft", "--config", str(sft_recipe(c, rows, **overrides))])
