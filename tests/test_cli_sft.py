"""`dynsdpb sft --config recipe.yaml` takes a `trl sft` recipe unchanged, plus the distillation fields."""

import json

import pytest
import yaml
from helpers import arithmetic_rows, make_model

from dynsdpb_selfplay.cli import main


@pytest.fixture
def recipe(tmp_path, tokenizer):
    model_dir = tmp_path / "tiny-model"
    make_model(len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_rows(12)))
    # A plain `trl sft` recipe: nothing in it knows about DynSDPB.
    cfg = {
        "model_name_or_path": str(model_dir),
        "datasets": [{"path": "json", "data_files": str(data), "split": "train"}],
        "output_dir": str(tmp_path / "out"),
        "max_steps": 3,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "max_length": 64,
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "no",
        "disable_tqdm": True,
        "gradient_checkpointing": False,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def test_trl_recipe_runs_with_dynsdpb(recipe, tmp_path):
    path, _ = recipe
    assert main(["sft", "--config", str(path)]) == 0
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_cli_flags_override_the_recipe_and_reach_the_trainer(recipe):
    from dynsdpb_selfplay.cli.sft import make_parser, train
    from dynsdpb_selfplay.distill.trainer import DynSDPBTrainer

    path, _ = recipe
    argv = ["--config", str(path), "--distillation_schedule", "static", "--distillation_temperature", "2"]
    trainer = train(*make_parser().parse_args_and_config(args=argv))
    assert isinstance(trainer, DynSDPBTrainer)
    logs = [h for h in trainer.state.log_history if "dynsdpb/temperature" in h]
    assert len(logs) == 3 and logs[-1]["dynsdpb/temperature"] == pytest.approx(2.0)
    assert logs[-1]["dynsdpb/distilled_tokens"] > 0


def test_distillation_fields_in_yaml_are_validated(recipe, tmp_path, capsys):
    path, cfg = recipe
    path.write_text(yaml.safe_dump({**cfg, "distillation_temperature": 0}))
    assert main(["sft", "--config", str(path)]) == 2
    assert "dynsdpb sft: error: distillation_temperature=0: must be > 0" in capsys.readouterr().err


def test_the_docs_list_every_distillation_field_with_its_default():
    """The options table of docs/dynsdpb.md is where users look; a new or changed field must show there as it is."""
    from dataclasses import fields
    from pathlib import Path

    from dynsdpb_selfplay.distill.config import DistillationArguments

    readme = (Path(__file__).resolve().parents[1] / "docs" / "dynsdpb.md").read_text()
    rows = {}
    for line in readme.splitlines():
        if line.startswith("| `distillation_"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells[1].strip("`")
    expected = {f.name: str(f.default) for f in fields(DistillationArguments)}
    assert rows == expected
