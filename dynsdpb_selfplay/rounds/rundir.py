"""The run folder: atomic files, a lock, and the state file that says which phases are finished.

Layout::

    RUN_DIR/
      config.yaml            the resolved config (written once, at creation)
      state.json             {"done": ["round_0/eval", "round_1/generate", ...], ...}
      .lock                  held by the process running the job
      .engines/PID.json      the processes (engine, shards) process PID started, by pid and start time, while they
                             run: a resume stops those a killed attempt left (engines/lifetime.py)
      round_0/eval.jsonl, eval_summary.json
      round_1/generations/chunk-00000.jsonl ...   one file per finished chunk of questions
      round_1/generations.jsonl, train.jsonl, filter_summary.json
      round_1/pass_rates.jsonl, examples.json, pass_rates.png   per-question pass rates; what the report shows
      round_1/trainer/checkpoint-N/               the trainer's own checkpoints (resumption; deleted when the
                                                  phase is done unless training.keep_checkpoints)
      round_1/trainer/log_history.jsonl           the trainer's per-step log (loss, dynsdpb/* metrics)
      round_1/model/                              the round's final weights (safetensors), or its LoRA adapter
                                                  (training.lora_handoff: adapter)
      tensorboard/round_1/                        TensorBoard events (training.report_to: tensorboard)
      round_1/eval.jsonl, eval_summary.json
      report.md, accuracy.png

Every file is written to a temporary name and renamed into place, so a file that exists is complete; a phase is
marked done in ``state.json`` only after all its files exist. Resuming skips done phases and redoes the others from
their own saved pieces (generation chunks, trainer checkpoints).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import yaml

from ..engines.lifetime import stop_recorded
from ..errors import UserInputError
from ..jsonl import atomic_write_text, stale_temporaries, write_json

__all__ = ["REDO_HINT", "RunDir"]

# What to do about a run folder file that does not read: a phase whose file is gone is redone on --resume.
REDO_HINT = "delete the file to redo it"


class RunDir:
    """A run folder, locked by this process while open. Taking the lock stops the processes that an earlier holder,
    now dead, recorded in ``.engines/`` and left running (:attr:`stopped` lists them)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = None
        self.stopped: list[dict] = []

    # ------------------------------------------------------------------------------------- life cycle
    @classmethod
    def create(cls, path: str | Path, config: dict, overwrite: bool = False) -> RunDir:
        """A new run in ``path``. An existing run there is replaced only with ``overwrite``; a folder holding
        anything else is never written into; a folder that cannot be created or written is a clear error."""
        path = Path(path)
        holds_run = (path / "state.json").exists() or (path / "config.yaml").exists()
        if holds_run and not overwrite:
            raise UserInputError(
                f"run folder {path} already holds a run; continue it with `dynsdpb run --resume {path}`, "
                f"or pass --overwrite to start over"
            )
        try:
            if not holds_run and path.is_dir() and any(c.name != ".lock" for c in path.iterdir()):
                raise UserInputError(f"run folder {path} is not empty and holds no run; choose an empty or new folder")
            run = cls(path).lock()
            if holds_run:
                for child in path.iterdir():
                    if child.name == ".lock":
                        continue
                    # A link is removed, never followed: --overwrite deletes nothing outside the run folder.
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            atomic_write_text(path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
            write_json(path / "state.json", {"done": []})
        except OSError as e:
            raise UserInputError(f"cannot create run folder {path}: {e.strerror or e} ({e.filename or path})") from None
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run, locked; a missing or unreadable ``config.yaml`` / ``state.json`` names the file."""
        path = Path(path)
        if not (path / "config.yaml").is_file() or not (path / "state.json").is_file():
            raise UserInputError(f"{path} is not a run folder (no config.yaml or state.json); see `dynsdpb run -h`")
        run = cls(path)

        def corrupt(name: str, why) -> UserInputError:
            return UserInputError(f"{path / name}: corrupt ({why}); restore it or start a new run")

        try:
            config = run.config()
        except (yaml.YAMLError, ValueError) as e:
            raise corrupt("config.yaml", e) from None
        try:
            state = run.state()
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise corrupt("state.json", e) from None
        if not isinstance(config, dict):
            raise corrupt("config.yaml", "not a mapping")
        if not isinstance(state, dict) or not isinstance(state.get("done"), list):
            raise corrupt("state.json", "no 'done' list")
        run.lock()
        # Holding the lock, no other process writes here: a temporary file is left over from a killed one.
        for tmp in stale_temporaries(path):
            tmp.unlink()
        return run

    def lock(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "another process"
            f.close()
            raise UserInputError(f"run folder {self.path} is in use by {owner}; wait for it or stop it") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        self._lock = f
        # Whoever held the lock is dead: what it recorded and is still running is left over (an engine of GBs).
        self.stopped = stop_recorded(self.engine_records)
        return self

    def close(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------------------------------ state
    def config(self) -> dict:
        return yaml.safe_load((self.path / "config.yaml").read_text())

    def state(self) -> dict:
        return json.loads((self.path / "state.json").read_text())

    def is_done(self, phase: str) -> bool:
        return phase in self.state()["done"]

    def mark_done(self, phase: str, **info) -> None:
        state = self.state()
        if phase not in state["done"]:
            state["done"].append(phase)
        state.setdefault("info", {})[phase] = info
        write_json(self.path / "state.json", state)

    def phase_info(self, phase: str) -> dict:
        return self.state().get("info", {}).get(phase, {})

    def round(self, r: int) -> Path:
        return self.path / f"round_{r}"

    @property
    def engine_records(self) -> Path:
        """Folder of the records of the processes this run's processes started (``lifetime.record_to``)."""
        return self.path / ".engines"
