"""The fast lane: hot topics processed one fetched batch at a time, inside Faust's consumer.

Faust hands every record to its agents one by one: a ``Message``, a conductor dispatch that
``wait_first``s two tasks per record, a queue, an ``Event``, sensors and an ack each. For the
high-volume topics (``purchases``, ``customers.locations``) the transport's consumer
(:class:`app.runtime.transport.Consumer`) instead passes each partition's fetched records to the
handler registered here, in one call, then acknowledges their offsets the way Faust's own
ack does, so Faust's commits, rebalances, recovery and table routing are unchanged.

A handler runs with the batch's partition as Faust's current event (table writes go to the
changelog partition of the source partition, as in an agent). It must apply its state
changes without awaiting between changing a table's data and queueing the changelog record
(:mod:`tables.batch` does both in one step), so a cancelled batch never leaves memory ahead of
the changelog. A paced handler (:data:`PACED`) may await between slices of its batch, but
only before its first table write: it applies the slices to state of its own and writes it
all in the last slice's synchronous step, so a batch given up between slices leaves nothing
behind. Each topic keeps an ordinary Faust agent too: it receives events only when
the lane is off (``FAST_LANE=off``, ``exactly_once``) and in ``agent.test_context()`` tests,
and it calls the same handler with batches of one.

Private internals mirrored (listed in app/runtime/internals.py; checked against
faust-streaming 0.15.3, re-check on upgrade): ``faust.streams._current_event``, the context
variable behind Faust's current event (:func:`current_event` sets it).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from faust.events import Event
from faust.streams import _current_event
from faust.types import TP
from faust.types.tuples import Message

from app.settings import SETTINGS


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1.2 us more per record
class Source:
    """One input record: where it came from and its raw bytes.

    ``timestamp`` is the record's timestamp in epoch seconds (the time it was read, for the
    rare record without one).
    """

    topic: str
    partition: int
    offset: int
    timestamp: float
    key: bytes | None
    value: bytes | None
    #: The record's headers (``(name, bytes)`` pairs), when any.
    headers: Any = None


#: Processes records of one partition, in offset order.
BatchHandler = Callable[[Sequence[Source]], Awaitable[None]]

#: Topic name -> handler, for the topics that take the fast lane.
LANES: dict[str, BatchHandler] = {}


#: Topics whose batches run before every other batch of the same fetch and whose output is
#: sent as soon as the batch is done (waiting for a reply, like a shopper's position waiting
#: for its offer).
URGENT: set[str] = set()


#: Topics whose handler takes a partition's whole fetched batch and paces itself
#: (:class:`Pace`): its records are applied in slices with the event loop let run between
#: them, and its state written once, at the end.
PACED: set[str] = set()


class Abandoned(Exception):
    """A paced batch given up between two slices (its partition was revoked or the consumer's
    flow stopped): nothing of it was written and nothing is acknowledged."""


@dataclass(slots=True)
class Pace:
    """How a paced batch shares the event loop: slices of ``size`` records, resized after
    each by ``resize(size, seconds it took)``; between two, the loop runs and the batch goes
    on only while ``still_ours()``."""

    size: int
    resize: Callable[[int, float], int]
    still_ours: Callable[[], bool]

    def took(self, seconds: float) -> None:
        """Size the next slice after one that took ``seconds``."""
        self.size = self.resize(self.size, seconds)

    async def between(self) -> None:
        """Let the loop run (heartbeats, commits, other agents); raise :class:`Abandoned`
        when the batch is no longer this worker's to finish."""
        await asyncio.sleep(0)
        if not self.still_ours():
            raise Abandoned


_PACE: ContextVar[Pace | None] = ContextVar("storestream_lane_pace", default=None)


@contextmanager
def pacing(pace: Pace | None) -> Iterator[None]:
    """Run a paced batch's handler with ``pace`` (:func:`current_pace`)."""
    token = _PACE.set(pace)
    try:
        yield
    finally:
        _PACE.reset(token)


def current_pace() -> Pace | None:
    """The pace of the paced batch being processed (``None``: apply the batch in one go)."""
    return _PACE.get()


#: Offsets of the batch being processed that its handler keeps from being acknowledged
#: (:func:`hold`); the consumer acknowledges them later, when the handler's owner says so
#: (:meth:`app.runtime.transport.Consumer.settle_held`).
_HELD: set[int] = set()


def hold(source: Source) -> None:
    """Keep ``source`` (of the batch being processed) from being acknowledged with its batch:
    the partition's committed offset stays at or below it until it is settled."""
    _HELD.add(source.offset)


def take_held() -> set[int]:
    """The offsets held during the batch just processed (and forget them)."""
    held = set(_HELD)
    _HELD.clear()
    return held


def lane(topic: str, *, urgent: bool = False,
         paced: bool = False) -> Callable[[BatchHandler], BatchHandler]:
    """Register the decorated function as the batch handler of ``topic`` (``paced``: it
    takes whole fetched batches and paces itself, see :data:`PACED`)."""
    def register(handler: BatchHandler) -> BatchHandler:
        LANES[topic] = handler
        if urgent:
            URGENT.add(topic)
        if paced:
            PACED.add(topic)
        return handler
    return register


def enabled(in_transaction: bool) -> bool:
    """Whether hot topics take the fast lane (``FAST_LANE``). Under exactly_once its records
    go to the source partition's transaction (:class:`app.runtime.guarantees.LaneWriter`)."""
    return SETTINGS.fast_lane


def from_record(record: Any) -> Source:
    """A :class:`Source` from an aiokafka ``ConsumerRecord`` (timestamp in ms)."""
    stamp = record.timestamp
    return Source(record.topic, record.partition, record.offset,
                  time.time() if stamp is None or stamp < 0 else stamp / 1000.0,
                  record.key, record.value, record.headers)


def from_message(message: Any) -> Source:
    """A :class:`Source` from a Faust ``Message`` (timestamp already in seconds)."""
    stamp = message.timestamp
    return Source(message.topic, message.partition, message.offset,
                  time.time() if stamp is None else float(stamp), message.key, message.value,
                  message.headers)


@contextmanager
def current_event(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event (its partition is where table writes go)."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def event_of(app: Any, source: Source) -> Event:
    """A Faust event for a record known only as a :class:`Source` (to write tables as its
    partition's event, e.g. dead-letter marks, outside the batch that read it)."""
    message = Message(source.topic, source.partition, source.offset, source.timestamp, 0,
                      source.headers, source.key, source.value, None,
                      tp=TP(source.topic, source.partition),
                      generation_id=app.consumer_generation_id)
    return Event(app, source.key, source.value, source.headers, message)
