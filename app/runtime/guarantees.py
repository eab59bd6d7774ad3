"""Refuse ``exactly_once`` clearly when the broker cannot do Kafka transactions.

Faust's ``exactly_once`` needs producer ids: its default producer is idempotent and each
partition gets a transactional producer (InitProducerId, AddPartitionsToTxn,
AddOffsetsToTxn/TxnOffsetCommit, EndTxn). The embedded broker (Tansu 0.6.0, memory storage)
answers InitProducerId v0, the only version aiokafka 0.14 sends, with UNKNOWN_SERVER_ERROR
(-1), with or without a transactional id; the worker then dies with a bare ``UnknownError``.
A broker whose transaction coordinator is unavailable (e.g. a one-broker Kafka with the
default replication of the transaction log) makes aiokafka retry forever instead: a hang.

:func:`check_transactions` asks for a transactional producer id once, with a deadline, and
:func:`require_transactions` turns a refusal into :class:`TransactionsUnsupported` with a
message that says what to do. Connect :func:`on_worker_init` to ``app.on_worker_init``: it
runs after autodiscovery and before the app's producer starts, and only checks when the
processing guarantee is ``exactly_once``.

On a broker with transactions, :class:`TransactionManager` (the transport's) and
:func:`commit_barrier` (around each consumer commit) make each transaction hold exactly the
output of the source offsets it commits: see the notes above :class:`CommitGate`.

Private internals mirrored (listed in app/runtime/internals.py; checked against
faust-streaming 0.15.3, re-check on upgrade): ``faust.transport.consumer``:
``TransactionManager.send``, ``TransactionManager.on_rebalance`` and
``TransactionManager.commit`` (overridden; the last crashes the app when fenced),
``TransactionManager._tps_to_transactional_ids``, ``TransactionManager.transactional_id_format``
(copied in :func:`source_transaction`), ``Consumer._commit_offsets`` (flushes the producer
under at_least_once only); ``faust.transport.drivers.aiokafka``:
``Producer._transaction_producers``, ``Producer._trn_locks``; ``faust.tables.manager.
TableManager._pending_persisted_offsets`` (read by ``TransactionManager._persist_committed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, cast

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from faust.streams import current_event
from faust.transport.consumer import TransactionManager as _FaustTransactionManager

from app.runtime.bulk import BulkWriter, Delivered

log = logging.getLogger(__name__)

#: How long the broker may take to hand out a transactional producer id (s).
CHECK_TIMEOUT_S = 15.0


class TransactionsUnsupported(RuntimeError):
    """The broker cannot run Kafka transactions, so ``exactly_once`` cannot work."""


async def check_transactions(
    bootstrap: str, transactional_id: str, auth: dict[str, Any] | None = None,
    timeout_s: float = CHECK_TIMEOUT_S,
) -> str | None:
    """``None`` if the broker gives a transactional producer id, else why not.

    Raises :class:`aiokafka.errors.KafkaConnectionError` when the broker cannot be reached
    at all (that is not an answer about transactions).
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id,
                                **(auth or {}))
    started = time.monotonic()
    try:
        await asyncio.wait_for(producer.start(), timeout_s)
    except TimeoutError:
        return f"no transactional producer id after {timeout_s:.0f} s (InitProducerId hangs)"
    except KafkaConnectionError:
        raise
    except KafkaError as exc:
        return (f"InitProducerId failed after {time.monotonic() - started:.2f} s: "
                f"{type(exc).__name__} {exc}")
    finally:
        try:
            await producer.stop()
        except Exception:  # a producer that never started may fail to stop; irrelevant
            log.debug("transaction check: producer stop failed", exc_info=True)
    return None


def require_transactions(bootstrap: str, app_id: str,
                         auth: dict[str, Any] | None = None) -> None:
    """Raise :class:`TransactionsUnsupported` unless the broker can run transactions.

    Safe to call from inside a running event loop (the check runs on its own thread/loop).
    """
    with ThreadPoolExecutor(1, thread_name_prefix="txn-check") as pool:
        try:
            reason = pool.submit(asyncio.run, check_transactions(
                bootstrap, f"{app_id}-transactions-check", auth)).result()
        except KafkaConnectionError as exc:
            log.warning("transaction check skipped, broker unreachable: %s", exc)
            return
    if reason is not None:
        raise TransactionsUnsupported(
            f"PROCESSING_GUARANTEE=exactly_once needs Kafka transactions, and the broker at "
            f"{bootstrap} does not support them ({reason}). Use "
            f"PROCESSING_GUARANTEE=at_least_once (storestream's per-record source offsets "
            f"already make redelivered events change nothing), or point BROKER_URL at a "
            f"Kafka cluster with transactions enabled."
        )
    log.info("broker at %s supports transactions: exactly_once enabled", bootstrap)


