"""Stopping cleanly: SIGTERM (``kill``) unwinds like Ctrl-C, for the ``dynsdpb`` commands and the benchmarks alike.

SIGKILL (the OOM killer) cannot be caught; :mod:`.engines.lifetime` covers it from outside the process.
"""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["Terminated", "sigterm_unwinds"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as a KeyboardInterrupt (see :func:`sigterm_unwinds`); its own class so that a parent can tell
    a ``kill`` aimed at it alone (to pass on to its children) from Ctrl-C, which the whole process group gets."""


def _interrupt(signum, frame):
    raise Terminated(f"terminated by signal {signum}")


@contextlib.contextmanager
def sigterm_unwinds():
    """Within the block SIGTERM (``kill``) unwinds like Ctrl-C: every ``finally`` runs, so an engine's vLLM
    processes exit with the command instead of outliving it (they held GBs of memory otherwise). A no-op off the
    main thread, where Python cannot install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
