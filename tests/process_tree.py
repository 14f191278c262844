"""A process's descendants, followed by pid and start time while it runs, for tests that kill it and then check that
nothing of it is left (by process id: other jobs on the machine may run their own vLLM engines)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from dynsdpb_selfplay.engines.lifetime import identity


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                kids = {int(k) for k in Path(f"/proc/{p}/task/{tid}/children").read_text().split()}
            except OSError:
                continue
            todo += kids - found
            found |= kids
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def follow(proc: subprocess.Popen, timeout: float = 600) -> dict[int, tuple[dict, str]]:
    """Every process descending from ``proc`` while it runs, as pid -> (identity, command line); returns when
    ``proc`` has ended."""
    seen: dict[int, tuple[dict, str]] = {}
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, f"{proc.args} still running after {timeout} s"
        for pid in descendants(proc.pid):
            ident = identity(pid)
            if ident is not None and seen.get(pid, (ident,))[0] == ident:
                seen[pid] = (ident, cmdline(pid))  # read again: vLLM renames its processes after they start
        time.sleep(0.2)
    return seen


def wait_gone(seen: dict[int, tuple[dict, str]], seconds: float) -> dict[int, str]:
    """Wait up to ``seconds`` for every process in ``seen`` to end; returns those still running (pid -> command)."""
    deadline = time.monotonic() + seconds
    while True:
        left = {pid: cmd for pid, (ident, cmd) in seen.items() if identity(pid) == ident}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def kill_left(seen: dict[int, tuple[dict, str]]) -> None:
    """Clean up after a failed check: SIGKILL those of ``seen`` that are still the same processes."""
    for pid, (ident, _) in seen.items():
        if identity(pid) == ident:
            os.kill(pid, signal.SIGKILL)
