"""The storage cores' tests run against each build of them.

``sentinel.storage.builds`` runs the skip list, the WAL record codec, the SSTable block codec
and the bloom filter either as Python source or compiled by mypyc. Their tests (and the
corruption tests of the formats they write) are the contract of both, so a test module
marked ``pytestmark = pytest.mark.usefixtures("storage_build")`` runs each test once per
build: ``source`` always, ``compiled`` when fresh compiled builds are installed (else
skipped, with the reason shown by ``-ra``). Objects made inside the test use that build.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sentinel.storage import builds


@pytest.fixture(params=builds.BUILDS)
def storage_build(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param not in builds.builds():
        pytest.skip("no compiled storage cores installed (pip install -e . with a C compiler)")
    with builds.using(request.param):
        yield request.param
