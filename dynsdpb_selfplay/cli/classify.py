"""``dynsdpb classify``: fine-tune an encoder classifier with plain training and with DynSDPB over seeds.

Flags and YAML as TRL/transformers scripts take them (``TrlParser``): the fields of
:class:`~dynsdpb_selfplay.nlu.compare.ClassificationArguments` plus every ``TrainingArguments`` field and the
``distillation_*`` fields, e.g. ``dynsdpb classify --config pipelines/configs/nlu_gsm8k_steps_minilm.yaml``.
"""

from __future__ import annotations

import argparse
import sys


def make_parser(prog: str = "dynsdpb classify"):
    from trl import TrlParser

    from ..distill.classification import DynSDPBClassificationConfig
    from ..nlu.compare import ClassificationArguments

    return TrlParser((ClassificationArguments, DynSDPBClassificationConfig), prog=prog)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser(
        "classify",
        help="plain fine-tuning vs DynSDPB of an encoder classifier (GLUE, CSV/JSONL, or verifier rows from runs)",
        add_help=False,
    )


def run(argv: list[str]) -> int:
    from ..errors import UserInputError
    from ..nlu.compare import compare

    try:
        script_args, training_args = make_parser().parse_args_and_config(args=argv)
        compare(script_args, training_args)
    except (UserInputError, ValueError) as e:
        print(f"dynsdpb classify: error: {e}", file=sys.stderr)
        return 2
    return 0
