"""Records queued synchronously and sent in one batch per partition.

Faust sends every table change as its own message: a ``FutureMessage``, a pending-message
task, codecs, sensors and an aiokafka ``send`` each (measured ~170 us of CPU per changelog
record on this machine, the largest cost of the loyalty path). The fast lane
(:mod:`app.runtime.fastlane`) instead queues already-encoded records here, synchronously, in the
same step in which it changes the table's in-memory data, so memory and "queued for the
changelog" can never diverge, even if the processing task is cancelled by a rebalance.

A background task of the producer (:class:`app.runtime.transport.Producer`) sends what is queued
as aiokafka batches, one per (topic, partition) and batch size. :meth:`BulkWriter.flush`
waits until everything queued so far is acknowledged by the broker: Faust flushes the
producer before it commits input offsets, so an offset is never committed ahead of the
records its events produced. A failed send is kept and raised by the next flush (the
commit then fails and the worker stops rather than serve state the changelog lacks).

Private internals mirrored (listed in app/runtime/internals.py; checked against aiokafka
0.14.0, re-check on upgrade): ``aiokafka.producer.producer.AIOKafkaProducer._partition`` (the
producer's partitioner, for records queued by key),
``aiokafka.client.AIOKafkaClient._wait_on_metadata``,
``AIOKafkaProducer._message_accumulator`` and ``MessageAccumulator._batches`` (the unsent
batches per partition, which records join as aiokafka's own ``send`` does) and
``MessageBatch.append``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition

log = logging.getLogger(__name__)

#: (topic, partition)
Destination = tuple[str, int]
#: The partition of records whose partition is chosen by key when they are sent.
KEYED = -1
#: Called with the offset of the last record of a delivered batch.
Delivered = Callable[[int], None]
#: Record headers as aiokafka takes them.
Headers = list[tuple[str, bytes]]
#: A queued record: key, value, timestamp (ms, ``None``: now) and headers (``None``: none).
Record = tuple[bytes | None, bytes | None, int | None, Headers | None]

#: Records a producer of records may leave queued or in flight before its next step waits
#: for them to be sent (to half this); ~10-20 MB of changelog values.
ROOM_RECORDS = 65536
#: The longest such a wait lasts (a broker that does not answer: the producer goes on, and
#: the records queue as they did before, until a commit's flush fails).
ROOM_WAIT_S = 5.0


class BulkWriter:
    """A queue of encoded records per destination, drained in batches by :meth:`run`.

    State records (destinations with a delivery callback: table changelogs) of a drain pass
    are handed to aiokafka only once the pass's other records (outputs: loyalty events,
    offers, dead letters) are acknowledged, and in the order of the passes. A batch's state
    then never reaches its changelog without its output: after a crash before the input
    offsets' commit, the events are processed again on a state that lacks them and their
    output is written again (at-least-once), where a state that had them would skip the
    events as already applied and their output, never acknowledged, would be lost. (A
    partition's next batch waits for the previous one's acknowledgement in aiokafka, so two
    records handed over together can be acknowledged a produce round trip apart.) Outputs
    are not delayed; a batch's state records are, by one acknowledgement.
    """

    #: Whether state records wait for the outputs of their pass (off in a transaction, which
    #: makes both visible together: :class:`app.runtime.guarantees.LaneWriter`).
    STATE_AFTER_OUTPUT = True

    def __init__(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        self._report_error = on_error
        self._queued: dict[Destination, list[Record]] = {}
        self._on_delivered: dict[Destination, Delivered] = {}
        self._owners: dict[Destination, object] = {}
        #: The highest offset reported delivered per destination.
        self._reported: dict[Destination, int] = {}
        self._inflight: set[asyncio.Future[Any]] = set()
        self._work: asyncio.Event | None = None
        self._draining: asyncio.Lock | None = None
        self.error: BaseException | None = None
        #: The futures of the outputs sent by the pass running now (see drain).
        self._tracking: list[asyncio.Future[Any]] | None = None
        #: The last pass's state records being handed over after its outputs.
        self._states: asyncio.Future[None] | None = None
        #: State records never sent because an output they followed failed.
        self.dropped = 0
        #: Set when no more than ``_room_at`` records are pending (see wait_for_room).
        self._room: asyncio.Event | None = None
        self._room_at = 0
        self.enqueued = 0
        self.delivered = 0
        self.batches = 0

    def enqueue(self, topic: str, partition: int, key: bytes | None,
                value: bytes | None) -> None:
        """Queue one record for ``topic``/``partition`` (never blocks, never awaits)."""
        self.enqueue_record(topic, partition, (key, value, None, None))

    def enqueue_record(self, topic: str, partition: int, record: Record) -> None:
        """Queue one record with its timestamp and headers (see :data:`Record`)."""
        destination = (topic, partition)
        queued = self._queued.get(destination)
        if queued is None:
            queued = self._queued[destination] = []
        queued.append(record)
        self.enqueued += 1
        if self._work is not None:
            self._work.set()

    def enqueue_keyed(self, topic: str, key: bytes, value: bytes | None) -> None:
        """Queue one record for the partition the producer's partitioner gives ``key``."""
        self.enqueue(topic, KEYED, key, value)

    def on_delivered(self, topic: str, partition: int, callback: Delivered,
                     owner: object = None) -> None:
        """Call ``callback(last_offset)`` after each delivered batch to that partition (only
        with offsets higher than any reported before); ``owner``: whose callback it is
        (:meth:`delivers_to`)."""
        self._on_delivered[(topic, partition)] = callback
        self._owners[(topic, partition)] = owner

    def delivers_to(self, topic: str, partition: int, owner: object) -> bool:
        """Whether deliveries to that partition are reported to ``owner``'s callback
        already (a table's writes register theirs once, not once per batch)."""
        return owner is not None and self._owners.get((topic, partition)) is owner

    @property
    def pending(self) -> int:
        """Records queued or in flight, not yet acknowledged."""
        return self.enqueued - self.delivered

    async def make_room(self) -> None:
        """Wait while more than :data:`ROOM_RECORDS` records are pending (at most
        :data:`ROOM_WAIT_S`): what a producer of records (the fast lane's chunks, the agent
        path's events) calls between steps."""
        if not await self.wait_for_room(ROOM_RECORDS, ROOM_WAIT_S):
            log.warning("changelog sends behind: %d records pending after %.0f s",
                        self.pending, ROOM_WAIT_S)

    async def wait_for_room(self, limit: int, timeout: float) -> bool:
        """Wait until at most ``limit // 2`` records are pending, when more than ``limit``
        are (at most ``timeout`` seconds); whether there is room.

        The fast lane's producer of records: a chunk of a backlog holds the event loop for
        up to LANE_STEP_S, and aiokafka's sender needs several loop turns per produce round
        trip, so without this a backlog queued records far faster than they were sent
        (measured, returns + 365-day tiers on the loyalty bench: 925,000 records queued,
        79,000 sent after 40 s, the worker at 5 GB) until a commit's flush sent them all
        while nothing else ran."""
        if self.pending <= limit or self.error is not None:
            return True
        if self._work is not None:
            self._work.set()
        self._room_at = limit // 2
        self._room = room = asyncio.Event()
        try:
            await asyncio.wait_for(room.wait(), timeout)
            return True
        except TimeoutError:
            return self.pending <= limit
        finally:
            self._room = None

    async def run(self, producer: Any) -> None:
        """Send queued records as they come (the producer service runs this until stopped)."""
        self._work = asyncio.Event()
        while True:
            await self._work.wait()
            self._work.clear()
            await self.drain(producer)

    async def drain(self, producer: Any) -> None:
        """Hand everything queued so far to aiokafka, in batches (does not wait for acks).

        One pass over what is queued when the pass begins: records queued meanwhile wait
        for the next pass (the sender task's next wake), so a producer of records that never
        pauses cannot keep the lock, and a :meth:`flush` waiting for it, forever."""
        if self._draining is None:
            self._draining = asyncio.Lock()
        async with self._draining:
            queued, self._queued = self._queued, {}
            states: dict[Destination, list[Record]] = {}
            outputs: list[asyncio.Future[Any]] = []
            self._tracking = outputs
            try:
                for (topic, partition), records in queued.items():
                    if self.STATE_AFTER_OUTPUT and (topic, partition) in self._on_delivered:
                        states[(topic, partition)] = records
                    else:
                        await self._send_to(producer, topic, partition, records)
            finally:
                self._tracking = None
            if not states:
                return
            if not outputs and (self._states is None or self._states.done()):
                for (topic, partition), records in states.items():
                    await self._send(producer, topic, partition, records)
                return
            self._states = asyncio.ensure_future(
                self._send_states(producer, self._states, outputs, states))

    async def _send_to(self, producer: Any, topic: str, partition: int,
                       records: list[Record]) -> None:
        if partition == KEYED:
            for chosen, share in (await _by_partition(producer, topic, records)).items():
                await self._send(producer, topic, chosen, share)
        else:
            await self._send(producer, topic, partition, records)

    async def _send_states(self, producer: Any, before: asyncio.Future[None] | None,
                           outputs: list[asyncio.Future[Any]],
                           states: dict[Destination, list[Record]]) -> None:
        """Hand ``states`` over after the previous pass's states and ``outputs``' acks."""
        if before is not None:
            await asyncio.wait([before])
        if outputs:
            await asyncio.wait(outputs)
        if self.error is not None or any(
                f.cancelled() or f.exception() is not None for f in outputs):
            count = sum(len(records) for records in states.values())
            self.dropped += count
            self.delivered += count  # never to be sent: not pending (flush raises the error)
            log.error("%d state records not sent: an output record they follow failed",
                      count)
            return
        assert self._draining is not None
        try:
            async with self._draining:  # not among the outputs of a pass running meanwhile
                for (topic, partition), records in states.items():
                    await self._send(producer, topic, partition, records)
        except Exception as exc:  # raised by the next flush: that commit must not happen
            log.error("state records not sent: %r", exc)
            if self.error is None:
                self.error = exc
                if self._report_error is not None:
                    self._report_error(exc)

    async def flush(self, producer: Any) -> None:
        """Return once every record queued before the call is acknowledged; raise a failure.

        Waits for the sends in flight once those records are handed over, not for later ones:
        waiting until nothing was in flight never ended while the lanes kept writing (measured
        at 2,000 positions/s: Faust's commit flushes took 0.4-5.5 s, so offsets were committed
        every ~6 s instead of every ``broker_commit_interval``; under a backlog of a million
        purchases nothing was committed before the backlog was done).
        """
        await self.drain(producer)
        if self._states is not None:
            await asyncio.wait([self._states])
        pending = list(self._inflight)
        if pending:
            await asyncio.wait(pending)
        if self.error is not None:
            raise self.error

    async def _send(self, producer: Any, topic: str, partition: int,
                    records: list[Record]) -> None:
        records = self._join_waiting(producer, topic, partition, records)
        if not records:
            return
        batch = producer.create_batch()
        count = 0
        for key, value, stamp, headers in records:
            if batch.append(key=key, value=value, timestamp=stamp,
                            headers=headers or []) is None:
                await self._submit(producer, batch, topic, partition, count)
                batch, count = producer.create_batch(), 0
                if batch.append(key=key, value=value, timestamp=stamp,
                                headers=headers or []) is None:
                    raise ValueError(f"a record for {topic}[{partition}] is larger than "
                                     "the producer's max batch size")
            count += 1
        if count:
            await self._submit(producer, batch, topic, partition, count)

    def _join_waiting(self, producer: Any, topic: str, partition: int,
                      records: list[Record]) -> list[Record]:
        """Append records to the batch aiokafka holds unsent for this partition, as its own
        ``send`` does; return those that did not fit.

        aiokafka sends one batch per partition at a time and ``send_batch`` waits while a
        batch of the partition is still unsent, i.e. until the one before it is acknowledged:
        a full produce round trip, awaited by the fast lane's drain (and so by the consume
        loop) for every changelog and offers partition a batch of positions wrote to.
        Measured at 2,000 positions/s on Apache Kafka: the worker at ~30% of a core fell
        seconds behind. The records appended go with that batch, as soon as the partition's
        previous batch is acknowledged; the last one's future stands for them all (a batch's
        records are acknowledged together).
        """
        pending = producer._message_accumulator._batches.get(TopicPartition(topic, partition))
        if not pending:
            return records
        waiting = pending[-1]
        last: asyncio.Future[Any] | None = None
        count = 0
        for key, value, stamp, headers in records:
            future = waiting.append(key, value, stamp, headers=headers or [])
            if future is None:  # full (or already built): a batch of their own
                break
            last = future
            count += 1
        if last is not None:
            self._track(last, topic, partition, count, record_offsets=True)
        return records[count:]

    async def _submit(self, producer: Any, batch: Any, topic: str, partition: int,
                      count: int) -> None:
        future = await producer.send_batch(batch, topic, partition=partition)
        self.batches += 1
        self._track(future, topic, partition, count)

    def _track(self, future: asyncio.Future[Any], topic: str, partition: int, count: int,
               record_offsets: bool = False) -> None:
        """Count ``count`` records delivered when ``future`` is done (a batch's future: its
        first record's offset; ``record_offsets``: the last record's own future)."""
        self._inflight.add(future)
        if self._tracking is not None:
            self._tracking.append(future)
        callback = self._on_delivered.get((topic, partition))
        last_of = 0 if record_offsets else count - 1

        def done(fut: asyncio.Future[Any]) -> None:
            self._inflight.discard(fut)
            self.delivered += count
            if self._room is not None and (self.pending <= self._room_at or fut.cancelled()
                                           or fut.exception() is not None):
                self._room.set()
            if fut.cancelled():
                self.error = self.error or asyncio.CancelledError(
                    f"send to {topic}[{partition}] cancelled")
            elif fut.exception() is not None:
                exc = fut.exception()
                assert exc is not None
                log.error("bulk send of %d records to %s[%d] failed: %r", count, topic,
                          partition, exc)
                if self.error is None:
                    self.error = exc
                    if self._report_error is not None:
                        self._report_error(exc)
            elif callback is not None:
                # Futures of one aiokafka batch complete in no set order (the batch's own,
                # then or before those of the records that joined it): report only progress.
                offset = fut.result().offset + last_of
                if offset > self._reported.get((topic, partition), -1):
                    self._reported[(topic, partition)] = offset
                    callback(offset)

        future.add_done_callback(done)


async def _by_partition(producer: Any, topic: str,
                        records: list[Record]) -> dict[int, list[Record]]:
    """Records grouped by the partition the producer's partitioner picks for their key."""
    await producer.client._wait_on_metadata(topic)
    out: dict[int, list[Record]] = {}
    chosen: dict[bytes, int] = {}  # keys repeat (a customer's purchases): hash each once
    for record in records:
        key = record[0]
        partition = chosen.get(key) if key is not None else None
        if partition is None:
            partition = producer._partition(topic, None, None, None, key, None)
            if key is not None:
                chosen[key] = partition
        out.setdefault(partition, []).append(record)
    return out
