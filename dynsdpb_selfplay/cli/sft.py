"""``dynsdpb sft``: TRL's ``trl sft`` recipe, trained with DynSDPB.

Accepts the same YAML file and flags as ``trl sft --config recipe.yaml`` (TRL's own ``TrlParser`` and dataclasses),
with ``DynSDPBConfig`` in place of ``SFTConfig``, so the ``distillation_*`` fields can be added to the file or the
command line and everything else keeps its meaning.
"""

from __future__ import annotations

import argparse


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


def train(script_args, training_args, model_args, dataset_args):
    """Mirror of ``trl.scripts.sft.main`` with :class:`DynSDPBTrainer`; returns the trainer."""
    from datasets import load_dataset
    from trl import get_dataset, get_peft_config, get_quantization_config

    from ..distill.trainer import DynSDPBTrainer

    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if training_args.model_init_kwargs is not None:
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs

    if dataset_args.datasets:
        dataset = get_dataset(dataset_args)
    elif script_args.dataset_name:
        dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    else:
        raise SystemExit("dynsdpb sft: give `datasets` (a dataset mixture) or `dataset_name` in the config or flags")
    if script_args.dataset_train_split not in dataset:
        raise SystemExit(
            f"dynsdpb sft: dataset_train_split={script_args.dataset_train_split!r} not found; splits: {list(dataset)}"
        )

    trainer = DynSDPBTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    if hasattr(trainer, "end"):
        trainer.end()
    return trainer


def run(argv: list[str]) -> int:
    parser = make_parser()
    script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(args=argv)
    train(script_args, training_args, model_args, dataset_args)
    return 0
