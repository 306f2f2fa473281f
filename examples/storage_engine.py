"""Use Sentinel's LSM storage engine directly: atomic write batches, reads, scans, reopen.

    python examples/storage_engine.py [DATA_DIR]

The broker stores partition logs, topic metadata and consumer offsets through exactly this
API; here it is on its own. Run it twice: the second run finds the first run's data.
"""

from __future__ import annotations

import sys
import tempfile

import trio

from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.store import open_store


async def main(directory: str) -> None:
    async with open_store(directory, StorageOptions(sync=SyncMode.ALWAYS)) as store:
        for line in store.recovery_report:
            print("recovery:", line)
        runs = int(store.get(b"meta:runs") or b"0") + 1
        # One atomic batch: a reader sees all of it or none of it, and it is acknowledged
        # only once fsynced (sync=always).
        await store.write(
            [
                (b"meta:runs", str(runs).encode()),
                (f"run:{runs:04d}".encode(), b"hello from run %d" % runs),
            ]
        )
        if runs > 2:
            await store.delete(f"run:{runs - 2:04d}".encode())  # tombstones hide older values
        print(f"run {runs}; live runs:")
        for key, value in store.scan(b"run:", b"run;"):
            print(f"  {key.decode()} = {value.decode()}")
        await store.flush()  # memtable -> L0 SSTable (normally automatic at 8 MiB)
        stats = store.statistics()
        print(f"tables per level: {stats.tables_per_level}, WAL fsyncs: {stats.wal.fsyncs}")


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="sentinel-example-"))
