"""A consumer-group member in its own process; tests/e2e/test_groups_process.py SIGKILLs it.

    python group_member_child.py ADDRESS GROUP TOPIC SESSION_TIMEOUT_MS

Prints one JSON line per event, flushed at once:
  {"assigned": [[topic, partition], ...]}        after every rebalance
  {"record": [topic, partition, offset, value]}  per record consumed (value as text)
Auto-commits every 200 ms (at the start of each poll, so only records already printed).
Runs until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys

from sentinel.client import Consumer, ConsumerRebalanceListener, TopicPartition


def emit(item: object) -> None:
    print(json.dumps(item), flush=True)


class PrintAssignment(ConsumerRebalanceListener):
    def on_partitions_assigned(self, assigned: frozenset[TopicPartition]) -> None:
        emit({"assigned": sorted(assigned)})


async def main(address: str, group: str, topic: str, session_timeout_ms: int) -> None:
    async with Consumer(
        address,
        group_id=group,
        client_id="child",
        auto_offset_reset="earliest",
        session_timeout_ms=session_timeout_ms,
        auto_commit_interval_ms=200,
        fetch_max_wait_ms=100,
    ) as consumer:
        consumer.subscribe([topic], listener=PrintAssignment())
        while True:
            got = await consumer.getmany(timeout_ms=200)
            for tp, records in got.items():
                for r in records:
                    value = None if r.value is None else r.value.decode()
                    emit({"record": [tp.topic, tp.partition, r.offset, value]})


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
