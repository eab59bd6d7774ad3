"""Reference topics and idle partitions fetched once per interval, busy ones in every fetch.

aiokafka sends one fetch request per broker for every assigned, unpaused partition, and on
the embedded broker a fetch that finds no data is answered only when its wait runs out
(DESIGN section 7). A worker is assigned ~57 input partitions; 32 of them are reference
data (``products``, ``users``, ``stores.products``, ``products.promotions``) that changes
rarely and that no shopper waits on, yet it was in each of the ~80 fetches a second. Each
partition costs the broker and the consumer thread work per fetch: measured, 48 idle
partitions more in a 10 ms fetch loop raised the broker's CPU from ~30% to ~47% of a core,
and the positions' fetches took longer to come back.

:class:`FetchSchedule` pauses the reference partitions in aiokafka and resumes them for a
short window once per interval, so they are read in one or two fetches per interval instead
of in every one. Given a ``window`` wait (the worker passes
:meth:`app.runtime.fetch_actions.FetchLog.answered`), the window closes as soon as one fetch of the
resumed partitions was answered: measured at 500 positions/s, the 49-partition fetches fell
from ~25% to ~9% of a worker's fetches (each ~2 ms slower on the embedded broker than the
9-partition fetch of the positions alone).

Partitions of the ``idle_topics`` (purchases) get the same while idle: one whose position
did not move over a whole cycle is paused for the next interval; once it has records it
moves, and stays in every fetch while it keeps moving. Topics outside both sets (positions,
which a shopper waits for, the tables' changelogs, Faust's own) are never touched by this
schedule; with direct push (:mod:`app.delivery.pusher`) a second schedule treats the offers topic as
reference data, read within ``OFFER_BACKSTOP_MS`` when something was left to it and after a
quiet interval (``quiet_interval_s``, ten times as long) when every offer was pushed: on the
embedded broker a fetch costs time in proportion to the record batches its partitions hold,
and the offers topic's fetch was the slowest of a worker's (17-27 ms after 15 s at 500
positions/s; the positions in it waited for it: 53 of the 70 slowest in a trial came right
after one). A paused partition keeps its position: nothing is skipped, its records are only
read later (at most one interval plus a window). A partition with fetched records not yet
taken by Faust is never paused (aiokafka would drop them and fetch them again). No Faust
import: the consumer is anything with ``assignment``, ``paused``, ``pause`` and ``resume``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class PausableConsumer(Protocol):
    """The part of ``aiokafka.AIOKafkaConsumer`` the schedule uses."""

    def assignment(self) -> Any: ...
    def paused(self) -> Any: ...
    def pause(self, *partitions: Any) -> None: ...
    def resume(self, *partitions: Any) -> None: ...


#: Waits until the partitions just resumed were fetched once (bounded by the window, seconds).
WindowWait = Callable[[list[Any], float], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class FetchSchedule:
    """Fetch partitions of ``topics`` (reference data), and idle ones of ``idle_topics``,
    for ``window_s`` once every ``interval_s``."""

    topics: frozenset[str]
    interval_s: float
    window_s: float
    idle_topics: frozenset[str] = frozenset()
    #: With a ``due`` check (:meth:`run`): the interval while nothing is due.
    quiet_interval_s: float | None = None

    @classmethod
    def for_fetch_wait(cls, topics: Iterable[str], interval_ms: int, fetch_wait_ms: int,
                       idle_topics: Iterable[str] = (),
                       quiet_interval_ms: int | None = None) -> FetchSchedule:
        """The schedule for a consumer whose fetches wait ``fetch_wait_ms``: the window spans
        a fetch already in flight when it opens and the next one (plus replies)."""
        return cls(frozenset(topics), interval_ms / 1000,
                   max(0.05, 4 * fetch_wait_ms / 1000), frozenset(idle_topics),
                   None if quiet_interval_ms is None else quiet_interval_ms / 1000)

    def to_pause(self, assigned: Iterable[Hashable], buffered: Collection[Hashable],
                 moved: Collection[Hashable]) -> list[Any]:
        """Assigned partitions that may be paused now: reference ones, and idle ones (not in
        ``moved``) of ``idle_topics``; none with records waiting to be taken."""
        out = []
        for tp in assigned:
            topic = getattr(tp, "topic", None)
            if tp in buffered:
                continue
            if topic in self.topics or (topic in self.idle_topics and tp not in moved):
                out.append(tp)
        return out

    async def _hold(self, current: PausableConsumer, paused: list[Any],
                    buffered: Callable[[], Collection[Hashable]],
                    sleep: Callable[[float], Awaitable[Any]],
                    due: Callable[[], bool] | None = None) -> list[Any]:
        """Wait an interval in window-long steps, pausing again any reference partition that
        is no longer paused (a rebalance: aiokafka forgets the pauses of what it assigns).
        With ``due`` and a quiet interval, wait the quiet interval, but only the interval
        once ``due()`` says something is waiting or a rebalance happened. Returns every
        partition paused."""
        if self.quiet_interval_s is None:
            due = None  # no quiet interval: always the interval
        longest = self.interval_s if due is None else max(self.interval_s,
                                                          self.quiet_interval_s or 0.0)
        steps = max(1, math.ceil(longest / self.window_s - 1e-9))
        step_s = longest / steps
        rebalanced = False
        for step in range(steps):
            await sleep(step_s)
            if step == steps - 1:
                break
            if (due is not None and (step + 1) * step_s >= self.interval_s - 1e-9
                    and (rebalanced or due())):
                break
            assigned, already = current.assignment(), current.paused()
            again = [tp for tp in self.to_pause(assigned, buffered(), moved=assigned)
                     if tp not in already]  # moved=assigned: reference partitions only
            if again:
                current.pause(*again)
                paused = list(dict.fromkeys([*paused, *again]))
                rebalanced = True  # partitions new to this worker: read them soon
        return paused

    async def run(self, consumer: Callable[[], PausableConsumer | None],
                  buffered: Callable[[], Collection[Hashable]],
                  sleep: Callable[[float], Awaitable[Any]],
                  running: Callable[[], bool],
                  positions: Callable[[], Mapping[Hashable, int]] = dict,
                  window: WindowWait | None = None,
                  due: Callable[[], bool] | None = None) -> None:
        """Pause, wait an interval (re-pausing after a rebalance), resume, wait a window;
        until ``running()`` is false.

        ``consumer`` returns the current consumer (``None`` until it exists; until it has an
        assignment the schedule looks again every window), ``buffered`` the partitions with
        fetched records not yet taken, ``positions`` each assigned partition's next offset to
        fetch (without it, partitions of ``idle_topics`` are never paused). ``window``, when
        given, is awaited instead of a window-long sleep once partitions were resumed: with
        the resumed partitions and ``window_s`` as its bound, it returns as soon as a fetch
        of them has been answered (:class:`app.runtime.fetch_actions.FetchLog`), so they are in one
        fetch per interval rather than in every fetch for a whole window. ``due``, with a
        quiet interval, says whether something waits to be read (see :meth:`_hold`).
        """
        last: Mapping[Hashable, int] = {}
        while running():
            current = consumer()
            assigned = current.assignment() if current is not None else set()
            if current is None or not assigned:
                # Not started or not assigned yet: look again after a window, not an
                # interval (a long interval would leave the first assignment unscheduled).
                await sleep(self.window_s)
                continue
            now = positions()
            # A partition without a position yet, or first seen, counts as moved.
            moved = {tp for tp in assigned if now.get(tp) is None or last.get(tp) != now[tp]}
            last = now
            paused = self.to_pause(assigned, buffered(), moved)
            if paused:
                current.pause(*paused)
            paused = await self._hold(current, paused, buffered, sleep, due)
            if paused:
                assigned = current.assignment()  # a rebalance may have taken some away
                still = [tp for tp in paused if tp in assigned]
                if still:
                    current.resume(*still)
                    if window is not None:
                        await window(still, self.window_s)
                        continue
            await sleep(self.window_s)
