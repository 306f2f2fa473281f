"""The actor toolkit: request/reply, back-pressure, cancellation, crash propagation.

Every test runs on Trio's MockClock with autojump, so "time passes" only when every task
is blocked: ordering is checked with a ``record`` list, never with sleeps and hope.
"""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from sentinel.actors import Actor, Reply, Request
from sentinel.errors import ActorClosed, InvalidArgument, MailboxFull


@attrs.define(slots=True, eq=False)
class Add(Request[int]):
    amount: int


@attrs.define(slots=True, eq=False)
class Slow(Request[str]):
    seconds: float


@attrs.frozen
class Note:
    text: str


class Counter(Actor[object]):
    """A tiny actor: owns a total; notes go to a shared record list."""

    def __init__(self, record: list[str], *, capacity: float = 4) -> None:
        super().__init__("counter", mailbox_capacity=capacity)
        self.total = 0
        self.record = record

    async def on_start(self) -> None:
        await trio.sleep(1)  # e.g. recovery: callers must not see the actor before this
        self.record.append("started")

    async def on_stop(self) -> None:
        self.record.append("stopped")

    async def handle(self, message: object) -> None:
        if isinstance(message, Add):
            if message.amount < 0:
                message.reply.fail(InvalidArgument("amount must be >= 0"))
                return
            self.total += message.amount
            message.reply.set(self.total)
        elif isinstance(message, Slow):
            await trio.sleep(message.seconds)
            self.record.append(f"slow done {message.seconds}")
            message.reply.set("done")
        elif isinstance(message, Note):
            if message.text == "boom":
                raise RuntimeError("handler bug")
            self.record.append(message.text)


async def test_start_is_ordered_and_call_returns_reply(autojump_clock: trio.testing.MockClock) -> None:
    record: list[str] = []
    async with trio.open_nursery() as nursery:
        actor = Counter(record)
        started = await nursery.start(actor.run)
        assert started is actor
        assert record == ["started"]
        assert trio.current_time() == 1
        assert await actor.call(Add(amount=2)) == 2
        assert await actor.call(Add(amount=3)) == 5
        actor.close()
    assert record == ["started", "stopped"]


async def test_call_sends_when_called_and_the_awaitable_waits_for_the_reply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    record: list[str] = []
    async with trio.open_nursery() as nursery:
        actor = Counter(record, capacity=2)
        await nursery.start(actor.run)
        first = actor.call(Add(amount=2))  # sent now, before any await
        second = actor.call(Add(amount=3))
        assert await second == 5  # the first was sent (and so served) before the second
        assert await first == 2
        # A full mailbox: the call waits for room, then for its reply.
        actor.cast_nowait(Note("a"))
        actor.cast_nowait(Note("b"))
        assert await actor.call(Add(amount=1)) == 6
        assert record == ["started", "a", "b"]
        actor.close()
        with pytest.raises(ActorClosed, match="counter is not running"):
            actor.call(Add(amount=1))  # raised by the call itself, as by its await before


async def test_request_error_goes_to_caller_and_actor_keeps_serving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        actor = Counter([])
        await nursery.start(actor.run)
        with pytest.raises(InvalidArgument, match="amount must be >= 0"):
            await actor.call(Add(amount=-1))
        assert await actor.call(Add(amount=7)) == 7
        actor.close()


async def test_full_mailbox_blocks_sender_until_actor_catches_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    record: list[str] = []
    async with trio.open_nursery() as nursery:
        actor = Counter(record, capacity=1)
        await nursery.start(actor.run)
        # The actor is busy for 10 s; one message fits in the mailbox; the next send blocks.
        nursery.start_soon(actor.call, Slow(seconds=10))
        await trio.testing.wait_all_tasks_blocked()
        await actor.cast(Note("queued"))
        with pytest.raises(MailboxFull):
            actor.cast_nowait(Note("refused"))
        sent_at: list[float] = []

        async def blocked_sender() -> None:
            await actor.cast(Note("after back-pressure"))
            sent_at.append(trio.current_time())

        nursery.start_soon(blocked_sender)
        await trio.testing.wait_all_tasks_blocked()
        assert sent_at == []  # still blocked: the mailbox is full
        await trio.sleep(20)
        assert sent_at == [11.0]  # released exactly when the slow request finished
        actor.close()
    assert record == ["started", "slow done 10", "queued", "after back-pressure", "stopped"]


