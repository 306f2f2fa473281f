"""RaftTicker: the only place wall time becomes Raft's logical ticks.

Every ``tick_seconds`` it sends a Tick to every registered group actor without waiting: a
group whose mailbox is full misses that tick (it is busy; its timers simply run a tick
late), so one slow group never delays the others' heartbeats or elections. The Raft cores
never read a clock: tests drive them tick by tick, and actor tests run this on MockClock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import trio

from sentinel.errors import ActorClosed, MailboxFull

# RAFT-NOTES.md defaults: a 100 ms tick, heartbeats every tick, elections after 10-19 ticks.
DEFAULT_TICK_SECONDS = 0.1


class Tickable(Protocol):
    def tick_nowait(self) -> None: ...


class RaftTicker:
    def __init__(
        self, groups: Callable[[], Iterable[Tickable]], tick_seconds: float = DEFAULT_TICK_SECONDS
    ) -> None:
        self._groups = groups
        self.tick_seconds = tick_seconds
        self.ticks = 0
        self.missed = 0

    async def run(self, *, task_status: trio.TaskStatus[RaftTicker] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        deadline = trio.current_time()
        while True:
            # Ticks keep their cadence: a late wake-up does not shift every later tick. After
            # a stall (the loop blocked, the process stopped) the missed ticks are skipped,
            # not replayed in a burst that would fire every election timer at once, before
            # the messages that arrived meanwhile are even read.
            deadline += self.tick_seconds
            now = trio.current_time()
            if now > deadline + self.tick_seconds:
                deadline = now
            await trio.sleep_until(deadline)
            self.ticks += 1
            for group in list(self._groups()):
                try:
                    group.tick_nowait()
                except MailboxFull:
                    self.missed += 1
                except ActorClosed:
                    pass
