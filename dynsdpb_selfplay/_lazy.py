"""PEP 562 lazy exports: a package's public names imported from their submodules on first access, so importing the
package (and the ``dynsdpb`` command) loads no torch, transformers or TRL until a name that needs them is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, table: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: ``table`` maps each public name to the (relative) submodule that
    defines it; a name, once imported, is stored in ``namespace`` (the package's globals) so later lookups skip
    ``__getattr__``."""

    def __getattr__(name: str):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return __getattr__, __dir__
