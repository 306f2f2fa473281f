"""The floor of one gRPC call on this machine: grpclib and h2 with nothing of Sentinel's.

``sentinel bench roundtrip`` reports it as the HTTP/2 + gRPC layer: a bare grpclib server
(its own process, the default asyncio loop, as the broker's gRPC thread runs) answers a
unary method whose messages are raw bytes (no protobuf), and a bare grpclib client (its own
process) calls it with one call in flight. The request and the answer are the sizes of a
produce of one 100-byte record and of its answer. Each side reports its CPU per call, so the
round trip of the real path can be read against what HTTP/2 and gRPC alone cost here.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import grpclib.const
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.server import Server, Stream

from sentinel.bench.workers import emit_event, timed_calls

METHOD = "/sentinel.bench.Floor/Echo"
# A ProduceRequest of one 100-byte record (topic, partition, acks, timeout and a RecordBatch
# of 170 bytes) and its ProduceResponse, in bytes (measured with the generated classes).
REQUEST_BYTES = 201
RESPONSE_BYTES = 32


class Raw:
    """A message that is its bytes: grpclib's codec calls these two methods."""

    __slots__ = ("data",)

    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    @classmethod
    def FromString(cls, data: bytes) -> Raw:  # grpclib's codec calls it so
        return cls(data)

    def SerializeToString(self) -> bytes:  # grpclib's codec calls it so
        return self.data


class _Echo:
    """Answers every call with RESPONSE_BYTES; after ``warmup`` calls starts counting CPU,
    and after ``warmup + calls`` sets ``done``."""

    def __init__(self, calls: int, warmup: int) -> None:
        self.calls, self.warmup = calls, warmup
        self.seen = 0
        self.cpu_started = 0.0
        self.cpu = 0.0
        self.done = asyncio.Event()
        self._answer = Raw(bytes(RESPONSE_BYTES))

    async def echo(self, stream: Stream[Raw, Raw]) -> None:
        await stream.recv_message()
        await stream.send_message(self._answer)
        self.seen += 1
        if self.seen == self.warmup:
            self.cpu_started = time.process_time()
        elif self.seen == self.warmup + self.calls:
            self.cpu = time.process_time() - self.cpu_started
            self.done.set()

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {METHOD: grpclib.const.Handler(self.echo, grpclib.const.Cardinality.UNARY_UNARY, Raw, Raw)}


def listening_socket() -> socket.socket:
    """A TCP socket bound to a free loopback port, for the server. IPPROTO_TCP is named:
    grpclib sets TCP_NODELAY only on connections whose socket says TCP, and with proto 0
    every answer waited on Nagle's algorithm and the client's delayed ACK (44 ms a call)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    return listener


async def serve(p: dict[str, Any]) -> dict[str, Any]:
    """The server role: listen on a free port (announced as ``{"event": "listening"}``),
    answer ``warmup + calls`` calls, report CPU per measured call."""
    echo = _Echo(p["calls"], p["warmup"])
    server = Server([echo])
    listener = listening_socket()
    await server.start(sock=listener)
    emit_event("listening", port=listener.getsockname()[1])
    try:
        await echo.done.wait()
    finally:
        server.close()
        await server.wait_closed()
    return {"server_cpu_us": round(echo.cpu / p["calls"] * 1e6, 1)}


async def call(p: dict[str, Any]) -> dict[str, Any]:
    """The client role: ``warmup + calls`` sequential calls; latency and CPU per call."""
    channel = Channel("127.0.0.1", p["port"])
    try:
        method: UnaryUnaryMethod[Raw, Raw] = UnaryUnaryMethod(channel, METHOD, Raw, Raw)
        request = Raw(bytes(REQUEST_BYTES))
        latency_us, cpu_us = await timed_calls(lambda: method(request), p["calls"], p["warmup"])
    finally:
        channel.close()
    return {"latency_us": latency_us, "client_cpu_us": cpu_us}
