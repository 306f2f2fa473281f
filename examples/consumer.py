"""Read a Sentinel topic from the beginning with the Python client (no consumer group).

    python examples/consumer.py --topic orders

Assigns every partition of the topic to itself, seeks to the beginning, and prints each
record (partition, offset, key, value) until no new record arrives for ``--idle-ms``.
"""

from __future__ import annotations

import argparse
import asyncio

from sentinel.client import Admin, Consumer


async def main(broker: str, topic: str, idle_ms: int) -> None:
    async with Admin(broker) as admin:
        partitions = [p.partition for p in (await admin.describe_topic(topic)).partitions]
    async with Consumer(broker, auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        total = 0
        while True:
            batch = await consumer.getmany(timeout_ms=idle_ms, max_records=500)
            if not batch:
                break
            for records in batch.values():
                for r in records:
                    key = r.key.decode(errors="replace") if r.key is not None else None
                    value = r.value.decode(errors="replace") if r.value is not None else None
                    print(f"{r.topic}[{r.partition}]@{r.offset} key={key} {value}")
                    total += 1
        print(f"read {total} records from {topic} ({len(partitions)} partitions)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="localhost:9092")
    parser.add_argument("--topic", default="orders")
    parser.add_argument("--idle-ms", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.broker, args.topic, args.idle_ms))
