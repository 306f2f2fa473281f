"""Child process of ``test_crash.py``: concurrent writers that report every write, forever.

    python crash_child.py DIRECTORY SYNC_MODE SEED TAG KEYS

Opens the store with the given sync mode and a tiny memtable (so the parent's SIGKILL lands
during rotations, flushes and compactions too), prints ``ready``, then runs ``WRITERS``
tasks. Each task loops: it prints ``begin <writer> <json ops>``, writes the ops as one
atomic batch (a put, a delete, or several of either on shared keys), and once the write is
acknowledged prints ``ack <writer> <last_seq>``. So each writer has at most one write in
flight, and the parent learns every acknowledged write's sequence numbers (op ``i`` of a
batch of ``n`` has seq ``last_seq - n + 1 + i``). Every value is unique (it names the tag,
writer, write and op), so the parent can tell which write a recovered value came from.
Keys are drawn from ``KEYS`` names: many keep most keys' history deep in the tree; a handful
make concurrent batches overlap (a delete in one hiding another's put), the outcomes that
are hardest to judge.
Lines are flushed one by one: a line the parent reads was printed before the kill.
"""

from __future__ import annotations

import json
import random
import sys

import attrs
import trio

from sentinel.storage.compaction import CompactionOptions
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.store import Store, open_store

WRITERS = 4
OPTIONS = StorageOptions(
    memtable_bytes=4 * 1024,
    compaction=CompactionOptions(
        l0_compaction_trigger=2, l1_max_bytes=16 * 1024, level_size_multiplier=2, target_file_bytes=4 * 1024
    ),
)


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def make_ops(rng: random.Random, label: str, keys: int) -> list[tuple[str, str | None]]:
    roll = rng.random()
    count = 1 if roll < 0.75 else rng.randrange(2, 9)
    ops: list[tuple[str, str | None]] = []
    for i in range(count):
        key = f"k{rng.randrange(keys):03d}"
        if rng.random() < 0.2:
            ops.append((key, None))
        else:
            ops.append((key, f"{label}.{i}:" + "x" * rng.choice((0, 10, 100, 400))))
    return ops


async def writer(store: Store, rng: random.Random, writer_id: int, tag: str, keys: int) -> None:
    number = 0
    while True:
        number += 1
        ops = make_ops(rng, f"{tag}.w{writer_id}.n{number}", keys)
        emit(f"begin {writer_id} {json.dumps(ops)}")
        last_seq = await store.write([(k.encode(), None if v is None else v.encode()) for k, v in ops])
        emit(f"ack {writer_id} {last_seq}")


async def main(directory: str, sync: SyncMode, seed: int, tag: str, keys: int) -> None:
    rng = random.Random(seed)
    async with open_store(directory, attrs.evolve(OPTIONS, sync=sync)) as store:
        emit("ready")
        async with trio.open_nursery() as nursery:
            for writer_id in range(WRITERS):
                nursery.start_soon(writer, store, random.Random(rng.random()), writer_id, tag, keys)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], SyncMode(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
