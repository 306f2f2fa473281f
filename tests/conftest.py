"""Fixtures shared by every test folder (and ``tests/`` on the import path, so a folder's
tests can import the shared helpers: ``node_harness``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio.testing
from node_harness import NodeFactory, mock_clock


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Trio's MockClock with autojump (a test takes it itself: pytest-trio runs the test on it)."""
    return mock_clock()


@pytest.fixture
def node(tmp_path: Path, clock: trio.testing.MockClock) -> NodeFactory:
    """A node's broker layer on ``tmp_path / "data"`` (``node_harness``)."""
    return NodeFactory(tmp_path / "data", clock)


@pytest.fixture
def make_node(tmp_path: Path, clock: trio.testing.MockClock) -> Callable[..., NodeFactory]:
    """A factory with other settings (``sync``, ``options``, ``seed``, ``compaction``, ``address``...)."""

    def make(**changes: Any) -> NodeFactory:
        return NodeFactory(tmp_path / "data", clock, **changes)

    return make
