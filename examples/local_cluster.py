"""Start a three-node Sentinel cluster on this machine and keep it running until Ctrl-C.

    python examples/local_cluster.py [--dir sentinel-cluster] [--sync interval]

Each node is a ``sentinel run`` process with its own data directory under ``--dir`` and
ports picked at start; they know each other through ``--peers``. The script prints the
bootstrap address list to give every client command, e.g.::

    sentinel topics create orders --partitions 3 --replication-factor 3 --broker <bootstrap>
    sentinel produce --topic orders --message hi --count 10 --broker <bootstrap>
    sentinel cluster status --broker <bootstrap>

Kill a node (its pid is printed) and watch `cluster status` move its leaderships; Ctrl-C
stops the whole cluster gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

from sentinel.client import Admin
from sentinel.cluster.local import LocalCluster


async def wait_registered(bootstrap: str, size: int) -> None:
    """Until every node has registered with the controller (so topics can use them all)."""
    deadline = time.monotonic() + 30.0
    async with Admin(bootstrap) as admin:
        while True:
            try:
                if len((await admin.fetch_metadata()).brokers) >= size:
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("error: the cluster did not form in time")
            await asyncio.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="sentinel-cluster", help="parent of the nodes' data directories")
    parser.add_argument("--sync", default="interval", choices=["always", "interval", "none"])
    args = parser.parse_args()
    cluster = LocalCluster(3, args.dir, sync=args.sync)
    cluster.start()
    try:
        asyncio.run(wait_registered(cluster.bootstrap, 3))
        for node in cluster.nodes.values():
            pid = node.process.pid if node.process else "?"
            print(f"node {node.node_id}: pid {pid}, {node.address}, data {node.data}")
        print(f"bootstrap: {cluster.bootstrap}")
        print("Ctrl-C stops the cluster", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping...", file=sys.stderr)
        cluster.stop()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    main()
