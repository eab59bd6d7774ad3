"""Changelog recovery that does not trust the broker's end offsets alone.

Faust decides that a table is recovered once it has read the changelog up to the partition's
end offset ("highwater") as the broker reports it. The embedded broker (Tansu) reports the
*last batch's base offset* + 1 as the end offset (measured: 10 records produced in one batch
-> end offset 1), so every changelog partition's last batch was left unread and a restarted
worker lost the latest state of the customers in it (DESIGN section 7). With a persistent
store (``rocksdb://``) the same answer also trips Faust's consistency check (local offset >
highwater) and stops the worker.

:class:`ProbingRecovery` reads past each reported highwater with a plain consumer up to the
high watermark that the broker's fetch responses carry (those are right) and raises the
highwater to the last record it saw. It never lowers a highwater, so on a broker with correct
end offsets it changes nothing (one short read per rebalance). Install it with
``faust.App(..., TableManager="app.runtime.recovery:TableManager")``.

It also holds the stream partitions paused until every :class:`app.runtime.replica.TopicReplica` of
the worker (catalogue, displays, promotions, dead-letter index) has loaded: otherwise a
restarted worker processed positions and purchases a few hundred ms before it knew the
displays, promotions and prices they depend on (measured in the fault-injection run: offers
missing against a replay of the positions).

Private internals mirrored (listed in app/runtime/internals.py; checked against
faust-streaming 0.15.3, re-check on upgrade): ``faust.tables.recovery``:
``Recovery._build_highwaters`` and ``Recovery._seek_offsets`` (overridden),
``Recovery.on_recovery_completed`` (body copied in ``_complete_recovery``, seek moved first),
``Recovery._wait``, ``Recovery._set_recovery_ended``, ``Recovery._is_changelog_tp``,
``Recovery.actives_for_table``, ``Recovery.standbys_for_table``;
``faust.tables.manager.TableManager._recovery``; ``faust.app.base.App._fetcher``;
for the bulk restore (``RECOVERY_BULK``, :meth:`ProbingRecovery._bulk_restore`):
``Recovery.tp_to_table``, ``Recovery.active_highwaters``, ``Recovery.signal_recovery_start``,
``Recovery._active_events_received_at`` (set, so Faust does not warn of silent partitions),
``faust.tables.base.Collection._on_changelog_event`` (read), and the event attributes that
``faust.stores.memory.Store.apply_changelog_batch`` and
``faust.stores.rocksdb.Store.apply_changelog_batch`` read
(:class:`app.runtime.restore.ChangelogEvent`).

Bulk restore: before Faust's per-event recovery of the active changelog partitions, they are
read up to their highwaters with a plain consumer and applied a fetched batch at a time
(:mod:`app.runtime.restore` says where Faust's path spent its time); Faust then finds nothing
left to read. Measured on Apache Kafka, 100,000 customers (180,203 records, ``memory://``):
restore 22 s -> 0.8 s, process start to ``/health`` 200 25.3 s -> 4.6 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.tables import TableManager as FaustTableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types import TP

from app.runtime.replica import REPLICAS, not_ready, replica_connection, wait_all_ready
from app.runtime.restore import (
    ChangelogEvent,
    ChangelogMessage,
    fetched_end,
    new_consumer,
    read_span,
)
from app.settings import SETTINGS

log = logging.getLogger(__name__)

#: A probe's fetch wait (ms): short, the broker need not answer a waiting fetch early.
PROBE_FETCH_WAIT_MS = 10
#: Upper bound for one probe (s); past it, what was read so far is the answer.
PROBE_TIMEOUT_S = 20.0
#: Upper bound (s) for holding the streams for the replicas; past it they resume regardless
#: (a loud warning): a worker that never starts is worse than one that starts short of data.
REPLICA_WAIT_TIMEOUT_S = 120.0
#: Share of Faust's timeout for the seek step (``broker_request_timeout``) the bulk restore
#: may take; past it, Faust's per-event recovery reads the rest.
BULK_BUDGET_SHARE = 0.5


class BulkRestored:
    """Changelog records this worker applied in bulk restores (``/metrics``:
    ``storestream_restored_records_total``)."""

    records = 0


BULK_RESTORED = BulkRestored()


def _utf8(raw: bytes | None) -> Any:
    return None if raw is None else raw.decode("utf-8")


def _json(raw: bytes | None) -> Any:
    return None if raw is None else orjson.loads(raw)


def _decoders(app: Any, table: Any) -> tuple[Callable[[bytes | None], Any],
                                             Callable[[bytes | None], Any]]:
    """Key and value decoders of a table's changelog records, as Faust's conductor decodes
    them: direct for UTF-8 keys and JSON values (:func:`tables.base.text_keyed_table`), else
    through the app's serializer registry with the table's types and serializers."""
    def registry_key(raw: bytes | None) -> Any:
        return app.serializers.loads_key(table.key_type, raw, serializer=table.key_serializer)

    def registry_value(raw: bytes | None) -> Any:
        return app.serializers.loads_value(table.value_type, raw,
                                           serializer=table.value_serializer)

    plain_key = table.key_serializer == "utf8" and table.key_type in (str, None)
    plain_value = table.value_serializer == "json" and table.value_type is None
    return (_utf8 if plain_key else registry_key), (_json if plain_value else registry_value)


async def read_last_offsets(
    consumer: AIOKafkaConsumer,
    start: Mapping[TopicPartition, int],
    *,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> dict[TopicPartition, int]:
    """The offset of the last record readable at or after ``start``, per partition.

    Reads each partition until its position reaches the high watermark carried by the fetch
    responses themselves (correct on the embedded broker, unlike its ListOffsets answer).
    Partitions with no record there are left out.
    """
    consumer.assign(list(start))
    for tp, offset in start.items():
        consumer.seek(tp, max(offset, 0))
    last: dict[TopicPartition, int] = {}
    pending = set(start)
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            log.warning("highwater probe: %d partitions still short of their end after "
                        "%.0f s: %s", len(pending), timeout_s, sorted(pending))
            break
        batch = await consumer.getmany(*pending, timeout_ms=50)
        for tp, records in batch.items():
            if records:
                last[tp] = max(last.get(tp, -1), records[-1].offset)
        for tp in list(pending):
            end = fetched_end(consumer, tp)
            if end is not None and await consumer.position(tp) >= end:
                pending.discard(tp)
    return last


def seek_positions(
    offsets: Mapping[TP, object], tps: Iterable[TP]
) -> tuple[dict[TP, int], dict[TP, object]]:
    """Seek positions for changelog partitions ``tps`` whose last read offsets are ``offsets``.

    An int >= 0 is the position itself and -1 ("nothing read") is 0, as in Faust's recovery.
    Anything else (``None``, a bool or any other non-int, an int below -1) is 0 too, the
    start, and is also returned in the second mapping (partition -> the value it had, ``None``
    for a partition missing from ``offsets``).
    """
    positions: dict[TP, int] = {}
    unusable: dict[TP, object] = {}
    for tp in tps:
        offset = offsets.get(tp)
        if isinstance(offset, int) and not isinstance(offset, bool) and offset >= -1:
            positions[tp] = max(offset, 0)
        else:
            positions[tp] = 0
            unusable[tp] = offset
    return positions, unusable


class ProbingRecovery(Recovery):  # type: ignore[misc]
    """Faust's recovery, with highwaters checked by reading past them (see module doc)."""

    async def _build_highwaters(
        self, consumer: Any, tps: set[TP], destination: Any, title: str
    ) -> None:
        await super()._build_highwaters(consumer, tps, destination, title)
        if not tps or not SETTINGS.recovery_probe:
            return
        started = time.monotonic()
        try:
            found = await self._probe({tp: destination[tp] for tp in tps})
        except Exception as exc:  # keep Faust's own answer rather than not starting
            log.error("highwater probe for %s changelogs failed, keeping the broker's end "
                      "offsets (recovery may be incomplete): %r", title, exc)
            return
        raised = {tp: last for tp, last in found.items() if last > destination[tp]}
        if raised:
            log.warning(
                "%s changelog highwaters raised past the broker's end offsets for %d of %d "
                "partitions (%d more records, probe %.2f s): %s", title, len(raised), len(tps),
                sum(last - destination[tp] for tp, last in raised.items()),
                time.monotonic() - started,
                ", ".join(f"{tp.topic}[{tp.partition}] {destination[tp]}->{last}"
                          for tp, last in sorted(raised.items())),
            )
        else:
            log.info("highwater probe of %d %s changelog partitions: %.2f s, none raised",
                     len(tps), title, time.monotonic() - started)
        for tp, last in raised.items():  # a Counter: update() would add
            destination[tp] = last

    async def _seek_offsets(
        self, consumer: Any, tps: set[TP], offsets: Any, title: str
    ) -> None:
        """Faust's seek of changelog partitions to where reading starts, with positions that
        are always ints >= 0 (checked against faust-streaming 0.15.3 and aiokafka 0.14.0).

        ``offsets`` is Faust's Counter of the last offset read per partition (-1: nothing).
        Faust's own ``_seek_offsets`` maps exactly -1 to 0 and hands every other value on
        unchanged to aiokafka's ``seek``, which raises ``ValueError: Offset must be a positive
        integer`` for anything not an int or below 0; that exception ends recovery's task and
        the worker (issue 16: three workers in one full fault run). The value was ``None``
        (the clamp that was here skipped ``None`` and never warned; ``_build_offsets`` and
        the changelog reader only write ints): ``Recovery.on_rebalance`` puts ``None`` in the
        Counter for a newly assigned changelog partition without a persisted offset (always so
        with ``memory://``), and only ``_build_offsets`` replaces it. A rebalance that lands
        as the active recovery ends is missed by Faust's ``_wait`` (the signal's task is not
        done yet), so the standby seek runs with the new assignment and no ``_build_offsets``;
        its first step (aiokafka on this loop, :mod:`app.runtime.transport`) raises, and mode's
        ``wait_first`` re-raises that before it looks at the rebalance signal. Start offsets
        below -1 (an earliest offset of -1 from the broker, minus Faust's 1) were the same
        hazard.

        :func:`seek_positions` computes the positions here: ints >= 0 unchanged, -1 to 0 as
        in Faust, and anything else to 0, the start, with one warning. Reading a changelog
        from its start is always safe (re-applying records only rewrites the same values);
        those partitions are also marked -1 ("nothing read") in ``offsets`` so Faust's
        remaining-records counts neither skip them (``None``) nor fail on them. (The other
        seeks here cannot meet such a value: the probe seeks ``max(highwater, 0)`` with Faust's
        int highwaters, and the end of recovery's ``perform_seek`` lets aiokafka seek only
        committed offsets > 0.)
        """
        positions, unusable = seek_positions(offsets, tps)
        if unusable:
            log.warning("%s changelog start offsets unusable, reading from the beginning: %s",
                        title, ", ".join(f"{tp.topic}[{tp.partition}]={value!r}"
                                         for tp, value in sorted(unusable.items())))
            for tp in unusable:
                offsets[tp] = -1
        if title == "active" and SETTINGS.recovery_bulk and tps:
            await self._bulk_restore(positions, offsets)
            positions, _ = seek_positions(offsets, tps)
        await consumer.seek_wait(positions)

    async def _bulk_restore(self, positions: Mapping[TP, int], offsets: Any) -> None:
        """Apply the active changelog partitions up to their highwaters in bulk
        (:mod:`app.runtime.restore`) and advance ``offsets`` (Faust's last-read offsets) to
        where that got, so Faust's per-event recovery only reads what is left (nothing,
        unless the bulk read stopped early: a deadline, a rebalance, an open transaction).

        Each partition's records are applied with the table's own ``apply_changelog_batch``
        (the store decides: ``memory://`` keeps the decoded values and their partitions,
        ``rocksdb://`` writes the raw bytes and its persisted offset), as Faust's recovery
        does with its buffers; tables with an ``on_changelog_event`` callback are left to Faust.
        """
        highwaters = self.active_highwaters
        spans: dict[TopicPartition, tuple[int, int]] = {}
        owners: dict[TopicPartition, tuple[TP, Any]] = {}
        for tp, first in positions.items():
            table = self.tp_to_table.get(tp)
            last = highwaters.get(tp)
            if (table is None or last is None or last < first
                    or getattr(table, "_on_changelog_event", None) is not None):
                continue
            key = TopicPartition(tp.topic, tp.partition)
            spans[key] = (first, last)
            owners[key] = (tp, table)
        if not spans:
            return
        decoders = {id(table): _decoders(self.app, table) for _, table in owners.values()}
        applied = [0]

        received_at = self._active_events_received_at  # Faust's "no event received" watch

        def apply(key: TopicPartition, records: Sequence[Any]) -> None:
            tp, table = owners[key]
            received_at[tp] = time.monotonic()
            to_key, to_value = decoders[id(table)]
            table.apply_changelog_batch([
                ChangelogEvent(to_key(r.key), to_value(r.value),
                               ChangelogMessage(tp, r.partition, r.offset, r.key, r.value))
                for r in records])
            applied[0] += len(records)

        conf = self.app.conf
        started = time.monotonic()
        consumer = new_consumer(
            [f"{url.host}:{url.port or 9092}" for url in conf.broker],
            transactional=bool(self.app.in_transaction),
            **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context))
        await consumer.start()
        try:
            reached = await read_span(
                consumer, spans, apply,
                deadline=started + BULK_BUDGET_SHARE * float(conf.broker_request_timeout),
                interrupted=self.signal_recovery_start.is_set)
        finally:
            await consumer.stop()
        for key, offset in reached.items():
            tp = owners[key][0]
            if offset > offsets[tp]:
                offsets[tp] = offset
        elapsed = time.monotonic() - started
        BULK_RESTORED.records += applied[0]
        left = sum(max(0, spans[key][1] - offset) for key, offset in reached.items())
        log.info("bulk restore: %d records into %d partitions in %.2f s (%.0f records/s)%s",
                 applied[0], len(spans), elapsed, applied[0] / max(elapsed, 1e-9),
                 f"; {left} offsets left to Faust's recovery" if left else "")

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """Resume the streams only once the tables *and* the replicas are loaded."""
        missing = not_ready()
        if missing:
            started = time.monotonic()
            log.info("recovery done; holding the streams until replicas are loaded: %s",
                     ", ".join(missing))
            # _wait raises RebalanceAgain if a new rebalance starts meanwhile.
            await self._wait(wait_all_ready(), timeout=REPLICA_WAIT_TIMEOUT_S)
            still = not_ready()
            if still:
                log.error("replicas still loading after %.0f s, resuming the streams anyway: "
                          "%s", REPLICA_WAIT_TIMEOUT_S, ", ".join(still))
            else:
                log.info("replicas loaded in %.2f s", time.monotonic() - started)
        await self._complete_recovery(generation_id)

    async def _complete_recovery(self, generation_id: int) -> None:
        """Faust's ``on_recovery_completed``, with the seek *before* the streams resume.

        Faust resumes the stream partitions and only then seeks them to their committed
        offsets. Whatever the fetcher delivered in between (from the consumer's old position)
        was processed and then delivered again from the committed offset, and Faust's gap
        bookkeeping, which reads its "last read offset" from the seek, took the overlap for
        missing offsets: measured in fault runs as bad events never dead-lettered (their
        offsets committed as a gap) and as commits that stopped advancing.
        """
        consumer = self.app.consumer
        log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [asyncio.ensure_future(table.on_recovery_completed(
                         self.actives_for_table[table], self.standbys_for_table[table]))
                     for table in self.tables.values()]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            log.warning("recovery of generation %s done, but the group is at %s: rebalancing "
                        "again", generation_id, self.app.consumer_generation_id)
            return
        streams = {tp for tp in assignment if not self._is_changelog_tp(tp)}
        if streams:
            log.info("Seek stream partitions to committed offsets, then resume them.")
            await self._wait(consumer.perform_seek(),
                             timeout=self.app.conf.broker_request_timeout)
        consumer.resume_partitions(streams)
        self.completed.set()
        self.app.flow_control.resume()
        consumer.resume_flow()
        await self.app._fetcher.maybe_start()  # type: ignore[attr-defined]
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        log.info("Worker ready")

    async def _probe(self, highwaters: Mapping[TP, int]) -> dict[TP, int]:
        """Read from each reported highwater to the partition's real end."""
        conf = self.app.conf
        consumer = AIOKafkaConsumer(
            bootstrap_servers=[f"{url.host}:{url.port or 9092}" for url in conf.broker],
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=PROBE_FETCH_WAIT_MS,
            isolation_level="read_committed" if self.app.in_transaction else "read_uncommitted",
            **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
        )
        await consumer.start()
        try:
            start = {TopicPartition(tp.topic, tp.partition): hw for tp, hw in highwaters.items()}
            last = await asyncio.wait_for(read_last_offsets(consumer, start),
                                          PROBE_TIMEOUT_S + 5)
        finally:
            await consumer.stop()
        return {TP(tp.topic, tp.partition): offset for tp, offset in last.items()}


class TableManager(FaustTableManager):  # type: ignore[misc]
    """Faust's table manager with :class:`ProbingRecovery` as its recovery service.

    It also starts the worker's replicas (:data:`app.runtime.replica.REPLICAS`) as soon as it
    starts, so they load while the tables recover, not after (Faust starts ``app.task`` functions
    only once recovery is complete, which would deadlock with the hold above).
    """

    async def on_start(self) -> None:
        """Start following the replicas, then Faust's own start-up (recovery)."""
        connection = replica_connection(self.app)
        for replica in REPLICAS:
            self.add_future(replica.follow(*connection))
        await super().on_start()

    @property
    def recovery(self) -> Recovery:
        """The recovery service (created on first use, like Faust's)."""
        if self._recovery is None:
            self._recovery = ProbingRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
