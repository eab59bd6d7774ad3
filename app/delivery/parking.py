"""Offers that could not be delivered yet: kept, their partition paused, retried until delivered.

A transient failure (Redis or Ably down, cut off, timing out) used to cost an offer after its
retries (~1.5 s): it went to ``dead-letters`` and never reached the shopper. Now the fast lane
parks it instead (:meth:`Parking.park`): its offset is held back from Faust's acknowledgements,
so the group's committed offset of its partition stays at or below it (a worker that dies
meanwhile leaves it to the partition's next owner), and the partition is paused, so nothing
more of it is read while the outage lasts; the other topics (purchases, positions) keep
flowing. While anything is parked the lane parks every further offer without trying it (an
outage is the sink's, not the partition's). :meth:`Parking.run` retries the oldest parked
offers with capped exponential backoff (:func:`core.retry.delay`) for as long as it takes; once
a partition's offers are delivered their offsets are acknowledged and it is resumed.

Redis keeps one marker per offer_id and Ably one message per id, so an offer parked after its
Redis write succeeded, or redelivered by the next owner after a crash, is still delivered once.
An offer found malformed on a retry (a permanent failure) is dead-lettered, then acknowledged.
A rebalance (a new consumer generation) drops what is parked: Faust seeks every partition it
keeps back to its committed offset, which is at or below the parked offers, and reads them
again. No Faust import: the consumer's part comes in as callables (:class:`ConsumerHooks`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.delivery.sinks import DeliveryError, DeliveryOutcome
from core.retry import RetryPolicy, delay

log = logging.getLogger(__name__)

#: Backoff between retry rounds: 0.2 s doubling up to 5 s, +/-20% (attempts is no limit here).
BACKOFF = RetryPolicy(base_s=0.2, factor=2.0, max_delay_s=5.0, jitter=0.2)
#: Offers per retry call (one pipelined Redis round trip).
ROUND = 500


class ParkingDelivery(Protocol):
    """The part of :class:`app.delivery.sinks.OfferDelivery` used to retry."""

    async def deliver_many(
        self, offers: Sequence[Mapping[str, Any]], *, halt_on_transient: bool = False
    ) -> list[DeliveryOutcome | DeliveryError]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Parked:
    """An offer kept for a later try: its record (anything with ``topic``, ``partition`` and
    ``offset``: what is acknowledged, or dead-lettered) and the decoded offer."""

    source: Any
    offer: Mapping[str, Any]


#: (topic, partition)
Partition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ConsumerHooks:
    """What parking needs of the worker's consumer."""

    #: The consumer group generation now.
    generation: Callable[[], int]
    #: Stop taking records of a partition (those fetched are read again later).
    pause: Callable[[Partition], None]
    #: Take its records again.
    resume: Callable[[Partition], None]
    #: Dead-letter ``(record, reason)`` pairs, then acknowledge the offsets, unless the
    #: generation moved on (then False: nothing is done, the partition is read again).
    settle: Callable[[Partition, int, list[int], list[tuple[Any, str]]], Awaitable[bool]]


@dataclass
class _Stall:
    generation: int
    parked: dict[Partition, list[Parked]] = field(default_factory=dict)
    since: float = 0.0


@dataclass(frozen=True, slots=True)
class Status:
    """What is parked now (the worker's health and metrics)."""

    partitions: int
    offers: int
    stalled_s: float
    retries: int
    last_error: str

    @property
    def stalled(self) -> bool:
        """Whether delivery is stalled (offers wait for a sink to come back)."""
        return self.offers > 0


