"""The bridge between the Trio program and an asyncio loop: the only module that knows
asyncio exists.

grpclib needs asyncio; Sentinel is a Trio program. :class:`AsyncioThread` runs a fresh
asyncio event loop in a worker thread that a Trio nursery owns, and connects the two:

* from asyncio coroutines (grpclib handlers), :class:`TrioPortal` enters the Trio program:
  :meth:`~TrioPortal.call` runs a Trio async function in a Trio task,
  :meth:`~TrioPortal.ask` drops an actor request straight into the actor's mailbox (no
  Trio task: the fast path), :meth:`~TrioPortal.forward` does the same after a plain
  function routed it (the produce path), :meth:`~TrioPortal.call_sync` runs a plain function on the
  Trio thread, :meth:`~TrioPortal.offer` is ``send_nowait`` into a memory channel;
* from Trio, :meth:`AsyncioThread.run_asyncio` runs a coroutine function on the loop.

How a portal call travels: the asyncio side creates a future and hands the work to Trio
with ``TrioToken.run_sync_soon``; the answer comes back with
``loop.call_soon_threadsafe``, which resolves the future. Exceptions cross unchanged.

Invariants:

* structured lifetime: ``await nursery.start(thread.run)`` returns once the loop runs;
  cancelling ``run`` stops the loop, cancels every asyncio task still pending (bounded by
  ``shutdown_timeout``), closes the loop and joins the thread before ``run`` returns. Trio
  tasks started by the portal live in a nursery ``run`` owns, so none outlives it;
* cancellation crosses both ways: an asyncio caller that is cancelled (the client went
  away, its deadline passed) cancels the Trio task it was waiting for; a Trio caller of
  ``run_asyncio`` that is cancelled cancels the asyncio task and waits for it to finish;
* once the bridge stops, every entry point answers :class:`~sentinel.errors.Unavailable`
  instead of hanging;
* nothing scheduled with ``run_sync_soon`` may raise (that would crash the Trio run):
  every callback here catches what it must deliver or log.

Stop asyncio services (servers, channels) before the bridge stops: the loop closes what
its tasks own, but not listening sockets or transports nobody closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar, cast

import outcome
import trio

from sentinel.actors import Actor, Reply, Request
from sentinel.errors import SentinelError, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long the worker thread lets asyncio tasks react to cancellation at shutdown before
#: closing the loop anyway: a task that ignores cancellation must not hang node shutdown.
DEFAULT_SHUTDOWN_TIMEOUT = 5.0

_NOT_RUNNING = "the Trio side of the bridge is not running"
_STOPPING = "the bridge is shutting down"


# -- asyncio-side helpers (run on the loop's thread) -------------------------------------


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():  # the caller may have been cancelled meanwhile
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _resolve_threadsafe(
    loop: asyncio.AbstractEventLoop,
    setter: Callable[[asyncio.Future[Any], Any], None],
    future: asyncio.Future[Any],
    value: Any,
) -> None:
    """Resolve ``future`` from the Trio thread; a closed loop means nobody is waiting."""
    try:
        loop.call_soon_threadsafe(setter, future, value)
    except RuntimeError:
        pass


class _TrioCall:
    """One :meth:`TrioPortal.call`: the asyncio future and the Trio task's cancel scope.

    ``scope`` and ``abandoned`` are touched only on the Trio thread, so whichever of
    "the task starts" and "the caller abandons" happens first, the other sees it.
    """

    __slots__ = ("abandoned", "future", "loop", "scope")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
        self.loop = loop
        self.future = future
        self.scope: trio.CancelScope | None = None
        self.abandoned = False

    def attach(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        if self.abandoned:
            scope.cancel()

    def abandon(self) -> None:
        self.abandoned = True
        if self.scope is not None:
            self.scope.cancel()

    def succeed(self, value: Any) -> None:
        _resolve_threadsafe(self.loop, _set_result, self.future, value)

    def fail(self, error: BaseException) -> None:
        _resolve_threadsafe(self.loop, _set_exception, self.future, error)


class FutureReply(Reply[T]):
    """A :class:`~sentinel.actors.Reply` whose answer resolves an asyncio future.

    The actor answers on the Trio thread as it would any request; the answer travels to
    the loop with ``call_soon_threadsafe``. First answer wins, as with ``Reply``. It is
    awaited on the asyncio side (through :meth:`TrioPortal.ask`), never with ``wait``.
    """

    __slots__ = ("_answered", "_future", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[T]) -> None:
        super().__init__()
        self._loop = loop
        self._future = future
        self._answered = False

    @property
    def done(self) -> bool:
        return self._answered

    def set(self, value: T) -> None:
        if not self._answered:
            self._answered = True
            _resolve_threadsafe(self._loop, _set_result, self._future, value)

    def fail(self, error: BaseException) -> None:
        if not self._answered:
            self._answered = True
            _resolve_threadsafe(self._loop, _set_exception, self._future, error)

    async def wait(self) -> T:
        raise RuntimeError("a FutureReply is awaited on the asyncio side (TrioPortal.ask)")


def _send_nowait(channel: trio.MemorySendChannel[Any], message: Any) -> None:
    try:
        channel.send_nowait(message)
    except trio.WouldBlock:
        raise Unavailable("the broker is busy: the receiving mailbox is full") from None
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        raise Unavailable("the receiving mailbox is closed") from None


def _run_logged(fn: Callable[..., object], args: tuple[Any, ...]) -> None:
    # Runs from run_sync_soon: an exception here would crash the whole Trio run.
    try:
        fn(*args)
    except Exception:
        log.exception("callback %r failed on the Trio thread", fn)


class TrioPortal:
    """The asyncio side's way into the Trio program of one :class:`AsyncioThread`.

    Exists from the thread's construction (so services can be built with it before the
    thread runs); its coroutine methods must be awaited on that thread's loop while it
    runs. Before start and after stop they raise :class:`~sentinel.errors.Unavailable`.
    """

    __slots__ = ("_calls_running", "_loop", "_nursery", "_token")

    def __init__(self) -> None:
        self._token: trio.lowlevel.TrioToken | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The nursery portal calls run in; None once the bridge stops taking calls.
        # Read and written on the Trio thread only.
        self._nursery: trio.Nursery | None = None
        # Trio tasks :meth:`call` started that have not ended (Trio thread only).
        self._calls_running = 0

    @property
    def calls_running(self) -> int:
        """Trio tasks started by :meth:`call` that have not ended yet (read on the Trio
        thread): zero once every call, answered or abandoned, is over."""
        return self._calls_running

    # -- asyncio side -----------------------------------------------------------------

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` in a new Trio task and return its result.

        Its exception is raised here. If this coroutine is cancelled, the Trio task is
        cancelled too (without waiting for it: it lives in the bridge's nursery). If Trio
        cancels the task (the bridge stops), this raises ``Unavailable``.
        """
        token = self._token
        loop = self._loop
        if token is None or loop is None:
            raise Unavailable(_NOT_RUNNING)
        future = loop.create_future()
        call = _TrioCall(loop, future)
        try:
            token.run_sync_soon(self._start_call, call, fn, args)
        except trio.RunFinishedError:
            raise Unavailable(_NOT_RUNNING) from None
        try:
            return cast(T, await future)
        except asyncio.CancelledError:
            try:
                token.run_sync_soon(call.abandon)
            except trio.RunFinishedError:
                pass
            raise

    async def ask(self, actor: Actor[Any], request: Request[T]) -> T:
        """Send ``request`` to ``actor`` without waiting for mailbox room, return the reply.

        The fast path: no Trio task; the request goes straight into the mailbox
        (``cast_nowait``) and the actor's answer resolves this coroutine's future. A full
        mailbox raises :class:`~sentinel.errors.MailboxFull`, a stopped actor
        :class:`~sentinel.errors.ActorClosed`. Replaces ``request.reply``. Cancelling
        this coroutine abandons the reply, not the request (as with ``Reply.wait``).
        """
        token = self._token
        loop = self._loop
        if token is None or loop is None:
            raise Unavailable(_NOT_RUNNING)
        future: asyncio.Future[T] = loop.create_future()
        request.reply = FutureReply(loop, future)
        try:
            token.run_sync_soon(self._cast, actor, request)
        except trio.RunFinishedError:
            raise Unavailable(_NOT_RUNNING) from None
        return await future

    async def forward(self, fn: Callable[..., None], *args: Any) -> Any:
        """Run the plain function ``fn(reply, *args)`` on the Trio thread and return what
        ``reply`` (a :class:`FutureReply`) is answered with.

        For a request that needs a little synchronous routing on the Trio side before it
        reaches its actor (``ask`` with a lookup in front): ``fn`` puts ``reply`` into the
        actor's request and casts it, or answers it itself; an exception it raises is the
        answer, so it must raise only before handing ``reply`` on. No Trio task: one hop
        each way. Cancelling this coroutine abandons the reply, not the request."""
        token = self._token
        loop = self._loop
        if token is None or loop is None:
            raise Unavailable(_NOT_RUNNING)
        future: asyncio.Future[Any] = loop.create_future()
        try:
            token.run_sync_soon(self._forward, FutureReply(loop, future), fn, args)
        except trio.RunFinishedError:
            raise Unavailable(_NOT_RUNNING) from None
        return await future

    async def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the plain function ``fn(*args)`` on the Trio thread, return its result.

        For work that must happen on the Trio thread but never waits: reading state an
        actor publishes, ``cast_nowait``, setting an event. Its exception is raised here.
        """
        token = self._token
        loop = self._loop
        if token is None or loop is None:
            raise Unavailable(_NOT_RUNNING)
        future = loop.create_future()
        try:
            token.run_sync_soon(self._run_sync, loop, future, fn, args)
        except trio.RunFinishedError:
            raise Unavailable(_NOT_RUNNING) from None
        return cast(T, await future)

    async def offer(self, channel: trio.MemorySendChannel[T], message: T) -> None:
        """``channel.send_nowait(message)`` on the Trio thread: a full channel raises
        :class:`~sentinel.errors.Unavailable` (busy: retry), a closed one
        :class:`~sentinel.errors.Unavailable`."""
        await self.call_sync(_send_nowait, channel, message)

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Fire and forget: run ``fn(*args)`` on the Trio thread soon, in order with other
        ``call_soon`` calls. Callable from any thread. An exception ``fn`` raises is
        logged; a call made while the bridge is not running is dropped."""
        token = self._token
        if token is None:
            return
        try:
            token.run_sync_soon(_run_logged, fn, args)
        except trio.RunFinishedError:
            pass

    # -- Trio side (scheduled with run_sync_soon: must not raise) ----------------------

    def _start_call(self, call: _TrioCall, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        nursery = self._nursery
        if nursery is None:
            call.fail(Unavailable(_STOPPING))
            return
        try:
            nursery.start_soon(self._run_call, call, fn, args, name=fn)
        except RuntimeError:  # the nursery closed under us
            call.fail(Unavailable(_STOPPING))
        else:
            self._calls_running += 1

    async def _run_call(
        self, call: _TrioCall, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> None:
        try:
            with trio.CancelScope() as scope:
                call.attach(scope)
                try:
                    result = await fn(*args)
                except Exception as exc:
                    call.fail(exc)
                except BaseException:
                    # Cancelled (by the bridge stopping, or by our scope after the caller
                    # left, in which case nobody reads this) or KeyboardInterrupt: it is not
                    # an answer the caller can use, and it must keep propagating in Trio.
                    call.fail(Unavailable(_STOPPING))
                    raise
                else:
                    call.succeed(result)
        finally:
            self._calls_running -= 1

    def _run_sync(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        if self._nursery is None:
            _resolve_threadsafe(loop, _set_exception, future, Unavailable(_STOPPING))
            return
        try:
            value = fn(*args)
        except Exception as exc:
            _resolve_threadsafe(loop, _set_exception, future, exc)
        else:
            _resolve_threadsafe(loop, _set_result, future, value)

    def _forward(self, reply: FutureReply[Any], fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        if self._nursery is None:
            reply.fail(Unavailable(_STOPPING))
            return
        try:
            fn(reply, *args)
        except Exception as exc:
            reply.fail(exc)

    def _cast(self, actor: Actor[Any], request: Request[Any]) -> None:
        if self._nursery is None:
            request.reply.fail(Unavailable(_STOPPING))
            return
        try:
            actor.cast_nowait(request)
        except SentinelError as exc:  # MailboxFull, ActorClosed
            request.reply.fail(exc)


class _AsyncioCall(Generic[T]):
    """One :meth:`AsyncioThread.run_asyncio`: a Trio task parked until an asyncio task ends.

    ``start``, ``cancel`` and ``_on_done`` run on the loop's thread; ``abort`` and
    ``finish`` on the Trio thread. ``finish`` reschedules the Trio task exactly once.
    """

    __slots__ = ("_cancel_requested", "_finished", "_loop", "_raise_cancel", "_task", "_token", "_trio_task")

    def __init__(
        self,
        token: trio.lowlevel.TrioToken,
        loop: asyncio.AbstractEventLoop,
        trio_task: trio.lowlevel.Task,
    ) -> None:
        self._token = token
        self._loop = loop
        self._trio_task = trio_task
        self._task: asyncio.Task[T] | None = None
        self._cancel_requested = False
        self._raise_cancel: Callable[[], Any] | None = None
        self._finished = False

    # asyncio thread
    def start(self, fn: Callable[..., Coroutine[Any, Any, T]], args: tuple[Any, ...]) -> None:
        if self._cancel_requested:
            self._report(None)
            return
        try:
            task = self._loop.create_task(fn(*args))
        except Exception as exc:
            self._report(outcome.Error(exc))
            return
        self._task = task
        task.add_done_callback(self._on_done)

    def cancel(self) -> None:
        self._cancel_requested = True
        if self._task is not None:
            self._task.cancel()

    def _on_done(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            self._report(None)
            return
        error = task.exception()
        self._report(outcome.Value(task.result()) if error is None else outcome.Error(error))

    def _report(self, result: outcome.Outcome[T] | None) -> None:
        try:
            self._token.run_sync_soon(self.finish, result)
        except trio.RunFinishedError:
            pass

    # Trio thread
    def abort(self, raise_cancel: Callable[[], Any]) -> trio.lowlevel.Abort:
        self._raise_cancel = raise_cancel
        try:
            self._loop.call_soon_threadsafe(self.cancel)
        except RuntimeError:  # the loop is closed: no asyncio task is left to wait for
            self._finished = True
            return trio.lowlevel.Abort.SUCCEEDED
        # Wait for the asyncio task to actually finish: its cleanup is part of the call.
        return trio.lowlevel.Abort.FAILED

    def finish(self, result: outcome.Outcome[T] | None) -> None:
        """Wake the Trio caller; ``None`` means the asyncio task was cancelled."""
        if self._finished:
            return
        self._finished = True
        if result is None:
            raise_cancel = self._raise_cancel
            if raise_cancel is not None:
                result = outcome.capture(raise_cancel)
            else:
                result = outcome.Error(Unavailable("the asyncio loop is shutting down"))
        trio.lowlevel.reschedule(self._trio_task, result)


def raise_sole_exception(group: BaseExceptionGroup[BaseException]) -> None:
    """Re-raise the one exception an internal nursery wrapped, bare, so a caller can catch
    ``OSError`` (address in use...) and the CLI print one line; a group of several stays
    a group. Call from ``except BaseExceptionGroup``."""
    sole: BaseException = group
    while isinstance(sole, BaseExceptionGroup) and len(sole.exceptions) == 1:
        sole = sole.exceptions[0]
    if sole is group:
        raise group
    raise sole from sole.__cause__


class AsyncioThread:
    """An asyncio event loop in a worker thread, owned by a Trio nursery.

    Start with ``await nursery.start(thread.run)``; stop by cancelling it. ``portal`` is
    the asyncio side's way into Trio; :meth:`run_asyncio` is Trio's way into asyncio.
    Runs once.
    """

    def __init__(
        self, name: str = "sentinel-asyncio", *, shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    ) -> None:
        self.name = name
        self.portal = TrioPortal()
        self._shutdown_timeout = shutdown_timeout
        self._token: trio.lowlevel.TrioToken | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._stop_requested = False
        self._pending: set[_AsyncioCall[Any]] = set()

    @property
    def running(self) -> bool:
        """True from ``started`` until a stop is requested."""
        return self._loop is not None and not self._stop_requested

    async def run(self, *, task_status: trio.TaskStatus[AsyncioThread] = trio.TASK_STATUS_IGNORED) -> None:
        if self._started:
            raise RuntimeError(f"{self.name} runs once")
        self._started = True
        token = self._token = trio.lowlevel.current_trio_token()
        loop_running = trio.Event()
        try:
            # The nursery hosts the thread and every Trio task the portal starts.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_thread, token, loop_running, nursery.cancel_scope)
                try:
                    await loop_running.wait()
                    portal = self.portal
                    portal._token, portal._loop, portal._nursery = token, self._loop, nursery
                    task_status.started(self)
                    await trio.sleep_forever()
                finally:
                    self.portal._nursery = None
                    self._request_stop()
        except BaseExceptionGroup as group:
            raise_sole_exception(group)

    async def run_asyncio(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run ``await fn(*args)`` as a task on the loop and return its result.

        Its exception is raised here. Cancelling this call cancels the asyncio task and
        waits for it to finish. Raises ``Unavailable`` once the bridge is stopping.
        """
        loop = self._loop
        token = self._token
        if loop is None or token is None or self._stop_requested:
            raise Unavailable("the asyncio loop is not running")
        call: _AsyncioCall[T] = _AsyncioCall(token, loop, trio.lowlevel.current_task())
        self._pending.add(call)
        try:
            try:
                loop.call_soon_threadsafe(call.start, fn, args)
            except RuntimeError:
                raise Unavailable("the asyncio loop is not running") from None
            result: T = await trio.lowlevel.wait_task_rescheduled(call.abort)
            return result
        finally:
            self._pending.discard(call)

    # -- internals ----------------------------------------------------------------------

    def _request_stop(self) -> None:
        self._stop_requested = True
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:  # already closed
                pass

    def _loop_started(self, loop: asyncio.AbstractEventLoop, loop_running: trio.Event) -> None:
        self._loop = loop
        if self._stop_requested:  # cancelled while the thread was starting
            loop.call_soon_threadsafe(loop.stop)
        loop_running.set()

    async def _run_thread(
        self,
        token: trio.lowlevel.TrioToken,
        loop_running: trio.Event,
        nursery_scope: trio.CancelScope,
    ) -> None:
        try:
            # A private limiter: the loop holds its thread for the bridge's whole life and
            # must not take one of the default limiter's tokens from short blocking calls.
            await trio.to_thread.run_sync(
                self._thread_main,
                token,
                loop_running,
                thread_name=self.name,
                limiter=trio.CapacityLimiter(1),
            )
        finally:
            self._loop = None
            self.portal._token = None
            self.portal._loop = None
            self.portal._nursery = None
            # Callers of run_asyncio whose work never reached the loop.
            for call in list(self._pending):
                call.finish(outcome.Error(Unavailable("the asyncio loop stopped")))
            # Trio work the portal started whose asyncio caller is gone.
            nursery_scope.cancel()
        if not self._stop_requested:
            raise RuntimeError(f"the asyncio loop of {self.name} stopped on its own")

    def _thread_main(self, token: trio.lowlevel.TrioToken, loop_running: trio.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.call_soon(token.run_sync_soon, self._loop_started, loop, loop_running)
            loop.run_forever()
        finally:
            try:
                self._cancel_remaining_tasks(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def _cancel_remaining_tasks(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline = loop.time() + self._shutdown_timeout
        # Repeat: a task may start another while handling its cancellation.
        while tasks := asyncio.all_tasks(loop):
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning(
                    "%s: %d asyncio task(s) ignored cancellation; closing anyway", self.name, len(tasks)
                )
                return
            for task in tasks:
                task.cancel()
            done, _ = loop.run_until_complete(asyncio.wait(tasks, timeout=remaining))
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    loop.call_exception_handler(
                        {
                            "message": "asyncio task failed while the bridge was stopping",
                            "exception": task.exception(),
                            "task": task,
                        }
                    )


__all__ = ["DEFAULT_SHUTDOWN_TIMEOUT", "AsyncioThread", "FutureReply", "TrioPortal", "raise_sole_exception"]
