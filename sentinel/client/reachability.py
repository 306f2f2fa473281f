"""Which brokers a client cannot reach now, reported once per outage through logging.

A consumer retries what fails retriably (fetches and heartbeats without end, other
requests a few times), so a dead broker would otherwise go unnoticed. Every RPC of one
consumer reports its outcome here. A broker counts as unreachable once ``threshold``
requests to it in a row failed retriably (UNAVAILABLE, a lost connection): ``threshold``
is the attempts of one request with its retries, so a blip that one retry absorbs says
nothing. A request that timed out is enough on its own: it has already waited the whole
request timeout (30 s by default) for an answer, and ``threshold`` of them would keep a
frozen broker quiet for minutes. Then one WARNING names the broker and the error; the
first answer after that (any answer, an error status too: the broker is there) is one
INFO.

Both records carry ``broker`` (the address) and ``broker_reachable`` (False, then True),
so an application can present an outage (the CLI prints one line each) without parsing
text. An UNAVAILABLE answer naming another leader is routing, not an outage: it counts as
an answer.

Owned by one client on one event loop; RPCs report synchronously when they end, so there
is no interleaving to guard.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Final, Literal

from sentinel.client.errors import RETRIABLE_ERRORS, RequestTimeout
from sentinel.errors import SentinelError, Unavailable

__all__ = ["BROKER", "BROKER_REACHABLE", "Reachability"]

logger = logging.getLogger(__name__)

# Names of the attributes the two records carry (logging's ``extra``).
BROKER: Final = "broker"
BROKER_REACHABLE: Final = "broker_reachable"


class Reachability:
    """Counts retriable failures in a row per broker address; see the module docstring."""

    __slots__ = ("_failures", "_threshold", "_unreachable", "_watches")

    def __init__(self, *, threshold: int) -> None:
        self._threshold = max(threshold, 1)
        self._failures: dict[str, int] = {}  # only brokers whose last request failed
        self._unreachable: set[str] = set()
        self._watches: dict[str, _Watch] = {}

    def watch(self, address: str) -> _Watch:
        """``with reachability.watch(conn.address), conn.errors: await conn.stub...``: the
        RPC's outcome is reported when the block ends (typed errors: inside ``conn.errors``)."""
        watch = self._watches.get(address)
        if watch is None:
            watch = self._watches[address] = _Watch(self, address)
        return watch

    @property
    def unreachable(self) -> frozenset[str]:
        return frozenset(self._unreachable)

    def failed(self, address: str, error: SentinelError) -> None:
        if isinstance(error, Unavailable) and error.leader is not None:
            self.answered(address)
            return
        count = self._failures.get(address, 0) + 1
        if isinstance(error, RequestTimeout):
            count = max(count, self._threshold)
        self._failures[address] = count
        if count < self._threshold or address in self._unreachable:
            logger.debug("request to broker %s failed (%d in a row): %s", address, count, error)
            return
        self._unreachable.add(address)
        text = str(error)
        if address not in text:
            text = f"broker {address}: {text}"
        logger.warning("%s", text, extra={BROKER: address, BROKER_REACHABLE: False})

    def answered(self, address: str) -> None:
        if not self._failures:  # the common case: nothing failed
            return
        self._failures.pop(address, None)
        if address in self._unreachable:
            self._unreachable.discard(address)
            logger.info("broker %s answers again", address, extra={BROKER: address, BROKER_REACHABLE: True})


class _Watch:
    """The context manager :meth:`Reachability.watch` returns, one per address (reused:
    it sits on every RPC and keeps no state of its own)."""

    __slots__ = ("_address", "_tracker")

    def __init__(self, tracker: Reachability, address: str) -> None:
        self._tracker = tracker
        self._address = address

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        if exc is None:
            self._tracker.answered(self._address)
        elif isinstance(exc, RETRIABLE_ERRORS):
            self._tracker.failed(self._address, exc)
        elif isinstance(exc, SentinelError):
            self._tracker.answered(self._address)  # an error status: the broker is there
        # Anything else (a cancellation) says nothing about the broker.
        return False
