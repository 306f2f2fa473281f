"""Fixtures for the CLI tests (see cli_support)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from cli_support import ThreadedFake


@pytest.fixture
def fake() -> Iterator[ThreadedFake]:
    server = ThreadedFake(default_partitions=1)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