def on_worker_init(app: Any, **kwargs: Any) -> None:
    """``app.on_worker_init`` receiver: check transactions when ``exactly_once`` is on."""
    guarantee = app.conf.processing_guarantee
    if getattr(guarantee, "value", guarantee) != "exactly_once":
        return
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    conf = app.conf
    bootstrap = ",".join(f"{url.host}:{url.port or 9092}" for url in conf.broker)
    auth = dict(credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context))
    require_transactions(bootstrap, conf.id, auth)


# ------------------------------------------------------------------------- transactions
#
# What Faust 0.15.3 does under exactly_once, and what storestream changes (measured on Apache
# Kafka 4.4 by dumping record batch attributes of each topic's segments):
#
# * Faust picks the transactional producer of a record by its *destination* partition
#   (faust/transport/consumer.py TransactionManager.send: ``consumer.key_partition(topic,
#   key)`` then ``{app_id}-{group_for_topic(topic)}-{partition}``). For a topic the worker does
#   not consume (``loyalty.events``, ``dead-letters``) the consumer's metadata has no
#   partitions, ``key_partition`` returns None and the record goes to the plain producer:
#   measured, every loyalty event was written outside any transaction (producer id of the
#   app's idempotent producer, no transactional bit), and a SIGKILL then a restart wrote tier
#   events twice. Offers (``customers.promotions`` is consumed by the worker too) went to the
#   transaction of their destination partition: the right one only while the key hashes to
#   the source partition's number; otherwise another partition's transaction, or none when
#   another worker owns that partition (``ProducerSendError``). :class:`TransactionManager`
#   sends a record produced while an event is processed with the producer of the event's
#   *source* partition, the one whose transaction commits that event's offset.
# * Faust's commit under exactly_once does not flush its producer buffer (consumer.py
#   ``_commit_offsets``: ``producer.flush()`` only in the at_least_once branch), so table
#   changelog records still in the buffer when the offsets are chosen go into the next
#   transaction: a crash in between loses them with their offsets committed. And it chooses
#   the offsets while agents keep processing: records of events processed after that moment
#   (not acked yet) go into the transaction committing the older offsets, so after a crash
#   such an event is processed again on top of part of its own output. :func:`commit_barrier`
#   (around the consumer's ``force_commit``) holds new events at :data:`GATE`, waits until
#   no event is half-processed, flushes the buffer, and only then lets Faust choose the
#   offsets and commit: each transaction holds exactly the output of the offsets it commits.


class CommitGate:
    """Events are processed between commits, never across one (exactly_once only).

    Each event's processing runs inside :meth:`event`; :meth:`closed` stops new events at the
    gate and returns once none is in flight. With nothing closing it (at_least_once) it costs
    three counter updates per event.

    It also tells whether everything processed is committed (:attr:`settled`, under either
    guarantee): what :mod:`app.runtime.local_state` needs to trust a worker's local state
    after it stops.
    """

    def __init__(self) -> None:
        self._in_flight = 0
        #: Events (or batches) that entered the gate, and how many of the first ones a
        #: successful commit covers.
        self.entered = 0
        self.committed_through = 0
        #: Why output of processed events may be lost although a later commit succeeded
        #: (e.g. a transaction abandoned with its revoked partitions); ``None``: nothing.
        self.tainted: str | None = None
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """Events being processed now."""
        return self._in_flight

    @property
    def unsettled(self) -> int:
        """Events entered since the last successful commit began (or being processed)."""
        return self.entered - self.committed_through

    @property
    def settled(self) -> bool:
        """Whether every event processed so far is in a successful commit and none of their
        output was dropped: the local state holds nothing the changelogs lack."""
        return self.tainted is None and not self.unsettled and not self._in_flight

    def commit_begins(self) -> int:
        """How many events a commit beginning now covers, for :meth:`commit_succeeded`: those
        done (under at_least_once events still being processed may not have queued their
        output yet)."""
        return self.entered - self._in_flight

    def commit_succeeded(self, through: int) -> None:
        """A commit that began once ``through`` events had entered succeeded: their output
        is acknowledged (at_least_once) or committed (exactly_once), their offsets too."""
        self.committed_through = max(self.committed_through, through)

    def taint(self, reason: str) -> None:
        """Output of processed events was dropped: never settled again in this process."""
        if self.tainted is None:
            log.warning("local state not settled until restart: %s", reason)
            self.tainted = reason

    @contextlib.asynccontextmanager
    async def event(self) -> AsyncIterator[None]:
        """Process one event (or one batch) between two commits."""
        while not self._open.is_set():
            await self._open.wait()
        self._in_flight += 1
        self.entered += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def closed(self) -> AsyncIterator[None]:
        """Hold new events; enter once no event is in flight; reopen on the way out."""
        self._open.clear()
        try:
            started = time.monotonic()
            while not self._idle.is_set():
                try:
                    await asyncio.wait_for(self._idle.wait(), IDLE_WARNING_S)
                except TimeoutError:
                    log.warning("commit waits for %d event(s) in flight for %.0f s",
                                self._in_flight, time.monotonic() - started)
            yield
        finally:
            self._open.set()


