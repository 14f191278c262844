"""``dynsdpb sft``: TRL's ``trl sft`` recipe, trained with DynSDPB.

Accepts the same YAML file and flags as ``trl sft --config recipe.yaml`` (TRL's own ``TrlParser`` and dataclasses),
with ``DynSDPBConfig`` in place of ``SFTConfig``, so the ``distillation_*`` fields can be added to the file or the
command line and everything else keeps its meaning. Before training, the inputs are checked: a local model folder
must hold safetensors weights (never pickles), the data must be readable and non-empty, conversational rows need a
chat template. Those errors and TRL's own configuration errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserInputError


def make_parser(prog: str = "dynsdpb sft"):
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser

    from ..distill.config import DynSDPBConfig

    return TrlParser((ScriptArguments, DynSDPBConfig, ModelConfig, DatasetMixtureConfig), prog=prog)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    # Listed in `dynsdpb --help`; the arguments themselves are parsed by TrlParser in `run`.
    subparsers.add_parser(
        "sft",
        help="TRL's SFT recipe (same YAML/flags as `trl sft`) with DynSDPB; `dynsdpb sft --help` lists all flags",
        add_help=False,
    )


def _describe(script_args, dataset_args) -> str:
    if dataset_args.datasets:
        return ", ".join(
            f"{d.path}" + (f" (data_files={d.data_files})" if d.data_files else "") for d in dataset_args.datasets
        )
    return str(script_args.dataset_name)


def _load(script_args, dataset_args):
    """The datasets of the recipe; unreadable or empty data is a :class:`UserInputError` naming them."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError
    from trl import get_dataset

    which = _describe(script_args, dataset_args)
    try:
        if dataset_args.datasets:
            return get_dataset(dataset_args)
        if script_args.dataset_name:
            return load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    except DatasetGenerationError as e:  # the reader's own error (e.g. "JSON parse error ... in row 3") is the cause
        raise UserInputError(f"dataset {which} cannot be read: {e.__cause__ or e}") from None
    except StopIteration:  # what datasets' JSON reader raises for an empty file
        raise UserInputError(f"dataset {which} is empty") from None
    raise UserInputError("give `datasets` (a dataset mixture) or `dataset_name` in the config or flags")


def _check_chat_template(model_id: str, rows, training_args, model_args) -> None:
    """Conversational rows need a chat template: the model's, or ``chat_template_path``."""
    from transformers import AutoTokenizer
    from trl.data_utils import is_conversational

    if training_args.chat_template_path is not None or not is_conversational(rows[0]):
        return
    tokenizer = AutoTokenizer.from_pretrained(
        model_id, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
    )
    if not getattr(tokenizer, "chat_template", None):
        raise UserInputError(
            f"the dataset is conversational but model {model_id} has no chat template; set chat_template_path "
            "(a .jinja file or a model with a template) or use prompt/completion text rows"
        )


def build_trainer(script_args, training_args, model_args, dataset_args):
    """:class:`DynSDPBTrainer` as ``trl.scripts.sft.main`` builds its trainer, with the inputs checked first:
    safetensors weights only for a local model, readable and non-empty data, a chat template for chat rows."""
    from trl import get_peft_config, get_quantization_config

    from ..distill.trainer import DynSDPBTrainer
    from ..models import check_model_dir

    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
        use_safetensors=True,  # never unpickle *.bin weights
    )
    if training_args.model_init_kwargs is not None:
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs
    model_id = model_args.model_name_or_path
    if model_id and Path(model_id).is_dir():
        check_model_dir(model_id)

    dataset = _load(script_args, dataset_args)
    split = script_args.dataset_train_split
    if split not in dataset:
        raise UserInputError(f"dataset_train_split={split!r} not found; splits: {list(dataset)}")
    train_rows = dataset[split]
    if len(train_rows) == 0:
        raise UserInputError(f"dataset {_describe(script_args, dataset_args)}: split {split!r} is empty")
    _check_chat_template(model_id, train_rows, training_args, model_args)

    trainer = DynSDPBTrainer(
        model=model_id,
        args=training_args,
        train_dataset=train_rows,
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    dropped = len(train_rows) - len(trainer.train_dataset)
    if dropped:
        trainer.accelerator.print(
            f"dynsdpb sft: {dropped} of {len(train_rows)} training rows dropped: the prompt fills "
            f"max_length={training_args.max_length}, leaving no completion token"
        )
    return trainer


def _train_and_save(trainer, script_args, training_args) -> None:
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    if hasattr(trainer, "end"):
        trainer.end()


def train(script_args, training_args, model_args, dataset_args):
    """Mirror of ``trl.scripts.sft.main`` with :class:`DynSDPBTrainer`; returns the trainer."""
    trainer = build_trainer(script_args, training_args, model_args, dataset_args)
    _train_and_save(trainer, script_args, training_args)
    return trainer


def run(argv: list[str]) -> int:
    """Bad flags, config fields, data or model print one line and return 2; training errors keep their traceback."""
    try:
        script_args, training_args, model_args, dataset_args = make_parser().parse_args_and_config(args=argv)
        trainer = build_trainer(script_args, training_args, model_args, dataset_args)
    except (ValueError, OSError) as e:  # UserInputError, DatasetTooSmallError, TRL's own checks, unloadable model
        print(f"dynsdpb sft: error: {e}", file=sys.stderr)
        return 2
    _train_and_save(trainer, script_args, training_args)
    return 0
