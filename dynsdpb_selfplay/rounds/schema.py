"""Typed YAML mappings into dataclasses: every value is checked against the field's annotation, and an unknown key
or a wrong type is a :class:`~dynsdpb_selfplay.errors.UserInputError` naming the key (``training.lora.r``).

A dataclass with a ``from_mapping(data, key)`` classmethod builds itself (``training:``, whose keys are split between
the round and the trainer's config class); any other dataclass takes exactly its own fields.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

from ..errors import UserInputError

__all__ = ["build", "coerce", "describe", "key_line", "set_dotted"]

# PyYAML reads YAML 1.1, where ``1e-5`` (no dot) is a string; YAML 1.2, JSON and TRL's recipes read it as a number.
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(value, tp, key: str):
    """``value`` checked against the annotation ``tp`` (recursing into dataclasses, lists, dicts, optionals);
    ints and numeric strings (YAML 1.1's ``1e-5``) are accepted where a float is expected, bools never where an int
    is."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return coerce(value, option, key)
            except UserInputError as e:
                errors.append(str(e))
        raise UserInputError(errors[0] if len(errors) == 1 else f"{key}: expected {tp}, got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise UserInputError(f"{key}: expected one of {typing.get_args(tp)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserInputError(f"{key}: expected a mapping, got {type(value).__name__}")
        own = getattr(tp, "from_mapping", None)
        return own(value, key) if own is not None else build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise UserInputError(f"{key}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp) or (Any,)
        return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserInputError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise UserInputError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return value


def build(cls, data: dict, prefix: str = ""):
    """``cls(**data)`` with every key known (an old spelling named in the class's ``RENAMED_KEYS`` says the new one)
    and every value coerced; the class's own ``__post_init__`` errors
    (ValueError) come back naming ``prefix``, and the field when the message starts with ``"field: "``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    # A class's RENAMED_KEYS = (old -> new, "where the new name comes from") turns an old spelling into a pointer.
    renamed, origin = getattr(cls, "RENAMED_KEYS", ({}, ""))
    for old in renamed.keys() & data.keys():
        where = f"{prefix}." if prefix else ""
        raise UserInputError(f"{where}{old}: renamed to {where}{renamed[old]}, {origin}'s name for it")
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise UserInputError(f"{where}: unknown key; known: {', '.join(sorted(names))}")
    kwargs = {k: coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:  # "field: why" from a __post_init__ names the key in full
        name, sep, why = str(e).partition(": ")
        if sep and name in names:
            raise UserInputError(f"{prefix}.{name}: {why}" if prefix else f"{name}: {why}") from None
        raise UserInputError(f"{prefix or 'config'}: {e}") from None


def set_dotted(data: dict, assignment: str, where: str = "--set") -> None:
    """Apply ``section.key=value`` to the mapping ``data`` (``value`` read as YAML: ``8``, ``1e-5``, ``[a, b]``,
    ``null``); the result is checked like the rest of the file."""
    import yaml

    key, eq, text = assignment.partition("=")
    if not eq or not key.strip():
        raise UserInputError(f"{where} {assignment!r}: expected KEY=VALUE, e.g. generation.n=8")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserInputError(f"{where} {assignment!r}: the value is not valid YAML ({e})") from None
    set_dotted_value(data, key.strip(), value, f"{where} {assignment!r}")


def set_dotted_value(data: dict, key: str, value, where: str) -> None:
    """Set ``data[section][...][last] = value`` for the dotted ``key``, creating missing sections."""
    *parents, last = key.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserInputError(f"{where}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    node[last] = value


def describe(cls, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(key, default, help)`` for every field of dataclass ``cls``, sections expanded (``generation.n``)."""
    hints, rows = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("hidden"):
            continue
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and f.default_factory is not dataclasses.MISSING:
            rows += describe(tp, key + ".")
            rows += [(f"{key}.{k}", d, h) for k, d, h in getattr(tp, "extra_keys", lambda: [])()]
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        rows.append((key, repr(default), f.metadata.get("help", "")))
    return rows


_KEY = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\])*): ")


def key_line(text: str, message: str) -> int | None:
    """The 1-based line of the YAML ``text`` that holds the key an error ``message`` starts with (``training.lora.r:
    ...``, ``task.options[0]: ...``), or None when the message names no key or the key is not in the text."""
    import yaml

    match = _KEY.match(message)
    if not match:
        return None
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in re.findall(r"[A-Za-z_]\w*|\[\d+\]", match.group(1)):
        if part.startswith("[") and isinstance(node, yaml.SequenceNode):
            index = int(part[1:-1])
            if index >= len(node.value):
                return line
            node = node.value[index]
            line = node.start_mark.line + 1
        elif isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if getattr(k, "value", None) == part]
            if not found:
                return line
            key, node = found[0]
            line = key.start_mark.line + 1
        else:
            return line
    return line
