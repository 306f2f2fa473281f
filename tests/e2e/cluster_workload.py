"""Workload processes for the cluster tests, and the checker of what they saw.

``python cluster_workload.py produce BOOTSTRAP TOPIC PARTITIONS`` sends unique values
("v0", "v1", ...) round-robin over the partitions, acks=all, at a steady pace, until its
stdin closes; then it waits for every outstanding send and exits. It prints one JSON line
per outcome, flushed: ``{"ack": value, "partition": p, "offset": o}`` for an acknowledged
record, ``{"error": value, "detail": ...}`` for a send that failed after the producer's
retries. A record is only ever reported acknowledged once the broker said so.

``read_all(bootstrap, topic, partitions)`` reads every partition from its log start to its
high watermark with a fresh consumer.

``check(acked, read)`` is the Jepsen-Kafka-style verdict: every acknowledged record is read
exactly once, at the offset it was acknowledged with; offsets of each partition are
contiguous from the log start (no gaps); no offset holds two values; no value appears twice.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections import Counter
from typing import Any

PACE_S = 0.002  # between sends: a few hundred records a second, spread over the faults


async def produce(bootstrap: str, topic: str, partitions: int) -> None:
    from sentinel.client import Producer

    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()

    def report(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def settle(value: str, future: Any) -> None:
        try:
            meta = await future
        except Exception as exc:
            report({"error": value, "detail": f"{type(exc).__name__}: {exc}"})
        else:
            report({"ack": value, "partition": meta.partition, "offset": meta.offset})

    pending: set[asyncio.Task[None]] = set()
    # The producer's own retry defaults (bounded by its delivery timeout): a failover must
    # cost them a wait, never a record.
    async with Producer(bootstrap, acks="all", linger_ms=1, request_timeout_ms=10_000) as producer:
        i = 0
        report({"started": True})
        while not stop.is_set():
            value = f"v{i}"
            future = await producer.send(topic, value.encode(), partition=i % partitions)
            task = asyncio.ensure_future(settle(value, future))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
            await asyncio.sleep(PACE_S)
        await producer.flush()
        if pending:
            await asyncio.gather(*pending)
    report({"done": i})


READ_ALL_TIMEOUT_S = 90.0


async def read_partitions(bootstrap: str, topic: str, partitions: int) -> dict[int, list[tuple[int, str]]]:
    from sentinel.client import Consumer, TopicPartition

    out: dict[int, list[tuple[int, str]]] = {p: [] for p in range(partitions)}
    async with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = asyncio.get_running_loop().time() + READ_ALL_TIMEOUT_S
        while behind := [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if asyncio.get_running_loop().time() > deadline:
                where = {tp.partition: (await consumer.position(tp), ends[tp]) for tp in behind}
                raise AssertionError(f"reading back stalled: (position, end) by partition {where}")
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, records in batches.items():
                out[tp.partition].extend((r.offset, (r.value or b"").decode()) for r in records)
    return out


def read_all(bootstrap: str, topic: str, partitions: int) -> dict[int, list[tuple[int, str]]]:
    return asyncio.run(read_partitions(bootstrap, topic, partitions))


def check(acked: list[dict[str, Any]], read: dict[int, list[tuple[int, str]]]) -> list[str]:
    """Every violation found, as readable lines (empty: the history is correct)."""
    problems: list[str] = []
    where: dict[str, tuple[int, int]] = {}
    for partition, records in read.items():
        offsets = [o for o, _ in records]
        if offsets != list(range(offsets[0], offsets[0] + len(offsets))) if offsets else False:
            gaps = sorted(set(range(offsets[0], offsets[-1] + 1)) - set(offsets))
            problems.append(f"partition {partition}: offsets not contiguous (missing {gaps[:10]})")
        counts = Counter(offsets)
        doubled = [o for o, n in counts.items() if n > 1]
        if doubled:
            problems.append(f"partition {partition}: offsets holding two values: {doubled[:10]}")
        for offset, value in records:
            if value in where:
                problems.append(f"duplicate: {value} at {where[value]} and at ({partition}, {offset})")
            where[value] = (partition, offset)
    for ack in acked:
        found = where.get(ack["ack"])
        expected = (ack["partition"], ack["offset"])
        if found is None:
            problems.append(f"lost: {ack['ack']} acknowledged at {expected}, never read")
        elif found != expected:
            problems.append(f"moved: {ack['ack']} acknowledged at {expected}, read at {found}")
    return problems


async def consume(bootstrap: str, topic: str, group: str) -> None:
    """A group member printing every record it gets (``{"value", "partition", "offset"}``)
    until stdin closes; commits as it goes (auto-commit)."""
    from sentinel.client import Consumer

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    async with Consumer(bootstrap, group_id=group, auto_offset_reset="earliest") as consumer:
        consumer.subscribe([topic])
        sys.stdout.write(json.dumps({"started": True}) + "\n")
        sys.stdout.flush()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                for r in records:
                    line = {"value": (r.value or b"").decode(), "partition": tp.partition, "offset": r.offset}
                    sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1] == "produce":
        asyncio.run(produce(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        asyncio.run(consume(sys.argv[2], sys.argv[3], sys.argv[4]))
