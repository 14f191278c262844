"""Fault injection for crash tests: ``DYNSDPB_FAULT="round_1/generate:chunk=1"`` kills the process with SIGKILL
right after that point (here: after chunk 1 of round 1's generation is saved). Inert unless the variable is set.

``DYNSDPB_FAULT_SIGNAL=INT`` sends SIGINT instead (a Ctrl-C), ``TERM`` SIGTERM (``kill``).

The points, per phase (``round_r/<phase>`` or ``report``):

- every phase: ``point=done`` right after it is marked done in ``state.json``; ``write=<file name>`` after the
  temporary file of an atomic write is complete, before it is renamed into place (``write=state.json`` is the state
  write that marks the phase done; ``write=chunk-00001.jsonl``, ``write=generations.jsonl``, ``write=train.jsonl``,
  ``write=filter_summary.json``, ``write=eval.jsonl``, ``write=eval_summary.json``, ``write=report.md``);
- generate: ``chunk=i`` after chunk ``i`` is saved;
- filter: ``point=read`` after the generations are read, before anything is written;
- train: ``step=n`` at the end of optimizer step ``n`` (before its checkpoint, if any); ``torn=n`` inside the save
  of ``checkpoint-n``: weights and DynSDPB targets written, optimizer and trainer state not; ``saved=n`` after
  ``checkpoint-n`` is complete; ``point=trained`` after the last step; ``point=model_tmp`` after the round's model
  is written to its temporary folder, before it replaces ``model/``;
- eval: ``point=generated`` after the generations are scored, before anything is written;
- report: ``point=plot`` after ``accuracy.png`` and the rounds' ``pass_rates.png``, before ``report.md``.

``dynsdpb eval`` has one: ``eval:point=loaded`` once its engine is up, before it generates.

The code under test names a phase once (``with in_phase("round_1/train"):``); the points inside it
(:func:`fault_point`, every atomic write, the trainer hooks of :func:`instrument_trainer`) fire for that phase.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["armed", "fault_point", "in_phase", "instrument_trainer", "maybe_fault"]

_phase = ""


@contextmanager
def in_phase(name: str) -> Iterator[None]:
    """Fault points reached inside this block belong to phase ``name``."""
    global _phase
    outer, _phase = _phase, name
    try:
        yield
    finally:
        _phase = outer


def fault_point(**point) -> None:
    """A fault point of the current phase (:func:`in_phase`); nothing outside one."""
    maybe_fault(_phase, **point)


def armed(phase: str) -> bool:
    """Whether a fault is set for ``phase`` (for instrumentation that costs something to install)."""
    spec = os.environ.get("DYNSDPB_FAULT")
    return bool(spec and phase and spec.partition(":")[0] == phase)


def maybe_fault(phase: str, **point) -> None:
    spec = os.environ.get("DYNSDPB_FAULT")
    if not spec or not phase:
        return
    want_phase, _, want_point = spec.partition(":")
    if want_phase != phase:
        return
    if want_point:
        key, _, value = want_point.partition("=")
        if key not in point or str(point[key]) != value:
            return
    sig = getattr(signal, "SIG" + os.environ.get("DYNSDPB_FAULT_SIGNAL", "KILL"))
    os.kill(os.getpid(), sig)


def instrument_trainer(trainer) -> None:
    """The training phase's points on a ``transformers.Trainer``: ``step=n`` and ``saved=n`` (a callback), and when
    this phase is the one armed, ``torn=n`` inside the save of ``checkpoint-n`` (weights and DynSDPB targets written,
    optimizer and trainer state not)."""
    from transformers import TrainerCallback

    phase = _phase

    class Faults(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            maybe_fault(phase, step=state.global_step)

        def on_save(self, args, state, control, **kw):
            maybe_fault(phase, saved=state.global_step)

    trainer.add_callback(Faults())
    if armed(phase):
        save_model = trainer.save_model

        def save_model_then_fault(output_dir=None, _internal_call=False):
            save_model(output_dir, _internal_call=_internal_call)
            if _internal_call:
                maybe_fault(phase, torn=trainer.state.global_step)

        trainer.save_model = save_model_then_fault
