"""Consumer-group membership: JoinGroup, the heartbeat task, LeaveGroup.

This object owns the member id, the generation and the "must re-join" flag. It never
touches the consumer's assignment or positions: the consumer runs a rebalance (commit,
revoke, join, assign) inside ``getmany`` when it sees ``rejoin_needed``, on the
application's task, so listener callbacks never race with record processing. The heartbeat
task only keeps the session alive and raises the flag (and wakes the consumer) when the
coordinator says the group rebalanced.

JoinGroup is a long poll: the coordinator may hold it until every member has re-joined, so
its timeout is the session timeout plus the request timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from sentinel.client.connection import COORDINATOR_WAIT_S, Cluster, with_retries
from sentinel.client.convert import topic_partitions
from sentinel.client.errors import RETRIABLE_ERRORS
from sentinel.client.reachability import Reachability
from sentinel.client.types import TopicPartition
from sentinel.errors import FailedPrecondition, NotFound, SentinelError
from sentinel.generated.sentinel import v1 as pb

logger = logging.getLogger(__name__)

NO_GENERATION = -1


class GroupMembership:
    """One consumer's membership of one group."""

    def __init__(
        self,
        cluster: Cluster,
        group_id: str,
        *,
        client_id: str,
        session_timeout_ms: int,
        heartbeat_interval_ms: int,
        retries: int,
        backoff_s: float,
        on_rejoin_needed: Callable[[], None],
        reachability: Reachability | None = None,
    ) -> None:
        self.group_id = group_id
        self.member_id = ""
        self.generation = NO_GENERATION
        self.rejoin_needed = True
        self._cluster = cluster
        self._client_id = client_id
        self._session_timeout_ms = session_timeout_ms
        self._heartbeat_interval_s = heartbeat_interval_ms / 1000
        self._retries = retries
        self._backoff_s = backoff_s
        self._on_rejoin_needed = on_rejoin_needed
        self._reachability = reachability if reachability is not None else Reachability(threshold=retries + 1)
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def joined(self) -> bool:
        """True once a JoinGroup succeeded (until leave): the member has had an assignment."""
        return self.generation != NO_GENERATION

    def request_rejoin(self) -> None:
        if not self.rejoin_needed:
            self.rejoin_needed = True
        self._on_rejoin_needed()

    async def join(self, topics: Sequence[str]) -> tuple[TopicPartition, ...]:
        """Join (or re-join) with ``topics``; returns this member's assignment."""
        self.stop_heartbeats()
        unknown_member_retried = False

        async def attempt() -> pb.JoinGroupResponse:
            nonlocal unknown_member_retried
            while True:
                self.rejoin_needed = False
                request = pb.JoinGroupRequest(
                    group_id=self.group_id,
                    member_id=self.member_id,
                    topics=list(topics),
                    session_timeout_ms=self._session_timeout_ms,
                    client_id=self._client_id,
                )
                timeout = self._session_timeout_ms / 1000 + self._cluster.request_timeout_s
                try:
                    with (
                        self._cluster.to_coordinator() as conn,
                        self._reachability.watch(conn.address),
                        conn.errors,
                    ):
                        return await conn.stub.join_group(request, timeout=timeout)
                except NotFound:
                    # The coordinator forgot our member id (session expired): join as new.
                    if not self.member_id or unknown_member_retried:
                        self.rejoin_needed = True
                        raise
                    unknown_member_retried = True
                    self.member_id = ""
                except BaseException:
                    self.rejoin_needed = True
                    raise

        response = await with_retries(
            attempt, retries=self._retries, backoff_s=self._backoff_s, at_least_s=COORDINATOR_WAIT_S
        )
        self.member_id = response.member_id
        self.generation = response.generation
        interval_s = (
            response.heartbeat_interval_ms / 1000
            if response.heartbeat_interval_ms
            else self._heartbeat_interval_s
        )
        self._heartbeat = asyncio.get_running_loop().create_task(
            self._heartbeat_loop(interval_s), name=f"heartbeat {self.group_id}"
        )
        return topic_partitions(response.assignment)

    async def _heartbeat_loop(self, interval_s: float) -> None:
        request = pb.HeartbeatRequest(
            group_id=self.group_id, member_id=self.member_id, generation=self.generation
        )
        while True:
            await asyncio.sleep(interval_s)
            try:
                with (
                    self._cluster.to_coordinator() as conn,
                    self._reachability.watch(conn.address),
                    conn.errors,
                ):
                    response = await conn.stub.heartbeat(request, timeout=self._cluster.request_timeout_s)
            except FailedPrecondition:  # our generation is stale
                self.request_rejoin()
                continue
            except NotFound:  # our session expired: we are no longer a member
                self.member_id = ""
                self.request_rejoin()
                return
            except RETRIABLE_ERRORS as exc:
                logger.debug("heartbeat of group %s failed, will retry: %s", self.group_id, exc)
                continue
            except SentinelError as exc:
                logger.warning("heartbeat of group %s failed: %s; re-joining", self.group_id, exc)
                self.request_rejoin()
                continue
            if response.rebalance_needed or (
                response.generation > 0 and response.generation != self.generation
            ):
                self.request_rejoin()

    def stop_heartbeats(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    async def leave(self) -> None:
        """Leave the group (the coordinator rebalances the others at once). Best effort."""
        self.stop_heartbeats()
        member_id, self.member_id, self.generation = self.member_id, "", NO_GENERATION
        self.rejoin_needed = True
        if not member_id:
            return
        try:
            with self._cluster.to_coordinator() as conn, self._reachability.watch(conn.address), conn.errors:
                await conn.stub.leave_group(
                    pb.LeaveGroupRequest(group_id=self.group_id, member_id=member_id),
                    timeout=self._cluster.request_timeout_s,
                )
        except FailedPrecondition as exc:
            # An unknown member: its session expired, so it has left already.
            logger.debug("leaving group %s: %s", self.group_id, exc)
        except SentinelError as exc:
            # The session times out on the coordinator anyway; only the rebalance is slower.
            logger.warning("leaving group %s failed: %s", self.group_id, exc)
