"""The ``dynsdpb`` command starts without torch, transformers or TRL (seconds to import): ``--help``, ``run
--options`` and config errors answer at once. Checked as what a fresh interpreter has imported (``sys.modules``),
not as a time. The package's public names stay importable, now imported on first use (PEP 562)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

HEAVY = ("torch", "transformers", "trl", "vllm", "datasets", "peft")

# Runs the command in a fresh interpreter, then prints which heavy modules it imported.
_COMMAND = f"""
import json, sys
from dynsdpb_selfplay.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:  # argparse's --help
    rc = e.code or 0
print("\\nHEAVY=" + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
sys.exit(rc)
"""


def _python(code: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=path)
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _heavy_after(code: str) -> list[str]:
    out = _python(code + f"\nimport json, sys; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["dynsdpb_selfplay", "dynsdpb_selfplay.cli", "dynsdpb_selfplay.distill"])
def test_import_loads_no_heavy_module(module):
    assert _heavy_after(f"import {module}") == []


@pytest.mark.parametrize(
    ("argv", "rc", "says"),
    [
        (["--help"], 0, "run"),
        (["run", "--help"], 0, "--options"),
        (["eval", "--help"], 0, "--max-new-tokens"),  # its help text holds a literal '%'
        (["run", "--options"], 0, "generation.n"),
        (["run", "nonexistent.yaml"], 2, "config file not found"),
        (["run", "unknown_key.yaml"], 2, "foo: unknown key"),
        (["run", "unknown_section_key.yaml"], 2, "generation.foo: unknown key"),
    ],
)
def test_command_answers_without_heavy_modules(argv, rc, says, tmp_path):
    (tmp_path / "unknown_key.yaml").write_text("model: smollm2-135m-instruct\nfoo: 1\n")
    (tmp_path / "unknown_section_key.yaml").write_text("generation:\n  n: 2\n  foo: 1\n")
    out = _python(_COMMAND, *argv, cwd=tmp_path)
    assert out.returncode == rc, out.stderr
    assert says in out.stdout + out.stderr
    assert out.stdout.rsplit("HEAVY=", 1)[1].strip() == "[]", f"`dynsdpb {' '.join(argv)}` imported heavy modules"


PACKAGES = [
    "dynsdpb_selfplay",
    "dynsdpb_selfplay.cli",
    "dynsdpb_selfplay.distill",
    "dynsdpb_selfplay.engines",
    "dynsdpb_selfplay.nlu",
    "dynsdpb_selfplay.rounds",
    "dynsdpb_selfplay.tasks",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_public_name_resolves(name):
    """``from package import X`` works for every X in ``__all__``, lazily imported names being the defining
    module's own objects; ``import *`` and ``dir()`` see them; an unknown name is an AttributeError."""
    package = importlib.import_module(name)
    exported = getattr(package, "__all__", [])
    for attr in exported:
        value = getattr(package, attr)
        where = getattr(package, "_LAZY", {}).get(attr)
        if where is not None:  # defined in the module the table names, not imported into it
            assert value.__module__ == importlib.util.resolve_name(where, name), (attr, where)
    assert set(exported) <= set(dir(package))
    namespace: dict = {}
    exec(f"from {name} import *", namespace)
    assert set(exported) <= namespace.keys()
    assert not hasattr(package, "no_such_name")
