"""A producer (acks=all) in its own process, reporting every outcome; used by crash tests.

    python producer_child.py ADDRESS TOPIC PARTITIONS

Sends records "r<i>" round-robin over the partitions (explicit partition), keeping up to
WINDOW unanswered, until the first delivery error; then closes (every record still queued
gets its answer too) and exits 0. One JSON line per outcome, flushed at once:
  {"topic": t, "partition": p, "offset": o, "value": "r<i>"}   acknowledged
  {"error": "Unavailable", "message": "...", "value": "r<i>"}  failed
  {"done": true, "acked": n, "failed": m}                      last line
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys

from sentinel.client import Producer, RecordMetadata

WINDOW = 32


def emit(item: object) -> None:
    print(json.dumps(item), flush=True)


async def main(address: str, topic: str, partitions: int) -> None:
    counts = {"acked": 0, "failed": 0}
    stop = asyncio.Event()

    def report(value: str, future: asyncio.Future[RecordMetadata]) -> None:
        exc = future.exception()
        if exc is None:
            m = future.result()
            counts["acked"] += 1
            emit({"topic": m.topic, "partition": m.partition, "offset": m.offset, "value": value})
        else:
            counts["failed"] += 1
            emit({"error": type(exc).__name__, "message": str(exc), "value": value})
            stop.set()

    producer = Producer(address, acks="all", retries=2, retry_backoff_ms=50, request_timeout_ms=5000)
    await producer.start()
    sent: list[asyncio.Future[RecordMetadata]] = []
    try:
        pending: set[asyncio.Future[RecordMetadata]] = set()
        i = 0
        while not stop.is_set():
            value = f"r{i}"
            future = await producer.send(topic, value.encode(), partition=i % partitions)
            future.add_done_callback(functools.partial(report, value))
            sent.append(future)
            pending.add(future)
            i += 1
            if len(pending) >= WINDOW:
                _done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await producer.close()  # waits until every record sent so far is answered
    # Every report callback has run once gather (whose callbacks come after them) is done.
    await asyncio.gather(*sent, return_exceptions=True)
    emit({"done": True, **counts})


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
