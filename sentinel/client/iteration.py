"""``async for record in consumer``: the per-record step, compiled with mypyc when installed.

``Consumer.__aiter__`` returns a ``RecordIterator``. Its ``__anext__`` hands out the next
decoded record of the partition the last record came from, with the consumer's bookkeeping
(position after each record, a kept error, a rebalance, auto-commit, close) left to
``Consumer._next_record`` whenever any of it may be due. ``setup.py`` compiles this module
with mypyc (like ``sentinel.records.decode``): Python's per-step cost of a coroutine and of
the attribute look-ups here was a third of a consumed record's client CPU; compiled, the
step costs about a third less. ``sentinel.client.consumer`` uses the compiled build only
when it was built from this very source, and the ``async for`` tests run against both.

Only mypyc-compatible constructs here (see ``sentinel/records/decode.py``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sentinel.client.types import ConsumerRecord

if TYPE_CHECKING:
    from sentinel.client.consumer import Consumer


class RecordIterator:
    """The records of a consumer one at a time; see the module docstring."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer

    def __aiter__(self) -> RecordIterator:
        return self

    async def __anext__(self) -> ConsumerRecord:
        consumer = self._consumer
        state = consumer._iter_state
        if state is not None:  # only while the consumer is open: close() clears it
            # The fast path: the next record of a decoded chunk, with no bookkeeping due (the
            # next answer is already being fetched: getmany started it when it buffered this
            # one). PartitionState.take_one inlined while records remain in the chunk.
            records = state.records
            group = consumer._group
            if (
                records
                and (group is None or not group.rejoin_needed)
                and (not consumer._auto_commit or time.monotonic() < consumer._next_auto_commit)
            ):
                index = state.index + 1
                if index < len(records):
                    state.index = index
                    state.position = records[index].offset
                    return records[index - 1]
                return state.take_one()
        return await consumer._next_record()
