"""The Raft core is pure: importing it loads nothing of Trio (nor of the asyncio bridge),
so the simulation, the benchmark and any thread can drive it. Checked in a fresh
interpreter, where nothing else could have imported Trio first."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CORE_MODULES = [
    "sentinel.raft",
    "sentinel.raft.core",
    "sentinel.raft.log",
    "sentinel.raft.progress",
    "sentinel.raft.messages",
    "sentinel.raft.storage",
    "sentinel.raft.format",
]

PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("trio", "asyncio", "anyio"))))
"""


def loaded_by(modules: list[str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *modules], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(out.stdout)
    return loaded


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_no_trio(module: str) -> None:
    loaded = loaded_by([module])
    assert not [m for m in loaded if m.split(".")[0] == "trio"], loaded
    assert loaded == [], f"{module} loads an event loop: {loaded}"


def test_the_check_sees_trio() -> None:
    """The probe itself works: a module that does import Trio is caught."""
    assert "trio" in loaded_by(["trio"])
