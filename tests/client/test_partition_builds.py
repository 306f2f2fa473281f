"""The two builds of sentinel.client.partition: which one consumers use."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sentinel.client import Consumer, fetching


def test_consumers_use_the_compiled_partition_state_when_a_fresh_build_is_installed() -> None:
    builds = fetching.partition_builds()
    assert (builds["source"].__file__ or "").endswith("partition.py")  # always at hand
    compiled = builds.get("compiled")
    if compiled is None:
        pytest.skip("no compiled sentinel.client.partition installed")
    assert fetching.partition is compiled and fetching.PartitionState is compiled.PartitionState
    assert isinstance(aiter(Consumer("127.0.0.1:1")), compiled.RecordIterator)
    stamp = Path(compiled.__file__ or "").parent / "partition.source-sha256"
    source = Path(builds["source"].__file__ or "")
    assert stamp.read_text().strip() == hashlib.sha256(source.read_bytes()).hexdigest()
