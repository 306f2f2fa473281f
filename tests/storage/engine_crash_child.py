"""Child process of the storage crash test: writes forever with sync=always.

    python engine_crash_child.py DIRECTORY SEED

Before each write it prints ``begin <json op>``; after the write is acknowledged it prints
``ack``. Ops are applied one at a time, so at most one write is in flight when the parent
SIGKILLs it. Ops: ``["put", key, value]``, ``["del", key]``, ``["batch", [[key, value|null], ...]]``.
"""

from __future__ import annotations

import json
import random
import sys

import trio

from sentinel.storage.compaction import CompactionOptions
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.store import open_store

OPTIONS = StorageOptions(
    sync=SyncMode.ALWAYS,
    memtable_bytes=8 * 1024,
    compaction=CompactionOptions(l0_compaction_trigger=2, l1_max_bytes=32 * 1024, target_file_bytes=8 * 1024),
)


async def main(directory: str, seed: int) -> None:
    rng = random.Random(seed)
    out = sys.stdout
    async with open_store(directory, OPTIONS) as store:
        out.write("ready\n")
        out.flush()
        step = 0
        while True:
            step += 1
            roll = rng.random()
            key = f"k{rng.randrange(300):03d}"
            if roll < 0.6:
                op: list = ["put", key, f"s{seed}-{step}-" + "x" * rng.randrange(200)]
            elif roll < 0.8:
                op = ["del", key]
            else:
                op = [
                    "batch",
                    [
                        [f"k{rng.randrange(300):03d}", None if rng.random() < 0.3 else f"b{seed}-{step}-{i}"]
                        for i in range(rng.randrange(1, 10))
                    ],
                ]
            out.write("begin " + json.dumps(op) + "\n")
            out.flush()
            if op[0] == "put":
                await store.put(op[1].encode(), op[2].encode())
            elif op[0] == "del":
                await store.delete(op[1].encode())
            else:
                await store.write([(k.encode(), None if v is None else v.encode()) for k, v in op[1]])
            out.write("ack\n")
            out.flush()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
