"""A streaming (follow-mode) Consume over raw grpclib, in its own process; the bad-input test
SIGKILLs it mid-stream to check the broker cleans up after a client that vanishes.

    python stream_child.py HOST PORT TOPIC

Prints {"received": <bytes of record batches so far>} after every response; runs until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys

from grpclib.client import Channel

from sentinel.generated.sentinel import v1 as pb


async def main(host: str, port: int, topic: str) -> None:
    channel = Channel(host, port)
    stub = pb.SentinelStub(channel)
    received = 0
    request = pb.ConsumeRequest(topic=topic, partition=0, offset=0, max_bytes=1024, follow=True)
    async for response in stub.consume(request):
        received += len(response.record_batches)
        print(json.dumps({"received": received}), flush=True)
    print(json.dumps({"ended": True}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
