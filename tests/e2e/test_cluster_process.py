"""A three-node cluster of real ``sentinel run`` processes on loopback, under faults, with
a producer (acks=all) and a consumer group running, each run ending with the Jepsen-Kafka
style check of ``cluster_workload.check``: every acknowledged record read exactly once, at
its acknowledged offset, offsets contiguous, no offset holding two values, no duplicates.

Faults: SIGKILL of a partition leader and of the controller leader (then restart), SIGSTOP
of a leader for longer than an election timeout, a graceful SIGTERM of a leader under load
(the producer sees no error), all three nodes SIGKILLed at once, and a produce whose answer
is lost retried across a leader change.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cluster_workload import check, read_all
from fault_support import read_partition
from produce_cutter import ProduceAnswerCutter

from sentinel.client import Admin, Producer
from sentinel.cluster.local import LocalCluster

WORKLOAD = Path(__file__).with_name("cluster_workload.py")
TOPIC = "jepsen"
PARTITIONS = 3
READY_TIMEOUT_S = 60.0
pytestmark = pytest.mark.slow


class Child:
    """A workload process: JSON lines collected as they come, stopped by closing stdin."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKLOAD), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for(lambda: any("started" in line for line in self.lines), "the workload to start")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(json.loads(line))

    def wait_for(self, condition: Any, what: str, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                err = self.process.stderr.read() if self.process.stderr else ""
                raise AssertionError(f"workload exited waiting for {what}: {err[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def acked(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if "ack" in line]

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        code = self.process.wait(120)
        self._reader.join(10)
        err = self.process.stderr.read() if self.process.stderr else ""
        assert code == 0, f"workload failed: {err[-2000:]}"


async def _status(bootstrap: str) -> Any:
    async with Admin(bootstrap, request_timeout_ms=5000) as admin:
        return await admin.cluster_status()


def status(cluster: LocalCluster) -> Any:
    return asyncio.run(_status(cluster.bootstrap))


def wait_ready(cluster: LocalCluster) -> None:
    """Every node registered, the topic created with three replicas, every partition led."""
    deadline = time.monotonic() + READY_TIMEOUT_S

    async def ready() -> bool:
        async with Admin(cluster.bootstrap, request_timeout_ms=5000) as admin:
            if len((await admin.fetch_metadata()).brokers) < 3:
                return False
            try:
                await admin.create_topic(TOPIC, PARTITIONS, 3)
            except Exception as exc:
                if "already exists" not in str(exc):
                    return False
            s = await admin.cluster_status()
            return len([p for p in s.partitions if p.leader > 0]) == PARTITIONS

    while time.monotonic() < deadline:
        try:
            if asyncio.run(ready()):
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError("the cluster did not become ready")


def leader_of(cluster: LocalCluster, partition: int) -> int:
    for p in status(cluster).partitions:
        if p.topic == TOPIC and p.partition == partition:
            return int(p.leader)
    raise AssertionError(f"no status for partition {partition}")


def wait_acks(producer: Child, more: int) -> None:
    target = len(producer.acked()) + more
    producer.wait_for(lambda: len(producer.acked()) >= target, f"{more} more acknowledgements")


def verdict(cluster: LocalCluster, producer: Child) -> list[dict[str, Any]]:
    producer.stop()
    acked = producer.acked()
    assert len(acked) > 100, "too little was acknowledged to say anything"
    read = read_all(cluster.bootstrap, TOPIC, PARTITIONS)
    problems = check(acked, read)
    assert not problems, "\n".join(problems[:30])
    return acked


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    with LocalCluster(3, tmp_path) as c:
        wait_ready(c)
        yield c


def test_killing_the_partition_leader_and_the_controller_leader_loses_and_duplicates_nothing(
    cluster: LocalCluster,
) -> None:
    producer = Child("produce", cluster.bootstrap, TOPIC, str(PARTITIONS))
    group = Child("consume", cluster.bootstrap, TOPIC, "jepsen-group")
    wait_acks(producer, 100)
    victim = cluster.nodes[leader_of(cluster, 0)]
    victim.kill()
    wait_acks(producer, 200)
    victim.start()
    wait_acks(producer, 100)
    controller = cluster.nodes[status(cluster).controller]
    controller.kill()
    wait_acks(producer, 200)
    controller.start()
    wait_acks(producer, 100)
    acked = verdict(cluster, producer)
    # With its default retries the producer rode out both elections: no record failed.
    errors = [line for line in producer.lines if "error" in line]
    assert not errors, errors[:5]
    # The group member saw every acknowledged record (at least once: it may re-read after a
    # coordinator move, never skip).
    seen = {line["value"] for line in group.lines if "value" in line}
    group.wait_for(
        lambda: {a["ack"] for a in acked} <= {ln["value"] for ln in group.lines if "value" in ln},
        "the group to catch up",
    )
    group.stop()
    assert seen is not None


def test_a_leader_stopped_longer_than_an_election_timeout_steps_down_and_nothing_stale_is_acked(
    cluster: LocalCluster,
) -> None:
    producer = Child("produce", cluster.bootstrap, TOPIC, str(PARTITIONS))
    wait_acks(producer, 100)
    victim = cluster.nodes[leader_of(cluster, 1)]
    victim.pause()
    wait_acks(producer, 200)  # the others elect and carry on
    time.sleep(1.0)
    victim.resume()
    wait_acks(producer, 200)
    verdict(cluster, producer)
    assert leader_of(cluster, 1) != 0


def test_a_graceful_sigterm_of_a_leader_moves_leadership_and_the_producer_sees_no_error(
    cluster: LocalCluster,
) -> None:
    producer = Child("produce", cluster.bootstrap, TOPIC, str(PARTITIONS))
    wait_acks(producer, 100)
    victim = cluster.nodes[leader_of(cluster, 2)]
    assert victim.stop() == 0
    wait_acks(producer, 300)
    errors = [line for line in producer.lines if "error" in line]
    verdict(cluster, producer)
    assert not errors, errors[:5]
    victim.start()


def test_all_three_nodes_killed_at_once_keep_everything_acknowledged(cluster: LocalCluster) -> None:
    producer = Child("produce", cluster.bootstrap, TOPIC, str(PARTITIONS))
    wait_acks(producer, 200)
    for node in cluster.nodes.values():
        node.kill()
    for node in cluster.nodes.values():
        node.start(wait=False)
    for node in cluster.nodes.values():
        node.wait_listening()
    wait_acks(producer, 200)
    verdict(cluster, producer)


def _flip_newest_wal_byte(data: Path) -> Path:
    segments = sorted(data.glob("wal-*.log"))
    assert segments, f"no WAL segment in {data}"
    newest = max(segments, key=lambda p: int(p.stem.split("-")[1]))
    raw = bytearray(newest.read_bytes())
    assert len(raw) > 1000, f"{newest} holds too little to damage ({len(raw)} bytes)"
    raw[len(raw) // 2] ^= 0xFF
    newest.write_bytes(bytes(raw))
    return newest


def test_a_replica_whose_wal_was_damaged_rejoins_and_is_repaired_from_the_leader(
    cluster: LocalCluster,
) -> None:
    producer = Child("produce", cluster.bootstrap, TOPIC, str(PARTITIONS))
    wait_acks(producer, 200)
    leader = leader_of(cluster, 0)
    victim = cluster.nodes[next(i for i in cluster.nodes if i != leader)]
    victim.kill()
    wait_acks(producer, 100)
    damaged = _flip_newest_wal_byte(victim.data)
    victim.start()  # a single node would refuse to start; a cluster member repairs itself
    assert any("recovering replica" in line for line in victim.log), victim.tail()
    assert any(damaged.name in line for line in victim.log), victim.tail()
    wait_acks(producer, 200)
    # Make the repaired node matter: the old leader goes, so it must be part of every majority.
    cluster.nodes[leader].kill()
    wait_acks(producer, 200)
    cluster.nodes[leader].start()
    wait_acks(producer, 100)
    verdict(cluster, producer)


def test_a_produce_retried_across_a_leader_change_is_not_duplicated(tmp_path: Path) -> None:
    """Every broker is reached through a proxy (its advertised address). The partition
    leader's proxy cuts the first ProduceResponse (the batch is committed on a majority) and
    the leader is SIGKILLed right there: the producer's retry of that batch, and of every
    batch in flight with it, meets a new leader, which answers it with the original offsets
    from the producer state it rebuilt from the log."""
    cluster = LocalCluster(3, tmp_path)
    sent = [b"retried %05d " % i + b"x" * 80 for i in range(2000)]
    killed: list[int] = []

    async def main() -> None:
        cutters = {}
        for node_id, node in cluster.nodes.items():

            def cut(node_id: int = node_id) -> None:
                for cutter in cutters.values():
                    cutter.cut = True  # one cut, one kill: the other proxies pass everything
                killed.append(node_id)
                cluster.nodes[node_id].kill()

            cutters[node_id] = await ProduceAnswerCutter(node.address, on_cut=cut).__aenter__()
            node.advertise = cutters[node_id].address
        try:
            await asyncio.to_thread(cluster.start)
            await asyncio.to_thread(wait_ready, cluster)
            leader = await asyncio.to_thread(leader_of, cluster, 0)
            bootstrap = ",".join(c.address for c in cutters.values())
            async with Producer(
                bootstrap,
                acks="all",
                batch_size=2048,
                retry_backoff_ms=50,
                request_timeout_ms=10_000,
                retries=50,
            ) as producer:
                futures = [await producer.send(TOPIC, value, partition=0) for value in sent]
                offsets = [(await future).offset for future in futures]
            assert killed == [leader], f"the cut was at {killed}, the leader was {leader}"
            assert offsets == list(range(len(sent)))  # the retries got the original offsets
            new_leader = await asyncio.to_thread(leader_of, cluster, 0)
            assert new_leader not in (leader, 0)
            stored = [v for _, v in await read_partition(cluster.bootstrap, TOPIC, 0)]
            assert stored == sent  # every record once, in send order
        finally:
            for c in cutters.values():
                await c.__aexit__(None, None, None)

    try:
        asyncio.run(main())
    finally:
        cluster.stop()


def test_a_group_consumer_bootstrapped_on_a_broker_that_is_not_the_coordinator_finds_it(
    cluster: LocalCluster,
) -> None:
    """Group requests are served by the controller leader's coordinator; a member whose
    bootstrap broker is another node is pointed there by the UNAVAILABLE answer's hint, and
    finds the next coordinator when that one is killed, with the group's commit kept."""
    from sentinel.client import Consumer, TopicPartition

    tp = TopicPartition(TOPIC, 0)
    coordinator = status(cluster).controller
    other = next(n for i, n in cluster.nodes.items() if i != coordinator)

    async def produce(n: int) -> None:
        async with Producer(cluster.bootstrap, acks="all") as producer:
            for i in range(n):
                await producer.send(TOPIC, b"g%d" % i, partition=0)
            await producer.flush()

    async def consume(bootstrap: str, at_least: int) -> list[bytes]:
        """Read as member of group "g" and commit what was read."""
        got: list[bytes] = []
        async with Consumer(bootstrap, group_id="g", auto_offset_reset="earliest") as consumer:
            consumer.subscribe([TOPIC])
            with_deadline = time.monotonic() + READY_TIMEOUT_S
            while len(got) < at_least and time.monotonic() < with_deadline:
                batches = await consumer.getmany(timeout_ms=500, max_records=at_least - len(got))
                got.extend(r.value or b"" for r in batches.get(tp, []))
            await consumer.commit({tp: len(got) + committed_before[0]})
        return got

    committed_before = [0]
    asyncio.run(produce(20))
    first = asyncio.run(consume(other.address, 10))
    assert first == [b"g%d" % i for i in range(10)]
    committed_before[0] = 10
    cluster.nodes[coordinator].kill()
    rest = asyncio.run(consume(other.address, 1))
    assert rest == [b"g10"]  # resumed at the commit made before the kill


def test_the_cluster_commands_json_carries_the_names_scripts_rely_on(cluster: LocalCluster) -> None:
    """`cluster status`, `topics describe` and `cluster transfer-leader` with `--format json`:
    per-partition objects with `partition`, `leader` and `replicas`, and the status names
    the `controller` node id (the README promises these names to scripts)."""
    from broker_process import sentinel_command, subprocess_env

    def cli(*args: str) -> Any:
        done = subprocess.run(
            sentinel_command(*args, "--broker", cluster.bootstrap, "--format", "json"),
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    status_now = cli("cluster", "status")
    assert status_now["controller"] in cluster.nodes
    assert {b["node_id"]: b["reachable"] for b in status_now["brokers"]} == {1: True, 2: True, 3: True}
    mine = {p["partition"]: p for p in status_now["partitions"] if p["topic"] == TOPIC}
    assert sorted(mine) == list(range(PARTITIONS))
    for p in mine.values():
        assert p["leader"] in p["replicas"] and sorted(p["replicas"]) == [1, 2, 3]
    described = cli("topics", "describe", TOPIC)
    assert [(p["partition"], p["leader"]) for p in described["partitions"]] == [
        (n, mine[n]["leader"]) for n in range(PARTITIONS)
    ]
    assert all(sorted(p["replicas"]) == [1, 2, 3] for p in described["partitions"])
    target = next(n for n in mine[0]["replicas"] if n != mine[0]["leader"])
    moved = cli("cluster", "transfer-leader", TOPIC, "0", "--to", str(target))
    assert moved == {"topic": TOPIC, "partition": 0, "leader": target}
    assert leader_of(cluster, 0) == target
