"""Consumer groups against a real ``sentinel run`` process.

Three members share a 6-partition topic: two in this process (Consumer objects, each polled
by its own task) and one in a child process. The test checks, in order:

1. balanced assignment: 2 partitions each, disjoint, covering all 6 (the coordinator's view
   from DescribeGroup and each member's own view agree);
2. a member that leaves (close) hands its partitions to the others;
3. a member that stops heartbeating (the child, SIGKILLed) loses its partitions once its
   short session times out;
4. nothing is skipped: every produced record is consumed by some member, with the produced
   value at the produced offset; duplicates only where a rebalance could cause them (the
   SIGKILLed member's uncommitted records; graceful rebalances commit first, so none there);
5. committed offsets survive a broker restart, and a new member of the group resumes from
   them: it reads exactly what was produced after the commit, nothing older.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_process import BrokerProcess
from fault_support import JsonLines, eventually, spawn_child

from sentinel.client import Admin, Consumer, Producer

TOPIC = "orders"
GROUP = "billing"
PARTITIONS = 6
# In-process members heartbeat every session/3 on their own task: 3 s leaves a wide margin
# on a loaded machine. The child's session is short: it is the one that dies.
LIVE_SESSION_MS = 3000
CHILD_SESSION_MS = 1500


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker that allows these short sessions (below Kafka's 6 s minimum, on purpose)."""
    process = BrokerProcess(tmp_path / "data", extra_args=["--group-min-session-timeout-ms", "1000"])
    process.start()
    try:
        yield process
    finally:
        process.close()


WAIT = 30.0  # generous bound for every condition (a loaded 2-core CI machine)

Record = tuple[int, int, str]  # (partition, offset, value)


class Member:
    """An in-process group member: a Consumer polled by its own task."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.consumer = Consumer(
            address,
            group_id=GROUP,
            client_id=name,
            auto_offset_reset="earliest",
            session_timeout_ms=LIVE_SESSION_MS,
            auto_commit_interval_ms=200,
            fetch_max_wait_ms=100,
        )
        self.records: list[Record] = []
        self._leaving = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.subscribe([TOPIC])
        self._task = asyncio.create_task(self._poll(), name=f"member {self.name}")

    async def _poll(self) -> None:
        while not self._leaving.is_set():
            got = await self.consumer.getmany(timeout_ms=100)
            for tp, records in got.items():
                self.records.extend((tp.partition, r.offset, (r.value or b"").decode()) for r in records)

    def partitions(self) -> set[int]:
        """This member's own view of its assignment; raises if its poll task died."""
        assert self._task is not None
        if self._task.done():
            self._task.result()
            raise AssertionError(f"member {self.name} stopped polling")
        return {tp.partition for tp in self.consumer.assignment()}

    async def leave(self) -> None:
        """Stop polling, then close: commits the positions and leaves the group."""
        assert self._task is not None
        self._leaving.set()
        await self._task
        await self.consumer.close()


class ChildMember:
    """The group member in a child process (tests/e2e/group_member_child.py)."""

    def __init__(self, address: str) -> None:
        process = spawn_child("group_member_child.py", address, GROUP, TOPIC, str(CHILD_SESSION_MS))
        self.output = JsonLines(process)

    def partitions(self) -> set[int] | None:
        """Its last reported assignment (None before the first)."""
        assigned = [item["assigned"] for item in self.output.snapshot() if "assigned" in item]
        return {p for _topic, p in assigned[-1]} if assigned else None

    def records(self) -> list[Record]:
        return [
            (item["record"][1], item["record"][2], item["record"][3])
            for item in self.output.snapshot()
            if "record" in item
        ]


async def coordinator_view(admin: Admin) -> dict[str, set[int]] | None:
    """client id -> partitions, from DescribeGroup; None unless the group is Stable."""
    info = await admin.describe_group(GROUP)
    if info.state != "Stable":
        return None
    return {m.client_id: {tp.partition for tp in m.assignment} for m in info.members}


async def wait_balanced(
    admin: Admin, members: list[Member], child: ChildMember | None, sizes: dict[str, int]
) -> dict[str, set[int]]:
    """Wait until the coordinator and every member agree on an assignment with ``sizes``
    partitions per member, disjoint and covering the topic; returns it."""
    view: dict[str, set[int]] = {}

    async def agreed() -> bool:
        nonlocal view
        found = await coordinator_view(admin)
        if found is None or {name: len(ps) for name, ps in found.items()} != sizes:
            return False
        if any(m.partitions() != found[m.name] for m in members):
            return False
        if child is not None and child.partitions() != found["child"]:
            return False
        view = found
        return True

    await eventually(agreed, WAIT, f"a stable assignment of {sizes}")
    owned = [p for ps in view.values() for p in ps]
    assert sorted(owned) == list(range(PARTITIONS)), f"not disjoint or not covering: {view}"
    return view


