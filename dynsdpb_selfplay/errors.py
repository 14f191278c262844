"""Errors caused by the user's input (a path, a file, a flag), as opposed to bugs.

The commands print these as one line (``dynsdpb eval: error: ...``) instead of a traceback; library callers catch
them like any ``ValueError``.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad or missing input that the user can fix; the message says what and where."""


class EngineUnavailableError(ImportError):
    """A generation backend whose package is not installed; the message says how to install it."""


class NonFiniteLossError(RuntimeError):
    """A training loss was NaN or inf and the run is configured to stop (the state before the step is saved)."""