class Parking:
    """Parked offers of this worker, and the task that retries them (see the module)."""

    def __init__(self, new_delivery: Callable[[], ParkingDelivery], hooks: ConsumerHooks, *,
                 on_delivered: Callable[[DeliveryOutcome], object] = lambda outcome: None,
                 on_change: Callable[[Status], None] = lambda status: None,
                 backoff: RetryPolicy = BACKOFF,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._new_delivery = new_delivery
        self._hooks = hooks
        self._on_delivered = on_delivered
        self._on_change = on_change
        self._backoff = backoff
        self._sleep = sleep
        self._clock = clock
        self._stall: _Stall | None = None
        self._wake = asyncio.Event()
        self._retries = 0
        self._last_error = ""

    @property
    def active(self) -> bool:
        """Whether offers are parked (of this generation): new ones are then parked too."""
        self._forget_if_stale()
        return self._stall is not None

    def status(self) -> Status:
        """How many offers and partitions are parked, and for how long."""
        stall = self._stall
        if stall is None:
            return Status(0, 0, 0.0, self._retries, self._last_error)
        return Status(len(stall.parked), sum(map(len, stall.parked.values())),
                      self._clock() - stall.since, self._retries, self._last_error)

    def park(self, entries: Sequence[Parked], reason: str = "") -> None:
        """Keep ``entries`` for a later try and pause their partitions. The caller holds
        their offsets back from acknowledgement (:func:`app.runtime.fastlane.hold`)."""
        if not entries:
            return
        self._forget_if_stale()
        if self._stall is None:
            self._stall = _Stall(self._hooks.generation(), since=self._clock())
            log.warning("offer delivery stalled (%s): parking offers until it succeeds",
                        reason or "transient failure")
        if reason:
            self._last_error = reason
        for entry in entries:
            partition = (entry.source.topic, entry.source.partition)
            queue = self._stall.parked.get(partition)
            if queue is None:
                queue = self._stall.parked[partition] = []
            queue.append(entry)
            self._hooks.pause(partition)
        self._wake.set()
        self._on_change(self.status())

    def _forget_if_stale(self) -> None:
        """Drop what was parked before a rebalance (it is read again from the commits)."""
        stall = self._stall
        if stall is not None and stall.generation != self._hooks.generation():
            log.info("rebalanced: %d parked offers are read again from the committed offsets",
                     sum(map(len, stall.parked.values())))
            self._stall = None
            self._on_change(self.status())

    async def run(self) -> None:
        """Retry parked offers until cancelled; the delivery client is closed on the way out."""
        delivery = self._new_delivery()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                failures = 0
                while self.active:
                    await self._sleep(delay(self._backoff, failures))
                    failures = 0 if await self.retry_round(delivery) else failures + 1
        finally:
            await delivery.close()

    async def retry_round(self, delivery: ParkingDelivery) -> bool:
        """Try the parked offers, oldest partition first, :data:`ROUND` at a time; stop at
        the first call that delivers nothing. Whether anything was delivered."""
        progressed = False
        while self.active:
            stall = self._stall
            assert stall is not None
            partition, queue = next(iter(stall.parked.items()))
            chunk = queue[:ROUND]
            self._retries += 1
            results = await delivery.deliver_many([entry.offer for entry in chunk],
                                                  halt_on_transient=True)
            done: list[int] = []
            failed: list[tuple[Any, str]] = []
            waiting: list[Parked] = []
            for entry, result in zip(chunk, results, strict=True):
                if isinstance(result, DeliveryOutcome):
                    done.append(entry.source.offset)
                    self._on_delivered(result)
                elif result.permanent:
                    failed.append((entry.source, f"delivery failed (permanent): {result}"))
                    done.append(entry.source.offset)
                else:
                    self._last_error = str(result)
                    waiting.append(entry)
            if not done:
                return progressed
            if self._stall is not stall or not await self._hooks.settle(
                    partition, stall.generation, done, failed):
                self._forget_if_stale()
                return True
            progressed = True
            rest = waiting + queue[len(chunk):]
            if rest:
                stall.parked[partition] = rest
            else:
                del stall.parked[partition]
                self._hooks.resume(partition)
            if not stall.parked:
                log.warning("offer delivery resumed after %.1f s", self._clock() - stall.since)
                self._stall = None
            self._on_change(self.status())
            if waiting:
                return progressed
        return progressed


#: What waits for a sink to come back, by kind ("offers", "alerts"): (how many, since when).
_STALLED: dict[str, tuple[int, float]] = {}


def note_stalled(kind: str, waiting: int, clock: Callable[[], float] = time.monotonic) -> None:
    """Record that ``waiting`` deliveries of ``kind`` wait for a sink (0: none any more)."""
    if waiting <= 0:
        _STALLED.pop(kind, None)
    else:
        _STALLED[kind] = (waiting, _STALLED.get(kind, (0, clock()))[1])


def stalled_report(clock: Callable[[], float] = time.monotonic) -> dict[str, dict[str, float]]:
    """Per kind of delivery stalled now: how many wait, and for how many seconds."""
    now = clock()
    return {kind: {"waiting": waiting, "stalled_s": round(now - since, 1)}
            for kind, (waiting, since) in sorted(_STALLED.items())}
