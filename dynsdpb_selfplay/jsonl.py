"""JSON Lines and JSON files: one reader (strict, errors name the file and line) and one writer (atomic).

A write goes to a temporary sibling, is fsynced and renamed over the target, so a reader sees the old file or the
whole new one, never a part; the crash tests' ``write=<file name>`` fault point (:mod:`.faults`) sits between the
write and the rename.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UserInputError
from .faults import fault_point

__all__ = ["atomic_write_text", "read_jsonl", "read_jsonl_lines", "stale_temporaries", "write_json", "write_jsonl"]


_TMP_INFIX = ".tmp-"


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary sibling, fsync, rename over ``path``. On failure (a full disk) the temporary
    file is removed, ``path`` is untouched, and the ``OSError`` propagates. The current phase's ``write=<file name>``
    fault point (see :mod:`.faults`) fires between the write and the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TMP_INFIX}{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        fault_point(write=path.name)
        os.replace(tmp, path)
    except OSError as e:  # a write error carries no file name: add it, so the message says where
        tmp.unlink(missing_ok=True)
        if e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return atomic_write_text(path, text)


def stale_temporaries(folder: Path) -> list[Path]:
    """Temporary files an atomic write left behind when its process died (``.NAME.tmp-PID``)."""
    return sorted(p for p in Path(folder).rglob(f".*{_TMP_INFIX}*") if p.is_file())


def read_jsonl(path: str | os.PathLike, required: tuple[str, ...] = (), hint: str = "") -> list[dict]:
    """Rows of a JSONL file; a missing file, bytes that are not UTF-8, a malformed or truncated line, or a row whose
    ``required`` fields are missing or not strings raises :class:`UserInputError` naming the file and line (and the
    field), followed by ``hint`` (what to do about it). Blank lines are skipped; an empty file gives ``[]`` (the
    caller says whether that is an error)."""
    return [row for _, row in read_jsonl_lines(path, required, hint)]


def read_jsonl_lines(path: str | os.PathLike, required: tuple[str, ...] = (), hint: str = "") -> list[tuple[int, dict]]:
    """:func:`read_jsonl` with each row's line number in the file (1-based), for callers whose own checks must name
    the line: with blank lines the row's index is not its line."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"data file not found: {path}")
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserInputError(f"{path}:{lineno}: not UTF-8 text (byte {e.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                cut = "; the file ends in the middle of this record (truncated?)" if not line.endswith("\n") else ""
                why = f"malformed JSON ({e.msg} at column {e.colno}){cut}"
                raise UserInputError(f"{path}:{lineno}: {why}" + (f"; {hint}" if hint else "")) from None
            if not isinstance(row, dict):
                raise UserInputError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for key in required:
                if key not in row:
                    raise UserInputError(f"{path}:{lineno}: missing field {key!r}")
                if not isinstance(row[key], str):
                    got = type(row[key]).__name__
                    raise UserInputError(f"{path}:{lineno}: field {key!r} must be a string, got {got}")
            rows.append((lineno, row))
    return rows
