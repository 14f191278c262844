"""Command-line flags made from config dataclasses, so an option's name, default and help exist once: in the
dataclass field (``max_new_tokens`` -> ``--max-new-tokens``; a bool ``x`` -> ``--x`` / ``--no-x``), and its check in
the dataclass's ``__post_init__``."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

__all__ = ["add_dataclass_flags", "from_flags"]


def _plain(tp):
    """``int | None`` -> ``int``; other annotations as they are."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, exclude=(), title: str | None = None) -> None:
    """One flag per init field of dataclass ``cls`` (except ``exclude``), in an argument group ``title``."""
    group = parser.add_argument_group(title or cls.__name__)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude:
            continue
        tp, default = _plain(hints[f.name]), _default(f)
        flag, what = "--" + f.name.replace("_", "-"), f"{f.metadata.get('help', '')} (default: {default})".strip()
        what = what.replace("%", "%%")  # argparse %-formats help strings: a literal "8%" would break --help
        if tp is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=what)
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp) or (str,)
            group.add_argument(flag, dest=f.name, nargs="*", type=item, default=default, help=what)
        else:
            group.add_argument(flag, dest=f.name, type=tp, default=default, help=what)


def from_flags(cls, args: argparse.Namespace, **values):
    """``cls`` built from the parsed flags of its fields (those :func:`add_dataclass_flags` added), plus ``values``."""
    names = {f.name for f in dataclasses.fields(cls) if f.init} - set(values)
    return cls(**{n: getattr(args, n) for n in names if hasattr(args, n)}, **values)
