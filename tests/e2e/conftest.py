"""Fixtures for end-to-end tests against real ``sentinel run`` processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_process import BrokerProcess


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A started broker on a fresh data directory with /metrics on; killed at teardown if still up."""
    process = BrokerProcess(tmp_path / "data", metrics=True)
    process.start()
    try:
        yield process
    finally:
        process.close()