#: Logged when a commit has waited this long for events in flight (s).
IDLE_WARNING_S = 10.0

#: The worker's gate: agents process events inside ``GATE.event()``.
GATE = CommitGate()


@contextlib.asynccontextmanager
async def commit_barrier(app: Any) -> AsyncIterator[None]:
    """Around a consumer commit: under exactly_once, no event in flight and every record of
    the events processed so far handed to its transactional producer (at_least_once:
    nothing)."""
    if not app.in_transaction:
        yield
        return
    async with GATE.closed():
        await app.producer.flush()
        await LANE_WRITERS.flush(app.producer)
        yield


class LaneWriter(BulkWriter):
    """The fast lane's records of one source partition under exactly_once.

    Queued like the at_least_once lane's (:class:`app.runtime.bulk.BulkWriter`, in the same
    synchronous step as the table change) and sent as they come by :class:`LaneWriters`, with
    the partition's transactional producer, always under Faust's lock of that producer (never
    while it commits); :func:`commit_barrier` sends what is left and waits for the broker
    before Faust commits the partition's offsets in that transaction. Deliveries are reported
    to their callbacks (a table store's persisted offset) only once that transaction has
    committed (:meth:`committed`): a record acknowledged may still be aborted before, and a
    ``rocksdb://`` restart must then read it again, or rather, not find it.
    """

    #: The transaction makes a batch's state and output visible together.
    STATE_AFTER_OUTPUT = False

    def __init__(self, wake: asyncio.Event) -> None:
        super().__init__()
        self._wake = wake
        #: Per destination: the callback to report to after the commit, and the highest
        #: offset acknowledged in the open transaction.
        self._after_commit: dict[tuple[str, int], Delivered] = {}
        self._acknowledged: dict[tuple[str, int], int] = {}

    def enqueue_record(self, topic: str, partition: int, record: Any) -> None:
        super().enqueue_record(topic, partition, record)
        self._wake.set()

    def on_delivered(self, topic: str, partition: int, callback: Delivered,
                     owner: object = None) -> None:
        """Report to ``callback`` after the transaction commits (:meth:`committed`)."""
        destination = (topic, partition)
        self._after_commit[destination] = callback
        super().on_delivered(topic, partition,
                             partial(self._acknowledged.__setitem__, destination), owner)

    def committed(self) -> None:
        """Its transaction committed: report what it acknowledged."""
        acknowledged = dict(self._acknowledged)
        self._acknowledged.clear()
        for destination, offset in acknowledged.items():
            self._after_commit[destination](offset)

    @property
    def queued(self) -> bool:
        """Whether records wait to be handed to the producer."""
        return bool(self._queued)


class LaneWriters:
    """One :class:`LaneWriter` per transactional id (source partition), created on use, and
    the task that hands their records to the transactional producers as they come."""

    def __init__(self) -> None:
        self._writers: dict[str, LaneWriter] = {}
        self._wake = asyncio.Event()
        self._sender_started = False
        self._failed: BaseException | None = None

    def writer(self, app: Any, topic: str, partition: int) -> LaneWriter:
        """The writer of the transaction that commits ``topic``/``partition``'s offsets."""
        if not self._sender_started:
            self._sender_started = True
            app.producer.add_future(self._send_as_they_come(app.producer))
        tid = source_transaction(app, topic, partition)
        writer = self._writers.get(tid)
        if writer is None:
            writer = self._writers[tid] = LaneWriter(self._wake)
        return writer

    @property
    def pending(self) -> int:
        """Records queued or in flight, not yet acknowledged."""
        return sum(writer.pending for writer in self._writers.values())

    async def _send_as_they_come(self, producer: Any) -> None:
        """Hand queued records to their producers while batches are processed (the commit
        barrier then has little left to send). A failure is raised by the next
        :meth:`flush`: that commit must not happen."""
        while self._failed is None:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._drain_all(producer)
            except Exception as exc:
                log.error("fast-lane records not sent in their transaction: %r", exc)
                self._failed = exc

    async def _drain_all(self, producer: Any) -> list[tuple[LaneWriter, Any]]:
        drained: list[tuple[LaneWriter, Any]] = []
        for tid, writer in list(self._writers.items()):
            if not writer.pending:
                continue
            txn = producer._transaction_producers.get(tid)
            if txn is None:  # revoked meanwhile: its transaction is abandoned
                log.warning("dropping %d fast-lane records of %s: no transactional producer",
                            writer.pending, tid)
                self._writers.pop(tid, None)
                continue
            if writer.queued:
                async with producer._trn_locks[tid]:
                    await writer.drain(txn)
            drained.append((writer, txn))
        return drained

    async def flush(self, producer: Any) -> None:
        """Hand every queued record to its transactional producer; wait for the broker's
        acknowledgements; raise a failed send (the commit must not happen then)."""
        if self._failed is not None:
            raise self._failed
        for writer, txn in await self._drain_all(producer):
            await writer.flush(txn)

    def committed(self, tids: Iterable[str]) -> None:
        """The transactions ``tids`` committed: their writers report their deliveries."""
        for tid in tids:
            writer = self._writers.get(tid)
            if writer is not None:
                writer.committed()

    def discard(self, tids: Iterable[str]) -> None:
        """Forget the records of revoked partitions: their transactions are abandoned and
        the events are processed again by the partitions' next owner."""
        for tid in tids:
            dropped = self._writers.pop(tid, None)
            if dropped is not None and dropped.pending:
                log.info("revoked %s: %d uncommitted fast-lane records dropped", tid,
                         dropped.pending)


