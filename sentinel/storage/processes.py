"""WorkerProcess: runs the storage engine's pure file jobs in a process of their own.

A compaction is a pure function of its input table files to its output table files
(``compactor.run_compaction``), and a flush of a frozen memtable one of its WAL segment
(``compactor.run_flush``). In a worker thread each holds the process's GIL for ~1 us per
entry it writes, time the event loop's writers wait for; in a process of its own it costs
the store's process a pickled job and a list of FileMeta back. The manifest edit that
installs the tables stays with the Compactor (the one owner of the manifest).

Rules of the runner:

* one worker process per runner, started (spawned, never forked: the store's process runs
  threads) at the first job, so a store that never flushes never starts one;
* the Store that is given a runner owns it: it closes it when it stops (``close`` waits
  for the idle worker to exit);
* a job's exception is raised from the awaiting call, as a worker thread's would be
  (Sentinel's errors pickle with their fields); a worker that dies (killed, out of memory)
  fails the call with ``BrokenProcessPool``, which fails the store loudly like any
  unexpected error of a thread;
* like a worker thread's, the wait is not cancellable: the job's outputs are always
  either installed or deleted by the job itself, never left half-reported;
* the worker exits on its own if the store's process dies (it polls its parent), so it
  cannot go on writing tables into a directory a new process has opened.

The worker imports the job's module (``sentinel.storage.compactor``) at its first job
and the main module of the parent as ``__mp_main__`` (multiprocessing's spawn rule): a
script that runs a store from its top level needs an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

import trio

T = TypeVar("T")

#: How often the worker checks that the process that started it is alive.
PARENT_POLL_SECONDS = 0.5


class WorkerProcess:
    """``await runner(fn, *args)`` runs ``fn(*args)`` (picklable, module-level) in the
    worker process and returns its result. ``close()`` when done."""

    def __init__(self) -> None:
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        """True from the first job (which starts the worker process) until ``close``."""
        return self._executor is not None

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError("WorkerProcess is closed")
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )
        future = self._executor.submit(fn, *args)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: Future[T]) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:  # pragma: no cover - the loop that waited is gone
                pass

        future.add_done_callback(wake)
        with trio.CancelScope(shield=True):  # as a worker thread's: see the module docstring
            await done.wait()
        return future.result()

    def close(self) -> None:
        """Stop the worker process (waiting for it to exit); idempotent."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


def _exit_with_parent(parent: int) -> None:
    """In the worker: exit at once when ``parent`` is no longer our parent (it died)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
