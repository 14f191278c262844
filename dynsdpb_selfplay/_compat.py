"""Supported versions of the training stack, checked once on import with a message that says what to install."""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

# (minimum supported, first version not yet tested). Below the minimum the APIs DynSDPB relies on differ.
SUPPORTED = {"trl": ("1.16.0", "1.17.0"), "transformers": ("5.19.0", "5.25.0"), "torch": ("2.6.0", "2.15.0")}


def check_versions() -> None:
    for name, (low, high) in SUPPORTED.items():
        try:
            found = Version(version(name))
        except PackageNotFoundError as e:
            raise ImportError(f"dynsdpb-selfplay needs {name} >= {low}; install it (see README: Setup)") from e
        if found < Version(low):
            raise ImportError(
                f"dynsdpb-selfplay supports {name} >= {low} (found {found}); upgrade with "
                f"pip install '{name}>={low},<{high}'"
            )
        if found.release >= Version(high).release:
            warnings.warn(
                f"dynsdpb-selfplay was tested with {name} < {high}, found {found}; if training fails, install "
                f"'{name}>={low},<{high}'",
                stacklevel=3,
            )
