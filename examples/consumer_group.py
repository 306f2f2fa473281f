"""A member of a consumer group: run it several times and the topic's partitions are shared.

    sentinel topics create orders --partitions 6
    python examples/consumer_group.py --group billing --name a &
    python examples/consumer_group.py --group billing --name b &
    python examples/producer.py --topic orders --count 1000

Each process joins the group ``--group``; the broker's coordinator assigns the topic's
partitions round-robin over the members and rebalances when one joins, leaves (Ctrl-C) or
stops heartbeating. The rebalance listener prints what this member was given and lost.
Offsets are committed automatically (every 5 s, on rebalance and on close), so a restarted
member resumes where the group left off. ``sentinel groups describe billing`` shows the
members, their partitions, the committed offsets and the lag.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from sentinel.client import Consumer, ConsumerRebalanceListener, TopicPartition


class PrintRebalance(ConsumerRebalanceListener):
    def __init__(self, name: str) -> None:
        self.name = name

    async def on_partitions_revoked(self, revoked: frozenset[TopicPartition]) -> None:
        if revoked:
            print(f"[{self.name}] revoked {sorted(p.partition for p in revoked)}", flush=True)

    async def on_partitions_assigned(self, assigned: frozenset[TopicPartition]) -> None:
        print(f"[{self.name}] assigned {sorted(p.partition for p in assigned)}", flush=True)


async def main(broker: str, topic: str, group: str, name: str) -> None:
    async with Consumer(broker, group_id=group, auto_offset_reset="earliest", client_id=name) as consumer:
        consumer.subscribe([topic], listener=PrintRebalance(name))
        async for record in consumer:
            value = record.value.decode(errors="replace") if record.value is not None else None
            print(f"[{name}] {record.topic}[{record.partition}]@{record.offset} {value}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="localhost:9092")
    parser.add_argument("--topic", default="orders")
    parser.add_argument("--group", default="billing")
    parser.add_argument("--name", default="member")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.broker, args.topic, args.group, args.name))
