"""The Sentinel gRPC service: grpclib handlers (asyncio side) that forward to Trio.

Each unary RPC is one portal call into :class:`~sentinel.server.handlers.Handlers`, which
runs as a Trio task; a client that vanishes cancels that task. Produce, the hot path, is
forwarded to its partition replica without a task (``TrioPortal.forward``): a client that
vanishes abandons the answer, and the batches are appended or not as if it had stayed.
The streaming ``Consume`` is a loop of long-polled fetches: the next fetch starts only
after the previous response was handed to HTTP/2, so a slow consumer's flow-control
window stops the loop (the broker never buffers ahead of what the client reads). Errors
become gRPC statuses in one place, :func:`sentinel.server.status.status_of`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from grpclib import GRPCError

from sentinel.generated.sentinel import v1 as pb
from sentinel.server.bridge import TrioPortal
from sentinel.server.handlers import Handlers, ProduceNeedsTask
from sentinel.server.status import status_of

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long one streaming-consume step long-polls when the client set no max wait: short
# enough that a stream notices a deleted topic or a shutdown promptly.
STREAM_POLL_MS = 500


class SentinelService(pb.SentinelBase):
    def __init__(
        self,
        portal: TrioPortal,
        handlers: Handlers,
        *,
        on_request: Callable[[str, str], None] | None = None,
    ) -> None:
        self._portal = portal
        self._handlers = handlers
        # Told (handler name, status name) once per handler call: the requests metric.
        self._on_request = on_request

    async def _call(self, fn: Callable[[Any], Awaitable[T]], request: Any) -> T:
        try:
            result = await self._portal.call(fn, request)
        except GRPCError as exc:
            self._count(fn, exc.status.name)
            raise
        except Exception as exc:
            raise self._failed(fn, exc) from None
        self._count(fn, "OK")
        return result

    def _failed(self, fn: Callable[..., Any], exc: Exception) -> GRPCError:
        status = status_of(exc)
        self._count(fn, status.status.name)
        if not status.expected:
            log.error("RPC handler %s failed", getattr(fn, "__name__", fn), exc_info=exc)
        return GRPCError(status.status, status.message, dict(status.metadata) or None)

    def _count(self, fn: Callable[..., Any], status: str) -> None:
        if self._on_request is not None:
            self._on_request(getattr(fn, "__name__", "unknown"), status)

    async def produce(self, message: pb.ProduceRequest) -> pb.ProduceResponse:
        # The fast path: the request goes straight to its partition replica and the replica's
        # answer straight back (TrioPortal.forward), with no Trio task in between; what it
        # cannot serve (a topic to create, a partition to pick) takes the task path.
        handlers = self._handlers
        started = time.perf_counter()
        try:
            result = await self._portal.forward(handlers.produce_nowait, message)
        except ProduceNeedsTask:
            return await self._call(handlers.produce, message)
        except GRPCError as exc:
            self._count(handlers.produce, exc.status.name)
            raise
        except Exception as exc:
            raise self._failed(handlers.produce, exc) from None
        self._count(handlers.produce, "OK")
        return handlers.produce_response(message, message.partition, result, started)

    async def fetch(self, message: pb.ConsumeRequest) -> pb.ConsumeResponse:
        return await self._call(self._handlers.fetch, message)

    async def consume(self, message: pb.ConsumeRequest) -> AsyncIterator[pb.ConsumeResponse]:
        request = pb.ConsumeRequest(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            max_bytes=message.max_bytes,
            max_wait_ms=message.max_wait_ms or STREAM_POLL_MS,
            follow=message.follow,
        )
        while True:
            response = await self._call(self._handlers.fetch, request)
            if response.record_batches or not message.follow:
                yield response  # waits here while the client's flow-control window is full
            if not message.follow:
                return
            request.offset = response.next_offset

    async def fetch_metadata(self, message: pb.MetadataRequest) -> pb.MetadataResponse:
        return await self._call(self._handlers.fetch_metadata, message)

    async def list_offsets(self, message: pb.ListOffsetsRequest) -> pb.ListOffsetsResponse:
        return await self._call(self._handlers.list_offsets, message)

    async def create_topic(self, message: pb.CreateTopicRequest) -> pb.CreateTopicResponse:
        return await self._call(self._handlers.create_topic, message)

    async def delete_topic(self, message: pb.DeleteTopicRequest) -> pb.DeleteTopicResponse:
        return await self._call(self._handlers.delete_topic, message)

    async def list_topics(self, message: pb.ListTopicsRequest) -> pb.ListTopicsResponse:
        return await self._call(self._handlers.list_topics, message)

    async def describe_topic(self, message: pb.DescribeTopicRequest) -> pb.TopicDescription:
        return await self._call(self._handlers.describe_topic, message)

    async def join_group(self, message: pb.JoinGroupRequest) -> pb.JoinGroupResponse:
        return await self._call(self._handlers.join_group, message)

    async def heartbeat(self, message: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        return await self._call(self._handlers.heartbeat, message)

    async def leave_group(self, message: pb.LeaveGroupRequest) -> pb.LeaveGroupResponse:
        return await self._call(self._handlers.leave_group, message)

    async def commit_offsets(self, message: pb.CommitOffsetsRequest) -> pb.CommitOffsetsResponse:
        return await self._call(self._handlers.commit_offsets, message)

    async def fetch_offsets(self, message: pb.FetchOffsetsRequest) -> pb.FetchOffsetsResponse:
        return await self._call(self._handlers.fetch_offsets, message)

    async def list_groups(self, message: pb.ListGroupsRequest) -> pb.ListGroupsResponse:
        return await self._call(self._handlers.list_groups, message)

    async def describe_group(self, message: pb.DescribeGroupRequest) -> pb.GroupDescription:
        return await self._call(self._handlers.describe_group, message)

    async def cluster_status(self, message: pb.ClusterStatusRequest) -> pb.ClusterStatusResponse:
        return await self._call(self._handlers.cluster_status, message)

    async def transfer_leader(self, message: pb.TransferLeaderRequest) -> pb.TransferLeaderResponse:
        return await self._call(self._handlers.transfer_leader, message)

    async def init_producer_id(self, message: pb.InitProducerIdRequest) -> pb.InitProducerIdResponse:
        return await self._call(self._handlers.init_producer_id, message)