async def test_cancelled_caller_abandons_reply_not_actor(autojump_clock: trio.testing.MockClock) -> None:
    record: list[str] = []
    async with trio.open_nursery() as nursery:
        actor = Counter(record)
        await nursery.start(actor.run)
        with trio.move_on_after(3) as scope:
            await actor.call(Slow(seconds=5))
        assert scope.cancelled_caught
        # The actor finishes the abandoned request and keeps serving; its late answer is dropped.
        assert await actor.call(Add(amount=1)) == 1
        assert record == ["started", "slow done 5"]
        actor.close()


async def test_cancelling_actor_fails_queued_and_in_flight_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    results: list[str] = []
    actor = Counter([])

    async def caller(request: Request[object]) -> None:
        try:
            await actor.call(request)
            results.append("answered")
        except ActorClosed as exc:
            results.append(f"closed: {exc}")

    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as actor_nursery:
            await actor_nursery.start(actor.run)
            outer.start_soon(caller, Slow(seconds=100))
            await trio.testing.wait_all_tasks_blocked()  # Slow is in flight...
            outer.start_soon(caller, Add(amount=1))  # ...and Add waits in the mailbox
            await trio.testing.wait_all_tasks_blocked()
            actor_nursery.cancel_scope.cancel()
    assert results == ["closed: counter stopped before answering"] * 2
    with pytest.raises(ActorClosed, match="counter is not running"):
        await actor.call(Add(amount=1))


async def test_close_drains_queued_messages_then_refuses(autojump_clock: trio.testing.MockClock) -> None:
    record: list[str] = []
    async with trio.open_nursery() as nursery:
        actor = Counter(record)
        await nursery.start(actor.run)
        actor.cast_nowait(Note("a"))
        actor.cast_nowait(Note("b"))
        actor.close()
        with pytest.raises(ActorClosed):
            actor.cast_nowait(Note("c"))
    assert record == ["started", "a", "b", "stopped"]


async def test_actor_crash_cancels_siblings_and_propagates(autojump_clock: trio.testing.MockClock) -> None:
    record: list[str] = []

    async def sibling() -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            record.append("sibling cancelled")
            raise

    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="handler bug")):
        async with trio.open_nursery() as nursery:
            actor = Counter(record)
            await nursery.start(actor.run)
            nursery.start_soon(sibling)
            await trio.testing.wait_all_tasks_blocked()
            await actor.cast(Note("boom"))
    assert record == ["started", "sibling cancelled"]
    assert actor.statistics().closed


async def test_startup_failure_propagates_to_starter(autojump_clock: trio.testing.MockClock) -> None:
    class Broken(Counter):
        async def on_start(self) -> None:
            raise OSError("cannot open data directory")

    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="cannot open data directory")):
        async with trio.open_nursery() as nursery:
            await nursery.start(Broken([]).run)


async def test_receive_batch_takes_everything_queued(autojump_clock: trio.testing.MockClock) -> None:
    batches: list[list[int]] = []

    class Batcher(Actor[int]):
        async def serve(self) -> None:
            while batch := await self.receive_batch(limit=3):
                batches.append(batch)
                await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        actor = Batcher("batcher", mailbox_capacity=10)
        await nursery.start(actor.run)
        actor.cast_nowait(0)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(1, 6):
            actor.cast_nowait(i)
        actor.close()
    assert batches == [[0], [1, 2, 3], [4, 5]]


async def test_reply_first_answer_wins_and_single_waiter() -> None:
    reply: Reply[int] = Reply()
    reply.set(1)
    reply.fail(RuntimeError("late"))
    reply.set(2)
    assert reply.done
    assert await reply.wait() == 1


async def test_statistics_report_queue(autojump_clock: trio.testing.MockClock) -> None:
    actor = Counter([], capacity=8)
    actor.cast_nowait(Note("x"))
    actor.cast_nowait(Note("y"))
    stats = actor.statistics()
    assert (stats.name, stats.queued, stats.capacity, stats.closed) == ("counter", 2, 8, False)
