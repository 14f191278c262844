"""What every benchmark records beside its numbers (the machine with its CPU capability and whether it computes bf16
natively, the versions, where the JSON goes), the studies' run logs, how their tables print a t-summary, and how it
runs a child process without orphaning the child's vLLM engine."""

from __future__ import annotations

import json
import os
import platform
import subprocess


def environment() -> dict:
    import torch

    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "vllm"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    from dynsdpb_selfplay.precision import cpu_features

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "gpu": gpu,
        "cpu": cpu_features(),
    }
    return {"machine": machine, "versions": versions}


def pct(s: dict | None) -> str:
    """A t-summary ``{"mean", "ci95"}`` of fractions in points: ``35.0 ± 12.7``; ``-`` for none, no interval where it
    is NaN (one seed), and ``0.0`` for a mean that rounds to zero (no ``-0.0``)."""
    if not s:
        return "-"
    m, h = 100 * s["mean"], 100 * s["ci95"]
    m = 0.0 if round(m, 1) == 0 else m
    return f"{m:.1f}" if h != h else f"{m:.1f} ± {h:.1f}"


def read_runs(path) -> list[dict]:
    """The records of a study's ``runs.jsonl`` (none where it does not exist yet)."""
    from pathlib import Path

    path = Path(path)
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def gold_rows(task, fmt, examples) -> list[dict]:
    """Prompt/completion rows from the reference solutions, calculator notes (``<<48/2=24>>``) removed."""
    import re

    rows = []
    for ex in examples:
        prompt = task.build_prompt(ex, fmt)
        text = re.sub(r"<<[^>]*>>", "", ex.solution).strip()
        completion = [{"role": "assistant", "content": text}] if isinstance(prompt, list) else " " + text
        rows.append({"id": ex.id, "prompt": prompt, "completion": completion})
    return rows


def save(result: dict, path: str | None) -> None:
    """Write ``result`` (with the environment added) as JSON to ``path``, if given."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({**result, **environment()}, f, indent=1)


def save_study(result: dict, out: str | None, table: str, draw) -> None:
    """Write a study's ``result`` JSON to ``out`` (with the environment added), its markdown ``table`` beside it as
    ``<stem>.md`` and its figure as ``<stem>.png`` through ``draw(path)``; nothing when ``out`` is not given."""
    if not out:
        return
    from pathlib import Path

    save(result, out)
    stem = os.path.splitext(out)[0]
    Path(stem + ".md").write_text(table)
    draw(stem + ".png")


def restore_runs(log_path, out: str | None, benchmark: str) -> int:
    """Seed a missing ``runs.jsonl`` with the runs of a result JSON at ``out`` written by the same ``benchmark``.

    Run folders are not versioned but results are: on a fresh clone a study's command then resumes from the committed
    runs (and ``--summarize-only`` rebuilds the same tables) instead of redoing hours of training. Returns how many
    runs were restored (0 when the log exists, or ``out`` is absent or from another benchmark)."""
    from pathlib import Path

    log_path = Path(log_path)
    if log_path.exists() or not out or not os.path.isfile(out):
        return 0
    with open(out) as f:
        result = json.load(f)
    if result.get("benchmark") != benchmark or not result.get("runs"):
        return 0
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("".join(json.dumps(r) + "\n" for r in result["runs"]))
    print(f"{benchmark}: {log_path} was missing; restored {len(result['runs'])} finished runs from {out}", flush=True)
    return len(result["runs"])


def module_command(module: str) -> list[str]:
    """``python -m module`` with this interpreter, as this process was started: ``-P`` (no current folder first on
    ``sys.path``, which ``scripts/gpu_check.sh`` uses to test the installed package) is kept."""
    import sys

    return [sys.executable, *(["-P"] if getattr(sys.flags, "safe_path", False) else []), "-m", module]


def run_child(cmd: list[str], capture: bool = False) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd)`` that lets the child clean up when this process is stopped. ``subprocess.run`` answers
    any interrupt by SIGKILLing the child, whose vLLM engine processes then outlive it. Here a ``kill`` of this process
    (:class:`~dynsdpb_selfplay.signals.Terminated`, under ``sigterm_unwinds``) is passed on as SIGTERM, on which
    ``dynsdpb`` commands and the benchmarks unwind; on Ctrl-C, which reached the child's process group too, the child
    is waited for; if this process is SIGKILLed, the child is stopped by the watchdog of
    :mod:`dynsdpb_selfplay.engines.lifetime`. ``capture``: return the child's stdout (text)."""
    from dynsdpb_selfplay.engines.lifetime import guarded_children
    from dynsdpb_selfplay.signals import Terminated

    with guarded_children():  # a SIGKILL of this process cannot be passed on: the child is stopped from outside
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if capture else None, text=True)
    try:
        out, _ = proc.communicate()
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated):
            proc.terminate()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


def run_or_raise(cmd: list[str], what: str) -> None:
    """:func:`run_child`, and a :class:`UserInputError` saying how ``what`` (a resumable run) ended if it failed."""
    import signal

    from dynsdpb_selfplay.errors import UserInputError

    code = run_child(cmd).returncode
    if code != 0:
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        raise UserInputError(f"{what} {how} (output above; the same command resumes it)")


def run_pipeline(run_dir, config, what: str, tag: str) -> dict:
    """``dynsdpb run`` of one pipeline in ``run_dir`` as a child process: started from ``config()`` (a dict, written
    as ``<run_dir>.yaml`` beside the folder), resumed where ``state.json`` exists, or only read back where its report
    phase is done. Returns the run's ``state.json``; a failed child raises :class:`UserInputError` naming ``what``."""
    import sys
    from pathlib import Path

    import yaml

    run_dir = Path(run_dir)
    state_path = run_dir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"done": []}
    if "report" in state["done"]:
        return state
    cli = [sys.executable, "-m", "dynsdpb_selfplay.cli", "run"]
    if state_path.exists():
        cli += ["--resume", str(run_dir)]
    else:
        path = run_dir.parent / f"{run_dir.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config(), sort_keys=False))
        cli += [str(path), "--run-dir", str(run_dir)]
    print(f"[{tag}] {what}: {' '.join(cli)}", flush=True)
    run_or_raise(cli, f"{what}: pipeline run {run_dir}")
    return json.loads(state_path.read_text())
