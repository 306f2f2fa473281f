"""Produce records to a Sentinel topic with the Python client.

    sentinel run &                                   # a broker on localhost:9092
    python examples/producer.py --topic orders --count 1000

Sends ``--count`` JSON records keyed by customer (records with the same key land on the
same partition, in order), pipelined: ``send()`` only enqueues into a batch and returns a
future, so thousands of records are in flight at once and the producer waits only when its
buffer is full. Prints where each of the first few records landed, then a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from sentinel.client import Producer


async def main(broker: str, topic: str, count: int, acks: str) -> None:
    async with Producer(broker, acks=acks, linger_ms=5) as producer:
        started = time.perf_counter()
        futures = []
        for i in range(count):
            customer = f"customer-{i % 10}"
            value = json.dumps({"order": i, "customer": customer, "amount": i % 97}).encode()
            futures.append(await producer.send(topic, value, key=customer.encode()))
        for future in futures[:5]:
            meta = await future
            print(f"{meta.topic}[{meta.partition}] offset {meta.offset}")
        await producer.flush()  # every future below is resolved once flush returns
        metas = [await f for f in futures]
        elapsed = time.perf_counter() - started
        partitions = sorted({m.partition for m in metas})
        print(f"sent {count} records to {topic} (partitions {partitions}) in {elapsed:.2f}s, acks={acks}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="localhost:9092")
    parser.add_argument("--topic", default="orders")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--acks", default="all", choices=["all", "1", "0"])
    args = parser.parse_args()
    acks = args.acks if args.acks == "all" else int(args.acks)
    asyncio.run(main(args.broker, args.topic, args.count, acks))
