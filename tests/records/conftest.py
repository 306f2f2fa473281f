"""Every record test runs against each build of the records-section decoder.

``sentinel/records/decode.py`` runs either as Python source or compiled by mypyc (when the
package was installed with a C compiler at hand; see ``sentinel.records.decoder``). The
corruption, property and codec tests here are the decoder's contract, so each runs once
per build: ``source`` always, ``compiled`` when a fresh compiled build is installed (else
skipped, with the reason shown by ``-ra``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sentinel.records import decoder


@pytest.fixture(autouse=True, params=["source", "compiled"])
def record_decoder(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "source":
        module = decoder.pure()
    else:
        compiled = decoder.compiled()
        if compiled is None:
            pytest.skip("no compiled records decoder installed (pip install -e . with a C compiler)")
        module = compiled
    with decoder.using(module):
        yield request.param
