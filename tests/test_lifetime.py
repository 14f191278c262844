"""Children end with the process that started them, however it dies (dynsdpb_selfplay/engines/lifetime.py); the
records in a folder let a later process stop what is left, and never a process that merely reuses a pid.

No engine here: a parent script starts sleeping children; vLLM's engine is covered in test_rounds.py and test_cli.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynsdpb_selfplay.engines.lifetime import identity, stop_recorded

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")

REPO = Path(__file__).resolve().parent.parent

# The guarded child ignores SIGTERM (so the watchdog must escalate to SIGKILL) and starts a grandchild.
# The module is loaded by its path: importing the package costs ~10 s of torch imports that it does not need.
PARENT = f"""
import importlib.util, subprocess, sys, time
spec = importlib.util.spec_from_file_location("lifetime", {str(REPO / "dynsdpb_selfplay/engines/lifetime.py")!r})
lifetime = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lifetime)
child_code = "import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
child_code += "subprocess.Popen(['sleep', '300']); time.sleep(300)"
with lifetime.guarded_children():
    child = subprocess.Popen([sys.executable, "-c", child_code])
outside = subprocess.Popen(["sleep", "300"])  # started outside the block: not guarded
if len(sys.argv) > 1:  # told to a running watchdog (a path with a space in it)
    lifetime.record_to(sys.argv[1])
print(child.pid, outside.pid, flush=True)
time.sleep(300)
"""


def children(pid: int) -> set[int]:
    kids = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        kids.update(int(k) for k in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
    return kids


def wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not (value := predicate()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return value


def alive(proc: dict) -> bool:
    return identity(proc["pid"]) == proc


@pytest.fixture
def parent(tmp_path):
    """Start PARENT (with a record file when asked); yields (process, child, grandchild, outside) as identities and
    kills whatever of theirs is left afterwards."""
    started = []

    def start(record: Path | None = None):
        args = [sys.executable, "-c", PARENT] + ([str(record)] if record else [])
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        child, outside = map(int, proc.stdout.readline().split())
        grandchild = wait_for(lambda: children(child), 20, "the guarded child started no grandchild").pop()
        ids = [identity(pid) for pid in (child, grandchild, outside)]
        started.append((proc, ids))
        return proc, *ids

    yield start
    for proc, ids in started:
        proc.kill()
        proc.wait()
        for p in ids:
            if alive(p):
                os.kill(p["pid"], signal.SIGKILL)


def test_sigkill_of_the_parent_stops_the_children_it_started_in_the_block(parent):
    proc, child, grandchild, outside = parent()
    proc.kill()
    proc.wait()
    # SIGTERM is ignored by the child: it ends by the SIGKILL that follows after GRACE_S (3 s).
    wait_for(lambda: not alive(child) and not alive(grandchild), 15, "the guarded processes outlived their parent")
    assert alive(outside), "a process started outside guarded_children() was stopped"


def test_the_record_lists_the_guarded_processes_and_a_later_process_stops_them(parent, tmp_path):
    """The watchdog killed along with its parent (as a process-group SIGKILL would): the record is the backstop."""
    record = tmp_path / "run folder" / ".engines" / "owner.json"
    proc, child, grandchild, outside = parent(record)
    wait_for(lambda: record.is_file() and json.loads(record.read_text())["processes"], 10, "no record")
    wait_for(lambda: len(json.loads(record.read_text())["processes"]) == 2, 10, "the grandchild is not recorded")
    listed = {p["pid"]: p for p in json.loads(record.read_text())["processes"]}
    assert set(listed) == {child["pid"], grandchild["pid"]}
    assert all(identity(pid) == {k: listed[pid][k] for k in ("pid", "start", "boot")} for pid in listed)
    watchdog = children(proc.pid) - {child["pid"], outside["pid"]}
    assert len(watchdog) == 1
    os.kill(watchdog.pop(), signal.SIGKILL)
    proc.kill()
    proc.wait()
    time.sleep(1)
    assert alive(child) and alive(grandchild)  # nobody left to stop them...
    stopped = stop_recorded(record.parent)  # ...but the record names them
    assert {p["pid"] for p in stopped} == {child["pid"], grandchild["pid"]}
    assert not alive(child) and not alive(grandchild) and alive(outside)
    assert list(record.parent.iterdir()) == []


def test_stop_recorded_spares_a_process_that_reuses_a_recorded_pid(tmp_path):
    """Only a process whose pid *and* start time match is stopped; a stale record's pid may belong to anyone now."""
    stale, reused = (subprocess.Popen(["sleep", "300"]) for _ in range(2))
    try:
        same, other = identity(stale.pid), identity(reused.pid)
        other = {**other, "start": other["start"] + 1}  # the recorded process started at another time: not this one
        gone = {"pid": 2**22 + 1, "start": 1, "boot": same["boot"]}  # above pid_max: no such process
        (tmp_path / "1.json").write_text(json.dumps({"owner": 1, "processes": [same, other, gone]}))
        (tmp_path / "2.json").write_text("{torn")
        assert [p["pid"] for p in stop_recorded(tmp_path)] == [stale.pid]
        assert stale.wait(timeout=10) == -signal.SIGTERM
        assert reused.poll() is None
        assert list(tmp_path.iterdir()) == []
    finally:
        for p in (stale, reused):
            p.kill()
            p.wait()
