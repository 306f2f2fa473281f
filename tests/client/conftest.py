"""The ``async for`` tests run against each build of ``sentinel.client.iteration``.

Like the records decoder (``tests/records/conftest.py``): the consumer's ``async for`` step
runs as Python source or compiled by mypyc, so each test taking ``iteration_build`` runs
once per build: ``source`` always, ``compiled`` when a fresh compiled build is installed
(else skipped, with the reason shown by ``-ra``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sentinel.client import consumer


@pytest.fixture(params=["source", "compiled"])
def iteration_build(request: pytest.FixtureRequest) -> Iterator[str]:
    module = consumer.iteration_builds().get(request.param)
    if module is None:
        pytest.skip("no compiled async-for step installed (pip install -e . with a C compiler)")
    with consumer.using_iteration(module):
        yield request.param
