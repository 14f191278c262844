"""Task registry: built-in tasks by name, user tasks by registration or by import path.

    from dynsdpb_selfplay.tasks import Task, register_task

    @register_task("mytask")
    class MyTask(Task): ...          # load(), build_prompt(), optionally score()

    get_task("mytask", option=1)     # or, without registering: get_task("mypkg.tasks:MyTask")

Options (``--task-arg key=value`` on the command line) go to the task's constructor.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..errors import UserInputError
from .base import Task

__all__ = ["get_task", "list_tasks", "register_task"]

_REGISTRY: dict[str, Callable[..., Task]] = {}


def register_task(name: str, factory: Callable[..., Task] | None = None):
    """Register ``factory`` (a Task subclass or any callable returning a Task) as ``name``; usable as decorator."""

    def add(f: Callable[..., Task]):
        if name in _REGISTRY and _REGISTRY[name] is not f:
            raise ValueError(f"task {name!r} is already registered")
        _REGISTRY[name] = f
        return f

    return add if factory is None else add(factory)


def list_tasks() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str, **options) -> Task:
    """A task instance by registered name or ``module:attribute`` import path."""
    if name in _REGISTRY:
        factory = _REGISTRY[name]
    elif ":" in name:
        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UserInputError(f"cannot import task {name!r}: {e}") from e
    else:
        raise UserInputError(f"unknown task {name!r}; registered: {', '.join(list_tasks())} (or use module:Class)")
    try:
        task = factory(**options)
    except TypeError as e:
        raise UserInputError(f"task {name!r} rejects options {options}: {e}") from e
    if not isinstance(task, Task):
        raise UserInputError(f"{name!r} did not produce a Task (got {type(task).__name__})")
    return task