async def produce(producer: Producer, tag: str, count: int) -> dict[tuple[int, int], str]:
    """``count`` records spread over every partition; (partition, offset) -> value."""
    values = [f"{tag}-{i}" for i in range(count)]
    futures = [await producer.send(TOPIC, v.encode(), partition=i % PARTITIONS) for i, v in enumerate(values)]
    metas = await asyncio.gather(*futures)
    return {(m.partition, m.offset): v for m, v in zip(metas, values, strict=True)}


def covered(produced: dict[tuple[int, int], str], consumed: list[Record]) -> bool:
    seen = {(p, o): v for p, o, v in consumed}
    return all(seen.get(key) == value for key, value in produced.items())


@pytest.mark.slow
def test_group_rebalances_on_leave_and_crash_and_resumes_after_restart(broker: BrokerProcess) -> None:
    address = broker.address
    produced: dict[tuple[int, int], str] = {}
    child_partitions_at_kill: set[int] = set()

    async def phase_one() -> tuple[list[Record], dict[int, int]]:
        nonlocal child_partitions_at_kill
        async with Admin(address) as admin, Producer(address) as producer:
            await admin.create_topic(TOPIC, PARTITIONS)
            a, b = Member("a", address), Member("b", address)
            child = ChildMember(address)
            try:
                await a.start()
                await b.start()

                # 1. Balanced: 2 partitions each, disjoint, covering all 6.
                await wait_balanced(admin, [a, b], child, {"a": 2, "b": 2, "child": 2})
                produced.update(await produce(producer, "one", 60))

                def consumed() -> list[Record]:
                    return a.records + b.records + child.records()

                await eventually(lambda: covered(produced, consumed()), WAIT, "batch one consumed")

                # 2. b leaves: its partitions move to a and the child.
                b_partitions = b.partitions()
                await b.leave()
                view = await wait_balanced(admin, [a], child, {"a": 3, "child": 3})
                assert b_partitions <= view["a"] | view["child"]
                produced.update(await produce(producer, "two", 60))
                await eventually(lambda: covered(produced, consumed()), WAIT, "batch two consumed")

                # 3. The child stops heartbeating (SIGKILL): after its session timeout, a owns all.
                child_partitions_at_kill = view["child"]
                child.output.process.send_signal(signal.SIGKILL)
                await wait_balanced(admin, [a], None, {"a": PARTITIONS})
                produced.update(await produce(producer, "three", 60))
                await eventually(lambda: covered(produced, consumed()), WAIT, "batch three consumed")

                # Commit everything a has consumed, then leave (close commits too).
                await a.consumer.commit()
                await a.leave()
                all_consumed = consumed()
            finally:
                child.output.kill()
                for member in (a, b):
                    await member.consumer.close()
            info = await admin.describe_group(GROUP)
            committed = {lag.partition: lag.committed_offset for lag in info.offsets}
        return all_consumed, committed

    all_consumed, committed = asyncio.run(phase_one())

    # 4. Nothing skipped, values exact; duplicates only in the crashed member's partitions.
    assert covered(produced, all_consumed)
    for p, o, v in all_consumed:
        assert produced.get((p, o)) == v, f"consumed {v!r} at {p}/{o}, produced {produced.get((p, o))!r}"
    duplicated = {p for (p, _o), n in Counter((p, o) for p, o, _v in all_consumed).items() if n > 1}
    assert duplicated <= child_partitions_at_kill, (
        f"duplicates in partitions {sorted(duplicated - child_partitions_at_kill)}, which only moved "
        "in graceful rebalances (commit before revoke)"
    )
    high_watermarks = {p: 1 + max(o for (q, o) in produced if q == p) for p in range(PARTITIONS)}
    assert committed == high_watermarks, "a's commit did not cover everything it consumed"

    # 5. Produce after the commit, restart, produce more: a new member reads exactly those.
    async def produce_more(tag: str) -> dict[tuple[int, int], str]:
        async with Producer(address) as producer:
            return await produce(producer, tag, 30)

    later = asyncio.run(produce_more("four"))
    broker.stop()
    broker.start()
    later.update(asyncio.run(produce_more("five")))

    async def phase_two() -> tuple[list[Record], dict[int, int]]:
        async with Admin(address) as admin:
            info = await admin.describe_group(GROUP)
            committed_after_restart = {lag.partition: lag.committed_offset for lag in info.offsets}
            d = Member("d", address)
            await d.start()
            try:
                await eventually(lambda: covered(later, d.records), WAIT, "new member read what came later")
            finally:
                await d.leave()
        return d.records, committed_after_restart

    d_records, committed_after_restart = asyncio.run(phase_two())
    assert committed_after_restart == committed
    # Fetches return each partition in offset order, so any record from before the commit
    # would have been returned before the later ones: d read exactly the later records.
    assert sorted(d_records) == sorted((p, o, v) for (p, o), v in later.items())