#: The worker's fast-lane writers under exactly_once.
LANE_WRITERS = LaneWriters()


def source_transaction(app: Any, topic: str, partition: int) -> str:
    """Faust's transactional id of a source partition (faust/transport/consumer.py)."""
    return f"{app.conf.id}-{app.assignor.group_for_topic(topic)}-{partition}"


class TransactionManager(_FaustTransactionManager):  # type: ignore[misc]
    """Faust's transaction manager, sending what an event produces in the transaction that
    commits the event's offset (see the notes above)."""

    _warned: set[str]

    def __post_init__(self) -> None:
        super().__post_init__()
        self._warned = set()

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, timestamp: float | None, headers: Any, *,
                   transactional_id: str | None = None) -> Any:
        event = current_event()
        if event is not None:
            tp = event.message.tp
            return await self.producer.send(
                topic, key, value, partition, timestamp, headers,
                transactional_id=source_transaction(self.app, tp.topic, tp.partition))
        # No event: Faust's producer buffer sending a table's changelog record, whose
        # partition is the source partition (Faust's choice is right for it).
        if partition is None and topic not in self._warned:
            self._warned.add(topic)
            log.warning("record for %s sent outside any event under exactly_once: Faust "
                        "picks its transaction by destination partition", topic)
        return await super().send(topic, key, value, partition, timestamp, headers)

    async def commit(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        """Faust's; once the transactions committed, the fast lane's deliveries in them are
        reported (:meth:`LaneWriter.committed`) and so are Faust's own changelog writes
        (:meth:`_persist_committed`)."""
        tids = self._tps_to_transactional_ids(set(offsets))
        committed = bool(await super().commit(offsets, start_new_transaction))
        if committed and not self.app.crashed:  # Faust crashes the app when fenced
            LANE_WRITERS.committed(tids)
            self._persist_committed(tids)
        return committed

    def _persist_committed(self, tids: set[str]) -> None:
        """Set the persisted offsets Faust keeps pending for its own changelog writes under
        exactly_once (the agent path's tables; with the fast lane, the reference tables)
        whose transaction just committed. Faust's ``TableManager.on_commit`` looks them up
        by the source partitions committed while they are kept by changelog partition, so
        they were never persisted (faust-streaming 0.15.3), and every restart on ``rocksdb://``
        read those changelogs whole. A changelog partition is written in the transaction of
        the source partition with its number, in its topic group."""
        pending = cast(Any, self.app.tables)._pending_persisted_offsets
        for tp, (store, offset) in list(pending.items()):
            try:
                tid = source_transaction(self.app, tp.topic, tp.partition)
            except KeyError:  # a topic the assignment does not know (yet)
                continue
            if tid in tids:
                store.set_persisted_offset(tp, offset)
                del pending[tp]

    async def on_rebalance(self, assigned: Any, revoked: Any, newly_assigned: Any) -> None:
        """Faust's (stop the revoked partitions' producers, start the assigned ones'), and
        drop the fast lane's records of revoked partitions (their transactions are abandoned:
        with events processed since the last commit, the local state holds output that the
        changelogs will not, :meth:`CommitGate.taint`)."""
        if revoked and GATE.unsettled:
            GATE.taint(f"{len(revoked)} partition(s) revoked with {GATE.unsettled} event(s) "
                       "processed since the last commit (their transactions are abandoned)")
        LANE_WRITERS.discard(self._tps_to_transactional_ids(revoked))
        await super().on_rebalance(assigned, revoked, newly_assigned)
