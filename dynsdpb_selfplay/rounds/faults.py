"""Fault injection for crash tests: ``DYNSDPB_FAULT="round_1/generate:chunk=1"`` kills the process with SIGKILL
right after that point (here: after chunk 1 of round 1's generation is saved). Inert unless the variable is set.

``DYNSDPB_FAULT_SIGNAL=INT`` sends SIGINT instead (a Ctrl-C)."""

from __future__ import annotations

import os
import signal


def maybe_fault(phase: str, **point) -> None:
    spec = os.environ.get("DYNSDPB_FAULT")
    if not spec or not phase:
        return
    want_phase, _, want_point = spec.partition(":")
    if want_phase != phase:
        return
    if want_point:
        key, _, value = want_point.partition("=")
        if str(point.get(key)) != value:
            return
    sig = getattr(signal, "SIG" + os.environ.get("DYNSDPB_FAULT_SIGNAL", "KILL"))
    os.kill(os.getpid(), sig)
