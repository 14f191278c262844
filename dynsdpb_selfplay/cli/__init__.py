"""The ``dynsdpb`` command: one subcommand per module in this package.

Each subcommand module exposes ``add_parser(subparsers)`` (registers its parser and sets ``func``) so that
``dynsdpb --help`` lists them all; heavy imports happen inside the handlers, keeping ``--help`` fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..signals import sigterm_unwinds

# Only the command's own names: library code (sigterm_unwinds, Terminated) is imported from its module,
# dynsdpb_selfplay.signals (tests/test_layers.py checks this).
__all__ = ["build_parser", "main"]

# name -> module under dynsdpb_selfplay.cli; add new subcommands here.
SUBCOMMANDS = {
    "sft": "sft",
    "models": "models",
    "eval": "eval",
    "run": "run",
    "classify": "classify",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynsdpb", description="Small language models that improve themselves.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS.values():
        importlib.import_module(f"{__name__}.{module}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand, under :func:`sigterm_unwinds` (so ``run`` also says which phases are saved on ``kill``)."""
    argv = sys.argv[1:] if argv is None else argv
    with sigterm_unwinds():
        # `dynsdpb sft` and `dynsdpb classify` hand their arguments to TRL's parser (YAML config + dataclass flags).
        if argv and argv[0] in ("sft", "classify"):
            module = importlib.import_module(f"{__name__}.{SUBCOMMANDS[argv[0]]}")
            return module.run(argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
