"""The consumer tests run against each build of ``sentinel.client.partition``, the producer
tests against each build of ``sentinel.client.appending``.

Like the records decoder (``tests/records/conftest.py``): the consumer's per-partition state
and ``async for`` step run as Python source or compiled by mypyc, so each test taking
``partition_build`` runs once per build: ``source`` always, ``compiled`` when a fresh
compiled build is installed (else skipped, with the reason shown by ``-ra``). Consumers
created inside the test use that build. Likewise ``appending_build`` (the producer's queues,
futures and per-record ``send`` step): producers and accumulators created inside the test use
that build.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sentinel.client import accumulator, fetching


@pytest.fixture(params=["source", "compiled"])
def partition_build(request: pytest.FixtureRequest) -> Iterator[str]:
    module = fetching.partition_builds().get(request.param)
    if module is None:
        pytest.skip("no compiled sentinel.client.partition installed (pip install -e . with a C compiler)")
    with fetching.using_partition(module):
        yield request.param


@pytest.fixture(params=["source", "compiled"])
def appending_build(request: pytest.FixtureRequest) -> Iterator[str]:
    module = accumulator.appending_builds().get(request.param)
    if module is None:
        pytest.skip("no compiled sentinel.client.appending installed (pip install -e . with a C compiler)")
    with accumulator.using_appending(module):
        yield request.param
