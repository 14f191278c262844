"""SIGKILL, the way the kernel's OOM killer ends a process: ``dynsdpb run`` and ``dynsdpb eval`` leave no process of
theirs behind (vLLM's engine core outlived them, 4.5 GB, until they were stopped from outside; engines/lifetime.py),
and a resume stops what an earlier attempt recorded and left running before it starts an engine.

Each process is checked by pid and start time, never by name: other jobs on the machine may run vLLM engines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import round_config as config
from helpers import save_tiny_model
from helpers import write_config as write
from process_tree import follow, kill_left, wait_gone

from dynsdpb_selfplay.engines.lifetime import identity

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")

TESTS = Path(__file__).parent
VLLM = {"backend": "vllm", "dtype": "float32", "max_model_len": 256, "multiprocessing": True}  # the processes to guard


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("kill-model") / "m"))


def start(args: list[str], tmp_path: Path, fault: str | None = None) -> subprocess.Popen:
    """``dynsdpb ARGS`` in a subprocess, output to files in ``tmp_path`` (no pipe for a leftover to hold open)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]), "HF_HUB_OFFLINE": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")  # the tiny model gains nothing from more threads on a busy machine
    if fault:
        env.update(DYNSDPB_FAULT=fault, DYNSDPB_FAULT_SIGNAL="KILL")
    cmd = [sys.executable, "-m", "dynsdpb_selfplay.cli", *args]
    with open(tmp_path / "stdout.txt", "w") as out, open(tmp_path / "stderr.txt", "w") as err:
        return subprocess.Popen(cmd, env=env, cwd=TESTS, stdout=out, stderr=err)


def assert_nothing_left(proc: subprocess.Popen, tmp_path: Path) -> None:
    """Follow ``proc`` until the fault point SIGKILLs it with the vLLM engine up; then every process it had started
    must end within a few seconds."""
    seen = follow(proc)
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    assert sum(cmd.startswith("VLLM::") for _, cmd in seen.values()) >= 2, seen  # engine core and worker were up
    left = wait_gone(seen, 30)  # the watchdog needs ~0.3 s + 3 s (SIGTERM, then SIGKILL)
    kill_left(seen)
    assert not left, f"processes outlived the SIGKILLed command: {left}"
    assert "ended; stopped the" in (tmp_path / "stderr.txt").read_text()


@pytest.mark.vllm
def test_sigkill_of_a_run_leaves_no_process_of_it(tmp_path, tiny):
    run_dir = tmp_path / "run"
    args = ["run", str(write(tmp_path, config(tiny, rounds=1, engine=VLLM))), "--run-dir", str(run_dir)]
    assert_nothing_left(start(args, tmp_path, fault="round_0/eval:point=generated"), tmp_path)
    assert list((run_dir / ".engines").iterdir()) == []  # the watchdog stopped what it recorded: nothing to resume


@pytest.mark.vllm
def test_sigkill_of_an_eval_leaves_no_process_of_it(tmp_path, tiny):
    args = [
        "eval",
        "--model",
        tiny,
        "--task",
        "arith",
        "--limit",
        "4",
        "--max-new-tokens",
        "8",
        "--backend",
        "vllm",
        "--dtype",
        "float32",
        "--max-model-len",
        "256",
        "--multiprocessing",  # the processes to guard
        "--output",
        str(tmp_path / "eval.jsonl"),
    ]
    assert_nothing_left(start(args, tmp_path, fault="eval:point=loaded"), tmp_path)


def test_resume_after_sigkill_first_stops_the_engine_the_killed_attempt_left(tmp_path, tiny):
    """As if the watchdog had died with the run (a process-group SIGKILL): the record in ``.engines/`` is left, and
    ``--resume`` stops the recorded process that is still running, but not one that merely has a recorded pid."""
    run_dir = tmp_path / "run"
    args = ["run", str(write(tmp_path, config(tiny, rounds=1))), "--run-dir", str(run_dir)]
    crashed = start(args, tmp_path, fault="round_1/generate:chunk=0")
    assert crashed.wait(timeout=600) == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()[-3000:]
    stale, reused = (subprocess.Popen(["sleep", "600"]) for _ in range(2))
    try:
        other = {**identity(reused.pid), "start": identity(reused.pid)["start"] + 1}  # the pid, not the process
        (run_dir / ".engines").mkdir(exist_ok=True)
        record = {"owner": crashed.pid, "processes": [identity(stale.pid), other]}
        (run_dir / ".engines" / f"{crashed.pid}.json").write_text(json.dumps(record))
        resumed = start(["run", "--resume", str(run_dir)], tmp_path)
        assert resumed.wait(timeout=600) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
        lines = (tmp_path / "stdout.txt").read_text().splitlines()
        said = [i for i, line in enumerate(lines) if line.startswith("stopped 1 process(es) an earlier attempt")]
        assert len(said) == 1 and f"pids {stale.pid})" in lines[said[0]], lines
        assert said[0] < min(i for i, line in enumerate(lines) if line.startswith("round ")), lines
        assert stale.wait(timeout=10) == -signal.SIGTERM
        assert reused.poll() is None
    finally:
        for p in (stale, reused):
            p.kill()
            p.wait()
