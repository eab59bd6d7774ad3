"""Reference topics fetched once per interval, hot topics in every fetch.

aiokafka sends one fetch request per broker for every assigned, unpaused partition, and on
the embedded broker a fetch that finds no data is answered only when its wait runs out
(DESIGN section 7). A worker is assigned ~57 input partitions; 32 of them are reference
data (``products``, ``users``, ``stores.products``, ``products.promotions``) that changes
rarely and that no shopper waits on, yet it was in each of the ~80 fetches a second. Each
partition costs the broker and the consumer thread work per fetch: measured, 48 idle
partitions more in a 10 ms fetch loop raised the broker's CPU from ~30% to ~47% of a core,
and the positions' fetches took longer to come back.

:class:`ReferencePolling` pauses the reference partitions in aiokafka and resumes them for a
short window once per interval, so they are read in one or two fetches per interval
instead of in every one. A paused partition keeps its position: nothing is skipped, its
records are only read later (at most one interval plus a window). A partition with fetched
records not yet taken by Faust is never paused (aiokafka would drop them and fetch them
again). No Faust import: the consumer is anything with ``assignment``, ``pause`` and
``resume``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


class PausableConsumer(Protocol):
    """The part of ``aiokafka.AIOKafkaConsumer`` the schedule uses."""

    def assignment(self) -> Any: ...
    def pause(self, *partitions: Any) -> None: ...
    def resume(self, *partitions: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class ReferencePolling:
    """Fetch partitions of ``topics`` for ``window_s`` once every ``interval_s``."""

    topics: frozenset[str]
    interval_s: float
    window_s: float

    @classmethod
    def for_fetch_wait(cls, topics: Iterable[str], interval_ms: int,
                       fetch_wait_ms: int) -> ReferencePolling:
        """The schedule for a consumer whose fetches wait ``fetch_wait_ms``: the window spans
        a fetch already in flight when it opens and the next one (plus replies)."""
        return cls(frozenset(topics), interval_ms / 1000,
                   max(0.05, 4 * fetch_wait_ms / 1000))

    def to_pause(self, assigned: Iterable[Hashable],
                 buffered: Collection[Hashable]) -> list[Any]:
        """Assigned reference partitions that may be paused now (none with records waiting
        to be taken)."""
        return [tp for tp in assigned
                if getattr(tp, "topic", None) in self.topics and tp not in buffered]

    async def run(self, consumer: Callable[[], PausableConsumer | None],
                  buffered: Callable[[], Collection[Hashable]],
                  sleep: Callable[[float], Awaitable[Any]],
                  running: Callable[[], bool]) -> None:
        """Pause, wait an interval, resume, wait a window; until ``running()`` is false.

        ``consumer`` returns the current consumer (``None`` until it exists) and ``buffered``
        the partitions with fetched records not yet taken.
        """
        while running():
            current = consumer()
            paused: list[Any] = []
            if current is not None:
                paused = self.to_pause(current.assignment(), buffered())
                if paused:
                    current.pause(*paused)
            await sleep(self.interval_s)
            if current is not None and paused:
                assigned = current.assignment()  # a rebalance may have taken some away
                still = [tp for tp in paused if tp in assigned]
                if still:
                    current.resume(*still)
            await sleep(self.window_s)
