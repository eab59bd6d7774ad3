"""Offers pushed by the worker that emits them, beside its consume loop.

The matcher's offers used to reach Redis and Ably only after a round trip through
``customers.promotions``: the delivery agent had to fetch that topic in every fetch (a
shopper waits for the push), which put eight more busy partitions in each of the worker's
~80 fetches a second and a Redis round trip per offers partition into its consume loop.
Measured at 500 positions/s on the embedded broker: location -> offer p50 ~38 ms with it,
~25-29 ms with no offers consumer at all.

:class:`DirectPusher` takes the offers a batch of positions produced (:meth:`submit`, never
awaits) and delivers them from its own task, every offer queued since its last round in one
pipelined Redis round trip. The topic stays the record and its consumer the backstop: it reads
the topic once per ``OFFER_BACKSTOP_MS`` and delivers every offer :meth:`pushed` does not
confirm (a failed push, a queue overflow, an offer emitted before a restart or by another
worker). A push needs no retries of its own: whatever it does not confirm is delivered by the
backstop, with retries and dead letters. Offer ids are deterministic, so an offer pushed and
then emitted again after a crash is a duplicate for Redis and Ably. No Faust import.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from app.delivery.sinks import DeliveryError, DeliveryOutcome
from core.recent import RecentIds

log = logging.getLogger(__name__)

#: Offers remembered as pushed: the backstop reads them within about a second, so this covers
#: ~25 s at 2,000 offers/s. An offer forgotten before the backstop read it is delivered again
#: (a duplicate for Redis and Ably), never lost.
REMEMBERED = 50_000
#: Offers waiting for a push; beyond this they are left to the backstop.
MAX_QUEUED = 10_000
#: Offers per delivery round (one pipelined Redis round trip).
ROUND = 500
#: After a round in which nothing could be pushed (Redis or Ably down), offers are left to the
#: backstop for this long instead of being tried one by one again at the offer rate.
BACKOFF_S = 1.0


class BatchDelivery(Protocol):
    """The part of :class:`app.delivery.sinks.OfferDelivery` the pusher uses."""

    async def deliver_many(
        self, offers: Sequence[Mapping[str, Any]]
    ) -> list[DeliveryOutcome | DeliveryError]: ...

    async def close(self) -> None: ...


class DirectPusher:
    """Pushes offers as they are emitted; remembers which ones were pushed."""

    def __init__(self, new_delivery: Callable[[], BatchDelivery], *,
                 on_pushed: Callable[[DeliveryOutcome], object] = lambda outcome: None,
                 on_not_pushed: Callable[[str, int], None] = lambda reason, count: None,
                 remembered: int = REMEMBERED, max_queued: int = MAX_QUEUED,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._new_delivery = new_delivery
        self._clock = clock
        self._backing_off_until = 0.0
        self._on_pushed = on_pushed
        self._report_not_pushed = on_not_pushed
        self._pushed = RecentIds(remembered)
        self._max_queued = max_queued
        self._queue: list[Mapping[str, Any]] = []
        self._wake = asyncio.Event()
        # Something may be waiting for the backstop: true at start (offers emitted before a
        # restart), then whenever offers are left to it.
        self._backstop_due = True

    def submit(self, offers: Iterable[Mapping[str, Any]]) -> None:
        """Queue offers for a push (never awaits); beyond the bound, or while backing off
        after a round that pushed nothing, they are left to the backstop."""
        offers = list(offers)
        if self._backing_off_until and self._clock() < self._backing_off_until:
            if offers:
                self._on_not_pushed("backing off", len(offers))
            return
        room = self._max_queued - len(self._queue)
        if len(offers) > room:
            self._on_not_pushed("queue full", len(offers) - max(0, room))
            offers = offers[:max(0, room)]
        if offers:
            self._queue.extend(offers)
            self._wake.set()

    def _on_not_pushed(self, reason: str, count: int) -> None:
        self._backstop_due = True
        self._report_not_pushed(reason, count)

    def backstop_due(self) -> bool:
        """Whether offers were left to the backstop since the last call (true the first
        time): the backstop then reads the topic after its short interval, otherwise after
        its quiet one (:class:`app.runtime.fetch_schedule.FetchSchedule`)."""
        due, self._backstop_due = self._backstop_due, False
        return due

    def pushed(self, offer_id: str) -> bool:
        """Whether this offer was pushed by this process (and is still remembered)."""
        return offer_id in self._pushed

    @property
    def queued(self) -> int:
        """Offers waiting for a push."""
        return len(self._queue)

    async def run(self) -> None:
        """Push queued offers until cancelled; the delivery client is closed on the way out."""
        delivery = self._new_delivery()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                # Let the producer's sender hand the batch's records to the broker first.
                await asyncio.sleep(0)
                while self._queue:
                    await self.push_round(delivery)
        finally:
            await delivery.close()

    async def push_round(self, delivery: BatchDelivery) -> None:
        """Deliver up to :data:`ROUND` queued offers in one call; remember those pushed."""
        offers, self._queue = self._queue[:ROUND], self._queue[ROUND:]
        try:
            results = await delivery.deliver_many(offers)
        except Exception as exc:  # the backstop delivers them, with retries
            log.warning("direct push of %d offers failed: %r", len(offers), exc)
            self._on_not_pushed("error", len(offers))
            self._back_off()
            return
        failed = 0
        for result in results:
            if isinstance(result, DeliveryError):
                failed += 1
            else:
                self._pushed.add(result.offer_id)
                self._on_pushed(result)
        if failed:
            self._on_not_pushed("delivery failed", failed)
            if failed == len(offers):
                self._back_off()

    def _back_off(self) -> None:
        """Leave offers to the backstop for :data:`BACKOFF_S`, dropping what is queued."""
        self._backing_off_until = self._clock() + BACKOFF_S
        if self._queue:
            self._on_not_pushed("backing off", len(self._queue))
            self._queue = []


#: The process's pusher, when direct push runs (see :func:`backstop_due`).
_REGISTERED: list[DirectPusher] = []


def register(pusher: DirectPusher) -> None:
    """Make ``pusher`` the one :func:`backstop_due` asks (the worker's consumer has no
    reference to the agents that own it)."""
    _REGISTERED[:] = [pusher]


def backstop_due() -> bool:
    """Whether the registered pusher left offers to the backstop since it was last asked
    (true when none is registered: nothing vouches for the topic)."""
    return _REGISTERED[0].backstop_due() if _REGISTERED else True
