"""The Trio <-> asyncio bridge: calls both ways, errors, cancellation both ways, shutdown.

Threads and a real asyncio loop are involved, so the clock is real; ``fail_after`` is only a
safety net. Every wait is on an event the other side sets.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio

from sentinel.actors import Actor, Request
from sentinel.errors import ActorClosed, MailboxFull, NotFound, Unavailable
from sentinel.server.bridge import AsyncioThread, TrioPortal

SAFETY = 10  # seconds: only reached when something is broken


@pytest.fixture
async def bridge(nursery: trio.Nursery) -> AsyncIterator[AsyncioThread]:
    thread: AsyncioThread = await nursery.start(AsyncioThread("test-bridge").run)
    yield thread


async def test_run_asyncio_runs_on_the_loop_in_another_thread(bridge: AsyncioThread) -> None:
    async def where() -> tuple[int, bool]:
        return threading.get_ident(), asyncio.get_running_loop().is_running()

    ident, running = await bridge.run_asyncio(where)
    assert running
    assert ident != threading.get_ident()
    assert bridge.running


async def test_run_asyncio_reraises_the_coroutine_exception(bridge: AsyncioThread) -> None:
    async def fail() -> None:
        raise NotFound("topic 'x' does not exist")

    with pytest.raises(NotFound, match=r"^topic 'x' does not exist$"):
        await bridge.run_asyncio(fail)


async def test_run_asyncio_with_a_non_coroutine_function_raises_its_error(bridge: AsyncioThread) -> None:
    def not_async() -> None:
        raise ValueError("not a coroutine function")

    with pytest.raises(ValueError, match="not a coroutine function"):
        await bridge.run_asyncio(not_async)  # type: ignore[arg-type]


async def test_portal_call_runs_in_a_trio_task(bridge: AsyncioThread) -> None:
    trio_thread = threading.get_ident()

    async def double(x: int) -> tuple[int, bool, bool]:
        await trio.lowlevel.checkpoint()
        return x * 2, threading.get_ident() == trio_thread, trio.lowlevel.current_task() is not None

    async def from_asyncio() -> Any:
        return await bridge.portal.call(double, 21)

    assert await bridge.run_asyncio(from_asyncio) == (42, True, True)


async def test_portal_call_reraises_the_trio_exception_unchanged(bridge: AsyncioThread) -> None:
    error = NotFound("topic 'orders' does not exist")

    async def fail() -> None:
        await trio.lowlevel.checkpoint()
        raise error

    async def from_asyncio() -> BaseException | None:
        try:
            await bridge.portal.call(fail)
        except NotFound as exc:
            return exc
        return None

    assert await bridge.run_asyncio(from_asyncio) is error


async def test_cancelled_asyncio_caller_cancels_the_trio_task(bridge: AsyncioThread) -> None:
    entered = trio.Event()
    trio_cancelled = trio.Event()
    tasks: dict[str, asyncio.Task[Any]] = {}

    async def wait_forever() -> None:
        entered.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            trio_cancelled.set()
            raise

    async def start_call() -> None:
        tasks["call"] = asyncio.get_running_loop().create_task(bridge.portal.call(wait_forever))

    async def cancel_call() -> bool:
        task = tasks["call"]
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    with trio.fail_after(SAFETY):
        await bridge.run_asyncio(start_call)
        await entered.wait()
        assert await bridge.run_asyncio(cancel_call)
        await trio_cancelled.wait()


async def test_cancelled_trio_caller_cancels_the_asyncio_task_and_waits_for_it(bridge: AsyncioThread) -> None:
    record: list[str] = []
    entered = trio.Event()

    async def slow() -> None:
        bridge.portal.call_soon(entered.set)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            record.append("cancelled")
            await asyncio.sleep(0)  # cleanup that itself awaits
            record.append("cleaned up")
            raise

    with trio.fail_after(SAFETY):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bridge.run_asyncio, slow)
                await entered.wait()
                scope.cancel()
        assert scope.cancelled_caught
    # run_asyncio returned only after the asyncio task finished its cleanup.
    assert record == ["cancelled", "cleaned up"]


async def test_asyncio_task_that_swallows_cancellation_returns_its_value(bridge: AsyncioThread) -> None:
    entered = trio.Event()

    async def stubborn() -> str:
        bridge.portal.call_soon(entered.set)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "finished anyway"
        return "unreachable"

    with trio.fail_after(SAFETY):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                results: list[str] = []

                async def call() -> None:
                    results.append(await bridge.run_asyncio(stubborn))

                nursery.start_soon(call)
                await entered.wait()
                scope.cancel()
    assert results == ["finished anyway"]


async def test_call_sync_runs_on_the_trio_thread(bridge: AsyncioThread) -> None:
    trio_thread = threading.get_ident()

    def where(x: int) -> tuple[int, bool]:
        return x + 1, threading.get_ident() == trio_thread

    def fail() -> None:
        raise NotFound("nope")

    async def from_asyncio() -> Any:
        value = await bridge.portal.call_sync(where, 1)
        try:
            await bridge.portal.call_sync(fail)
        except NotFound as exc:
            return value, str(exc)
        return value, None

    assert await bridge.run_asyncio(from_asyncio) == ((2, True), "nope")


async def test_offer_maps_full_and_closed_channels(bridge: AsyncioThread) -> None:
    send, receive = trio.open_memory_channel[int](1)

    async def offer_three() -> list[str]:
        outcomes = []
        for value in (1, 2):
            try:
                await bridge.portal.offer(send, value)
                outcomes.append("sent")
            except Unavailable as exc:
                outcomes.append(f"Unavailable: {exc}")
        await bridge.portal.call_sync(send.close)
        try:
            await bridge.portal.offer(send, 3)
        except Unavailable as exc:
            outcomes.append(f"Unavailable: {exc}")
        return outcomes

    assert await bridge.run_asyncio(offer_three) == [
        "sent",
        "Unavailable: the broker is busy: the receiving mailbox is full",
        "Unavailable: the receiving mailbox is closed",
    ]
    assert receive.receive_nowait() == 1


@attrs.define(slots=True, eq=False)
class Echo(Request[int]):
    value: int


class EchoActor(Actor[Echo]):
    async def handle(self, message: Echo) -> None:
        if message.value < 0:
            message.reply.fail(NotFound(f"no {message.value}"))
        else:
            message.reply.set(message.value * 10)


async def test_ask_round_trip_through_an_actor_mailbox(bridge: AsyncioThread, nursery: trio.Nursery) -> None:
    actor = EchoActor("echo")
    await nursery.start(actor.run)

    async def ask() -> Any:
        value = await bridge.portal.ask(actor, Echo(4))
        try:
            await bridge.portal.ask(actor, Echo(-1))
        except NotFound as exc:
            return value, str(exc)
        return value, None

    assert await bridge.run_asyncio(ask) == (40, "no -1")


async def test_forward_routes_on_the_trio_thread_and_the_actor_answers(
    bridge: AsyncioThread, nursery: trio.Nursery
) -> None:
    actor = EchoActor("echo")
    await nursery.start(actor.run)
    trio_thread = threading.get_ident()
    routed_on: list[int] = []

    def route(reply: Any, value: int) -> None:
        routed_on.append(threading.get_ident())
        if value == 0:
            raise NotFound("nothing to route 0 to")
        actor.cast_nowait(Echo(value, reply=reply))

    async def forward() -> Any:
        answers: list[Any] = [await bridge.portal.forward(route, 4)]
        for value in (-1, 0):  # the actor's error, then the routing function's own
            try:
                await bridge.portal.forward(route, value)
            except NotFound as exc:
                answers.append(str(exc))
        return answers

    assert await bridge.run_asyncio(forward) == [40, "no -1", "nothing to route 0 to"]
    assert routed_on == [trio_thread] * 3
    assert bridge.portal.calls_running == 0  # no Trio task was involved


async def test_ask_full_mailbox_and_closed_actor(bridge: AsyncioThread) -> None:
    actor = EchoActor("echo", mailbox_capacity=1)  # never started: nothing drains the mailbox

    async def ask() -> list[str]:
        outcomes = []
        first = asyncio.get_running_loop().create_task(bridge.portal.ask(actor, Echo(1)))
        await asyncio.sleep(0)  # `first` hands its request to Trio before the next one
        try:
            await bridge.portal.ask(actor, Echo(2))
        except MailboxFull as exc:
            outcomes.append(f"MailboxFull: {exc}")
        await bridge.portal.call_sync(actor.close)
        try:
            await bridge.portal.ask(actor, Echo(3))
        except ActorClosed as exc:
            outcomes.append(f"ActorClosed: {exc}")
        first.cancel()
        return outcomes

    assert await bridge.run_asyncio(ask) == [
        "MailboxFull: echo mailbox is full",
        "ActorClosed: echo is not running",
    ]


async def test_call_soon_logs_a_failing_callback_instead_of_crashing_trio(
    bridge: AsyncioThread, caplog: pytest.LogCaptureFixture
) -> None:
    done = trio.Event()

    def boom() -> None:
        raise RuntimeError("callback bug")

    async def schedule() -> None:
        bridge.portal.call_soon(boom)
        bridge.portal.call_soon(done.set)  # runs after boom: in order

    with trio.fail_after(SAFETY):
        await bridge.run_asyncio(schedule)
        await done.wait()
    [record] = [r for r in caplog.records if r.name == "sentinel.server.bridge"]
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith("callback <function")
    assert record.exc_info is not None and str(record.exc_info[1]) == "callback bug"


async def test_stopping_cancels_both_sides_and_closes_the_loop() -> None:
    thread = AsyncioThread("stopping")
    trio_cancelled = trio.Event()
    asyncio_cancelled: list[bool] = []
    trio_entered = trio.Event()
    asyncio_entered = trio.Event()
    caller_saw: list[BaseException] = []

    async def trio_side() -> None:
        trio_entered.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            trio_cancelled.set()
            raise

    async def asyncio_side() -> None:
        loops.append(asyncio.get_running_loop())
        asyncio.get_running_loop().create_task(thread.portal.call(trio_side))
        thread.portal.call_soon(asyncio_entered.set)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            asyncio_cancelled.append(True)
            raise

    async def caller() -> None:
        try:
            await thread.run_asyncio(asyncio_side)
        except Unavailable as exc:
            caller_saw.append(exc)

    loops: list[asyncio.AbstractEventLoop] = []
    with trio.fail_after(SAFETY):
        async with trio.open_nursery() as outer:
            with trio.CancelScope() as bridge_scope:
                async with trio.open_nursery() as inner:
                    await inner.start(thread.run)
                    # The caller lives outside the bridge's scope: it is not cancelled itself,
                    # it learns that the loop went away.
                    outer.start_soon(caller)
                    await trio_entered.wait()
                    await asyncio_entered.wait()
                    bridge_scope.cancel()
        await trio_cancelled.wait()
    assert asyncio_cancelled == [True]
    assert [str(e) for e in caller_saw] == ["the asyncio loop is shutting down"]
    assert loops[0].is_closed()
    assert not thread.running
    with pytest.raises(Unavailable, match="the asyncio loop is not running"):
        await thread.run_asyncio(asyncio.sleep, 0)


async def test_portal_outside_a_running_bridge_is_unavailable() -> None:
    portal = AsyncioThread().portal

    async def noop() -> None:
        pass

    def call_from_foreign_loop(portal: TrioPortal) -> str:
        try:
            asyncio.run(portal.call(noop))
        except Unavailable as exc:
            return str(exc)
        return "no error"

    assert await trio.to_thread.run_sync(call_from_foreign_loop, portal) == (
        "the Trio side of the bridge is not running"
    )


async def test_a_bridge_runs_once(nursery: trio.Nursery) -> None:
    thread = AsyncioThread()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            await inner.start(thread.run)
            scope.cancel()
    with pytest.raises(RuntimeError, match="runs once"):
        await nursery.start(thread.run)


async def test_shutdown_gives_up_on_a_task_that_ignores_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    thread = AsyncioThread("stubborn", shutdown_timeout=0.2)
    started = trio.Event()

    async def ignore_cancellation() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    async def spawn() -> None:
        task = asyncio.get_running_loop().create_task(ignore_cancellation())
        task._log_destroy_pending = False  # type: ignore[attr-defined]  # expected here
        thread.portal.call_soon(started.set)

    with trio.fail_after(SAFETY):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                await inner.start(thread.run)
                await thread.run_asyncio(spawn)
                await started.wait()
                scope.cancel()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["stubborn: 1 asyncio task(s) ignored cancellation; closing anyway"]
