"""The aiokafka transport: a configurable fetch wait, fetch schedules, aiokafka on the
worker's loop with paused partitions cheap in its fetch loop (:mod:`app.runtime.fetch_actions`), the
fast lane and the next fetch sent before urgent batches run, a flush that drains.

Faust hard-codes ``fetch_max_wait_ms=1500``; a broker that does not answer a waiting fetch
early when data arrives (the embedded Tansu, DESIGN section 7) then adds up to 1.5 s per hop.
Faust keeps the group, assignment, rebalances, commits and recovery; this transport changes
how records are fetched and handed over, and how the producer flushes.

Private internals mirrored (listed in app/runtime/internals.py; checked against
faust-streaming 0.15.3, mode-streaming 0.7.1 and aiokafka 0.14.0, re-check on upgrade):

- faust ``faust.transport.drivers.aiokafka``: ``AIOKafkaConsumerThread._create_worker_consumer``
  (overridden), ``AIOKafkaConsumerThread._consumer``, ``Consumer._to_message``,
  ``Producer._producer``, ``Producer._ensure_producer``, ``Producer._settings_extra``
  (overridden), ``Transport._really_create_topic`` and ``Transport._get_controller_node``
  (overridden); ``faust.transport.consumer``: ``ThreadDelegateConsumer._thread``,
  ``ThreadDelegateConsumer._new_consumer_thread`` (overridden), ``Consumer.getmany`` (body
  copied, with the fast lane), ``Consumer.ack`` (body copied in ``_ack_offsets``),
  ``Consumer._wait_next_records``, ``Consumer._buffered_partitions``,
  ``Consumer._read_offset``, ``Consumer._add_gap``, ``Consumer._committed_offset``,
  ``Consumer._acked_index``, ``Consumer._acked``, ``Consumer._n_acked``,
  ``Consumer.commit_and_end_transactions``, ``Consumer.on_partitions_revoked``,
  ``Consumer.on_partitions_assigned`` (overridden), ``Consumer._unacked_messages`` and
  ``Message.acked`` (set by ``withhold``);
  ``faust.types.tuples.ack_lock``; ``faust.transport.producer.ProducerBuffer._send_pending``.
- mode (:class:`InlineConsumerThread`): ``mode.threads.ServiceThread.start`` and
  ``ServiceThread.stop`` (replaced, same order of steps), ``ServiceThread._thread_started``,
  ``QueueServiceThread.call_thread``, ``QueueServiceThread.cast_thread`` (replaced);
  ``mode.services.Service._default_start``, ``Service._default_stop_children``,
  ``Service._default_stop_futures``, ``Service._default_stop_exit_stacks``,
  ``Service._started``, ``Service._stopped``, ``Service._shutdown``.
- aiokafka: ``aiokafka.consumer.consumer.AIOKafkaConsumer._fetch_max_wait_ms`` (set before
  start), ``AIOKafkaConsumer._fetcher``, ``AIOKafkaConsumer._subscription``;
  ``aiokafka.consumer.subscription_state.SubscriptionState.subscription``,
  ``TopicPartitionState.has_valid_position``, ``TopicPartitionState.position``;
  ``aiokafka.consumer.fetcher.Fetcher._records``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, cast

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.protocol.metadata import MetadataRequest
from faust.events import Event
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from faust.types.tuples import ack_lock

from app.delivery import pusher
from app.runtime import fastlane, fetch_actions, guarantees, membership, stable_offsets
from app.runtime.bulk import BulkWriter
from app.runtime.fetch_schedule import FetchSchedule
from app.settings import SETTINGS
from core.config import Settings, repartition_mode
from core.repartition import OWNER_FIELDS, repartition_topic

log = logging.getLogger(__name__)

stable_offsets.install()

#: The offers topic's backstop reads it once per ``OFFER_BACKSTOP_MS`` while the pusher leaves
#: offers to it, else once per this many times that (every offer was pushed).
BACKSTOP_QUIET_FACTOR = 10


class FetchWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):  # type: ignore[misc]
    """Faust's consumer thread: the fetch wait taken from settings, reference topics and
    idle purchases partitions fetched once per ``REFERENCE_FETCH_INTERVAL_MS``, and offers
    (with direct push) once per ``OFFER_BACKSTOP_MS`` (:mod:`app.runtime.fetch_schedule`)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = SETTINGS.fetch_wait_ms
        if self.consumer.in_transaction:  # read_committed: committed offsets read stable too
            stable_offsets.ask_stable(consumer)
        return consumer

    async def on_start(self) -> None:
        """Start aiokafka, then (in a worker) the fetch schedules."""
        await super().on_start()
        self._fetch_log = fetch_actions.FetchLog()
        if self._consumer is not None:  # paused partitions cost nothing per fetch wake
            fetch_actions.skip_paused(self._consumer._fetcher, self.thread_loop,
                                      self._fetch_log, urgent=fastlane.URGENT)
        if self.app.client_only:
            return
        if self._consumer is not None:  # a cut-off worker sends no dead letter
            membership.watch(self._consumer)
        topics = SETTINGS.topics
        if SETTINGS.reference_fetch_interval_ms > 0:
            self._schedule(FetchSchedule.for_fetch_wait(
                topics.reference, SETTINGS.reference_fetch_interval_ms,
                SETTINGS.fetch_wait_ms, idle_topics=idle_inputs(SETTINGS)))
        if SETTINGS.direct_push:
            # Offers are pushed by the worker that emits them; their topic is the backstop.
            # Read soon when the pusher left offers to it, else after a quiet interval.
            self._schedule(FetchSchedule.for_fetch_wait(
                (topics.offers,), SETTINGS.offer_backstop_ms, SETTINGS.fetch_wait_ms,
                quiet_interval_ms=BACKSTOP_QUIET_FACTOR * SETTINGS.offer_backstop_ms),
                due=pusher.backstop_due)

    def _schedule(self, schedule: FetchSchedule,
                  due: Callable[[], bool] | None = None) -> None:
        """Run ``schedule`` on this thread's aiokafka consumer for the thread's life."""
        self.add_future(schedule.run(
            lambda: self._consumer, self._fetched_not_taken, self.sleep,
            lambda: not self.should_stop, self._positions, self._fetch_log.answered, due))

    def _positions(self) -> dict[Any, int]:
        """Each assigned partition's next offset to fetch (those with a known position).

        Read from aiokafka 0.14's subscription state (no public synchronous accessor);
        re-check on upgrade, like :mod:`app.runtime.recovery`.
        """
        subscription = getattr(getattr(self._consumer, "_subscription", None), "subscription",
                               None)
        assignment = getattr(subscription, "assignment", None)
        if assignment is None:
            return {}
        out: dict[Any, int] = {}
        for tp in assignment.tps:
            state = assignment.state_value(tp)
            if state is not None and state.has_valid_position:
                out[tp] = state.position
        return out

    def _fetched_not_taken(self) -> Any:
        """Partitions whose fetched records aiokafka holds, not yet taken by Faust (aiokafka
        0.14's fetcher buffer)."""
        fetcher = getattr(self._consumer, "_fetcher", None)
        return getattr(fetcher, "_records", None) or {}


def idle_inputs(settings: Settings) -> tuple[str, ...]:
    """Input topics whose idle partitions are fetched once per ``REFERENCE_FETCH_INTERVAL_MS``
    (:class:`app.runtime.fetch_schedule.FetchSchedule`): purchases, returns, the store
    associates' alerts and every repartition topic but the positions'.

    A partition in every fetch costs each fetch's request and reply (encoded and decoded
    in Python by aiokafka) and the broker's work, whether it holds records or not. With the
    repartition topics (keyless records only, 8 partitions each) and the alerts in every
    fetch, the positions' fetches named 73 partitions where 9 carry positions (measured at
    500 positions/s on Apache Kafka). The positions' own repartition topic stays in every
    fetch: keyless positions are waited for like keyed ones.
    """
    topics = settings.topics
    forwarded = [repartition_topic(topics.name(base)) for base in OWNER_FIELDS
                 if base != "customers.locations" and repartition_mode(settings, base) != "off"]
    return (topics.purchases, topics.returns, topics.associates, *forwarded)


class InlineConsumerThread(FetchWaitConsumerThread):
    """The same consumer service on the worker's own event loop, with no thread.

    Faust runs aiokafka in a thread of its own, so every ``getmany`` (and commit, seek,
    position) is a round trip between two event loops: two self-pipe wake-ups, and a
    thread that takes the GIL from the loop running the agents. Measured on 2 cores: the
    loyalty worker's events/s +17-22% without it (50.6-58.2k vs 43.4-47.7k), and at 500
    positions/s the worker's CPU 40-42% instead of 46-50% (bench/RESULTS.md). aiokafka
    is an asyncio library; its fetcher, heartbeat and coordinator are tasks on this loop.
    ``CONSUMER_THREAD=on`` keeps Faust's thread.
    """

    def __init__(self, consumer: Any, *, loop: asyncio.AbstractEventLoop,
                 **kwargs: Any) -> None:
        super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)

    async def start(self) -> None:
        """Start as a plain service on this loop (no thread, no method queue)."""
        self._thread_started.set()
        await self._default_start()

    async def stop(self) -> None:
        """Stop aiokafka (Faust's own thread-stop step), then this service's children, tasks
        and exit stacks, in the order mode's thread would."""
        if not self._started.is_set() or self._stopped.is_set():
            return
        self._stopped.set()
        await self.on_stop()
        await self.on_thread_stop()
        await self._default_stop_children()
        await self._default_stop_futures()
        await self._default_stop_exit_stacks()
        self._shutdown.set()
        await self.on_shutdown()

    async def call_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fun`` here and now (it is already on the consumer's loop)."""
        result = fun(*args, **kwargs)
        if inspect.isawaitable(result):
            return await result
        return result

    async def cast_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """:meth:`call_thread`, result ignored."""
        await self.call_thread(fun, *args, **kwargs)


class Consumer(faust_aiokafka.Consumer):  # type: ignore[misc]
    """Faust's aiokafka consumer: configurable fetch wait, and the fast lane.

    Records of topics registered in :data:`app.runtime.fastlane.LANES` are handed to their handler a
    partition's batch at a time (see :mod:`app.runtime.fastlane`); every other record goes through
    Faust's conductor to its agents as usual.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        #: Per partition: (generation, highest offset) processed by the lane in that generation.
        self._lane_done: dict[TP, tuple[int, int]] = {}
        #: Records handed to a lane at a time, adapted to how long a chunk takes (lane_chunk).
        self._lane_chunk = LANE_CHUNK
        #: Records the lanes processed since the last commit, and a caught-up commit running.
        self._lane_since_commit = 0
        self._caught_up_commit: asyncio.Future[Any] | None = None

    def pause_partitions(self, tps: Iterable[TP]) -> None:
        """Faust's pause; aiokafka stops fetching paused changelog partitions too."""
        tps = set(tps)
        super().pause_partitions(tps)
        self._changelog_fetch(tps, pause=True)

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        """Faust's resume; aiokafka fetches resumed changelog partitions again."""
        tps = set(tps)
        super().resume_partitions(tps)
        self._changelog_fetch(tps, pause=False)

    def _changelog_fetch(self, tps: set[TP], *, pause: bool) -> None:
        """Mirror a Faust pause or resume of changelog partitions in aiokafka.

        Faust's pause is only a filter on what it takes from aiokafka: aiokafka keeps
        fetching every assigned partition, so one worker's fetches covered 129 partitions
        where 56 carry input; the other 73 were its tables' own changelogs, paused by Faust
        once recovered, whose records are fetched, decoded and then never taken. Changelog
        partitions only: input partitions keep Faust's own (proven) fetch behaviour. Runs on
        the consumer thread's loop, in call order.
        """
        thread = getattr(self, "_thread", None)
        consumer = getattr(thread, "_consumer", None)
        changelogs = self.app.tables.changelog_topics
        wanted = [TopicPartition(tp.topic, tp.partition) for tp in tps
                  if tp.topic in changelogs]
        if thread is None or consumer is None or not wanted:
            return

        def apply() -> None:
            assigned = consumer.assignment()
            chosen = [tp for tp in wanted if tp in assigned]
            if chosen:
                (consumer.pause if pause else consumer.resume)(*chosen)

        thread.thread_loop.call_soon_threadsafe(apply)

    def fetch_counts(self) -> dict[tuple[str, str], int]:
        """Assigned partitions by (kind, state): changelog/input, fetching/paused in aiokafka."""
        consumer = getattr(getattr(self, "_thread", None), "_consumer", None)
        counts: dict[tuple[str, str], int] = {}
        if consumer is None:
            return counts
        try:  # read from the event loop while the consumer thread owns the state
            assigned, paused = consumer.assignment(), consumer.paused()
        except RuntimeError:  # changed during iteration: a rebalance; next scrape
            return counts
        changelogs = self.app.tables.changelog_topics
        for tp in assigned:
            key = ("changelog" if tp.topic in changelogs else "input",
                   "paused" if tp in paused else "fetching")
            counts[key] = counts.get(key, 0) + 1
        return counts

    async def force_commit(self, topics: Any = None,
                           start_new_transaction: bool = True) -> bool:
        """Faust's commit; under exactly_once with no event half-processed and every record
        of the processed ones with its transactional producer (:func:`app.runtime.guarantees.
        commit_barrier`)."""
        self._lane_since_commit = 0
        async with guarantees.commit_barrier(self.app):
            through = guarantees.GATE.commit_begins()
            committed = cast(bool, await super().force_commit(
                topics, start_new_transaction=start_new_transaction))
            if committed:
                guarantees.GATE.commit_succeeded(through)
            return committed

    def _commit_if_caught_up(self, tps: Iterable[TP], processed: int) -> None:
        """Commit now, not at the next commit interval, once the lanes have processed at least
        CAUGHT_UP_COMMIT_RECORDS records since the last commit and the partitions just read
        hold nothing more to read: a backlog's end is committed at once (a crash right after
        it reads back less), while a steady trickle keeps the interval's commits."""
        self._lane_since_commit += processed
        if (self._lane_since_commit < CAUGHT_UP_COMMIT_RECORDS or self.app.in_transaction
                or (self._caught_up_commit is not None and not self._caught_up_commit.done())):
            return
        if not caught_up([(self._read_offset.get(tp), self.highwater(tp)) for tp in tps]):
            return
        self._lane_since_commit = 0
        self._caught_up_commit = asyncio.ensure_future(self._commit_after_any_in_flight())
        self._caught_up_commit.add_done_callback(_log_commit_failure)

    async def _commit_after_any_in_flight(self, start_new_transaction: bool = True) -> None:
        """A commit of what is processed now: Faust's ``commit`` returns without committing
        when one is in flight, and one begun before the last records were processed would
        leave them to the next commit interval (measured: 2.7 s of a 17-s bench window)."""
        for _ in range(COMMIT_WAITS):
            if not await self.maybe_wait_for_commit_to_finish():
                break
        await self.commit(start_new_transaction=start_new_transaction)

    async def commit_and_end_transactions(self) -> None:
        """Faust's last commit before a rebalance (and on stop), made even when a commit was
        in flight: Faust's ``commit`` only waits for that one and returns, so under
        exactly_once the transactions it had begun stayed open through the rebalance with the
        output of every event processed since. A partition kept by the worker keeps its open
        transaction (Faust begins none while one is open: ``Invalid state transition
        IN_TRANSACTION -> IN_TRANSACTION``) and is read again from its committed offset, so
        that output went in twice (the cluster run under exactly_once: dead letters twice,
        each pair one worker's, 3-5 s apart, around a commit overlapping a broker fault)."""
        await self._commit_after_any_in_flight(start_new_transaction=False)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Faust's, after a last commit under exactly_once.

        Faust forgets the revoked partitions' acknowledgements first and commits after
        (faust-streaming 0.15.3: ``Consumer.on_partitions_revoked``, then the app's handler),
        so the output of the events processed since the last commit stayed in the open
        transactions while their offsets were never committed. A partition the worker keeps
        (an eager rebalance revokes them all) is read again from its committed offset into
        the same transaction: measured on Apache Kafka 4.4 with a second exactly_once worker
        joining mid-stream, offers written twice with the same ids on the committed topic.
        Here the flow stops first (the recovery that follows the assignment resumes it) and
        everything processed is committed while the acknowledgements are still known."""
        if self.app.in_transaction and revoked and not self.should_stop:
            self.stop_flow()
            try:
                await self._commit_after_any_in_flight()
            except Exception as exc:  # the transactions are abandoned then: taint says so
                self.log.warning("commit before the rebalance failed: %r", exc)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        """Faust's, after noting that the group just answered: a completed join proves
        membership as a heartbeat does. The first heartbeat comes an interval after it, and
        a worker that took longer than its session timeout to join looked cut off until
        then (its dead letters held back: :mod:`app.runtime.membership`)."""
        membership.MEMBERSHIP.heartbeat_ok()
        await super().on_partitions_assigned(assigned, generation_id)

    def withhold(self, message: Any) -> None:
        """Never acknowledge ``message`` (a Faust ``Message``) in this generation: its
        partition is read again from its committed offset, at or below it, after the
        rebalance that is coming (a dead letter held back off the fast lane:
        :func:`app.outcomes.dead_letter_once`). Faust's ``ack`` skips a message marked
        acknowledged; a rebalance's wait for unacknowledged messages no longer counts it."""
        with ack_lock:
            message.acked = True
            self._unacked_messages.discard(message)

    def _new_consumer_thread(self) -> FetchWaitConsumerThread:
        if SETTINGS.consumer_thread:
            return FetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)
        return InlineConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        """Faust's ``getmany``, with fast-lane records dispatched in batches first.

        With the fast lane off every record takes Faust's path, and records Faust does not
        take are rewound either way (:meth:`_rewind`).
        """
        lanes = fastlane.LANES if fastlane.enabled(self.app.in_transaction) else {}
        records, active = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records and any(tp.topic in fastlane.URGENT for tp in records):
            await _let_fetcher_send()
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            try:
                await self.perform_seek()
            except Exception as exc:
                self.log.warning("exception performing seek when flow not active %r", exc)
            return
        rest = {}
        not_taken: dict[TP, int] = {}
        laned: list[TP] = []
        processed = 0
        for tp, batch in sorted(records.items(), key=_urgent_first):
            handler = lanes.get(tp.topic)
            if handler is None:
                rest[tp] = batch
                continue
            laned.append(tp)
            processed += len(batch)
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                return
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                not_taken[tp] = batch[0].offset
                continue
            if tp.topic in fastlane.PACED:
                # the batch in few calls, each sliced by the handler (fastlane.Pace): a key's
                # state is written once per call (up to PACED_KEYS keys), not once per chunk
                def still_ours() -> bool:
                    return bool(self.flow_active
                                and self.app.consumer_generation_id == generation_id)

                for part in paced_parts(batch, PACED_KEYS):
                    if not still_ours():
                        not_taken[tp] = part[0].offset
                        break
                    pace = fastlane.Pace(self._lane_chunk, lane_chunk, still_ours)
                    finished = await self._run_lane(tp, part, handler, pace)
                    self._lane_chunk = pace.size
                    if not finished:
                        not_taken[tp] = part[0].offset
                        break
                    await asyncio.sleep(0)
                    await self._lane_room()
                continue
            start = 0
            while start < len(batch):
                if start and (not self.flow_active
                              or self.app.consumer_generation_id != generation_id):
                    not_taken[tp] = batch[start].offset
                    break
                size = self._lane_chunk
                began = time.monotonic()
                await self._run_lane(tp, batch[start:start + size], handler)
                start += size
                self._lane_chunk = lane_chunk(size, time.monotonic() - began)
                # Let the loop run between chunks: heartbeats, commits, the web server and
                # the producer's sends wait for it (see LANE_CHUNK); and the producer catch
                # up when the chunks' records outrun it (BulkWriter.wait_for_room).
                await asyncio.sleep(0)
                await self._lane_room()
        if processed and not not_taken:
            self._commit_if_caught_up(laned, processed)
        to_message = self._to_message
        for tp, record in self.scheduler.iterate(rest):
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                break
            if active is None or tp in active or tp in self._buffered_partitions:
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                yield tp, to_message(tp, record)
            elif tp not in not_taken:
                not_taken[tp] = record.offset
        await self._rewind(not_taken)

    async def _lane_room(self) -> None:
        """Let the bulk writer catch up when it is far behind (:meth:`BulkWriter.make_room`)."""
        bulk = getattr(self.app.producer, "bulk", None)
        if bulk is None or self.app.in_transaction:
            return
        await bulk.make_room()

    async def _rewind(self, offsets: dict[TP, int]) -> None:
        """Seek partitions back to records that were fetched but not taken.

        aiokafka can hand over records of partitions Faust has paused (Faust's pause is only
        a filter, and the set of active partitions changes while a fetch is in flight); Faust
        drops them, but aiokafka's position has moved past them. Faust's recovery used to
        paper over this with a seek after resuming; with the seek first (see
        :mod:`app.runtime.recovery`) the records were skipped for good (measured: a partition never
        processed after a restart under CPU load). The next fetch starts at them again.
        """
        for tp, offset in offsets.items():
            try:
                await self.seek(tp, offset)
            except Exception as exc:  # no longer assigned: its next owner starts from commits
                self.log.info("not rewinding %s to %s: %r", tp, offset, exc)

    async def _run_lane(self, tp: TP, batch: list[Any], handler: fastlane.BatchHandler,
                        pace: fastlane.Pace | None = None) -> bool:
        """Process one partition's records in the fast lane, then acknowledge them; False
        when a paced handler gave the batch up (:class:`app.runtime.fastlane.Abandoned`)."""
        read = self._read_offset[tp]
        if read is not None:
            batch = [record for record in batch if record.offset >= read]
        generation = self.app.consumer_generation_id
        seen = self._lane_done.get(tp)
        if seen is not None and seen[0] == generation:
            # A seek back to the committed offsets within a generation (Faust's getmany seeks
            # whenever it finds the flow stopped) delivers again what the lane processed.
            batch = [record for record in batch if record.offset > seen[1]]
        if not batch:
            return True
        self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
        expected = read + 1 if read is not None else None
        first = batch[0]
        event = Event(self.app, first.key, first.value, first.headers,
                      self._to_message(tp, first))
        async with guarantees.GATE.event():  # exactly_once: processed and acked between commits
            fastlane.take_held()
            with fastlane.current_event(event), fastlane.pacing(pace):
                try:
                    await handler([fastlane.from_record(record) for record in batch])
                except fastlane.Abandoned:
                    fastlane.take_held()
                    return False
            held = fastlane.take_held()
            if self.app.consumer_generation_id != generation:
                # Rebalanced meanwhile: Faust forgot this generation's acknowledgements and
                # reads the partition again from its committed offset; one acknowledged now
                # could let a commit of the new generation pass a record never finished
                # (e.g. a dead letter held back: app.runtime.membership).
                return True
            if tp.topic in fastlane.URGENT:
                # Someone waits for this batch's output: hand it to aiokafka now rather than
                # when the bulk writer's task is next scheduled (measured at 500 positions/s:
                # queued -> sent 0.9/4.8 ms p50/p99 before, 0.1/1.2 ms after).
                await cast("Producer", self.app.producer).send_queued()
            for record in batch:
                if expected is not None and record.offset > expected:
                    await self._add_gap(tp, expected, record.offset - 1)
                expected = record.offset + 1
            self._ack_offsets(tp, [record.offset for record in batch
                                   if record.offset not in held])
            self._read_offset[tp] = batch[-1].offset
            self._lane_done[tp] = (generation, batch[-1].offset)
        return True

    async def settle_held(self, tp: TP, generation: int, offsets: list[int],
                          dead: tuple[fastlane.Source, Callable[[], Awaitable[None]]]
                          | None = None) -> bool:
        """Acknowledge offsets a lane held back (:func:`app.runtime.fastlane.hold`), after
        ``dead``'s work (dead-lettering some of them, as the event of its record), as one
        event between commits; False, doing nothing, when a rebalance came between (the
        partition is read again from its committed offset, at or below them)."""
        if generation != self.app.consumer_generation_id or tp not in self.assignment():
            return False
        async with guarantees.GATE.event():
            if generation != self.app.consumer_generation_id:
                return False
            if dead is not None:
                source, work = dead
                with fastlane.current_event(fastlane.event_of(self.app, source)):
                    await work()
            self._ack_offsets(tp, offsets)
        return True

    def _ack_offsets(self, tp: TP, offsets: list[int]) -> None:
        """Faust's ``ack`` for records that never became ``Message`` objects."""
        if not self.app.topics.acks_enabled_for(tp.topic):
            return
        with ack_lock:
            committed = self._committed_offset[tp]
            index = self._acked_index[tp]
            acked = self._acked[tp]
            for offset in offsets:
                if (committed is None or offset >= committed) and offset not in index:
                    index.add(offset)
                    acked.append(offset)
                    self._n_acked += 1


#: Commits in flight :meth:`Consumer.commit_and_end_transactions` waits out at most (a commit
#: timer starting right after the last would make its own commit wait for that one only).
COMMIT_WAITS = 3

#: Records of one partition handed to its lane at a time. A fetch can bring millions of bytes
#: per partition (CONSUMER_MAX_FETCH_SIZE, 4 MiB: ~30,000 purchases); processed in one go, a
#: backlog kept the event loop busy for seconds (measured: up to 5.3 s, keyless purchases read
#: back from their repartition topic), heartbeats were not sent, the session expired and the
#: group rebalanced in the middle of the backlog. Each chunk still writes each key's state
#: once, and between chunks the loop runs.
LANE_CHUNK = 32768
#: A chunk should keep the loop at most this long (heartbeats every BROKER_SESSION_TIMEOUT_S
#: / 3, 2 s by default): on a CPU-starved host 32,768 records took seconds and the group
#: session expired 3-8 times per bench run; the chunk shrinks until one takes about this long.
LANE_STEP_S = 0.5
#: The smallest chunk (smaller ones lose the per-batch writes of each key's state).
LANE_CHUNK_MIN = 1024
#: Distinct keys in one call of a paced lane (app.runtime.fastlane.PACED): its writes run in
#: one step at its end, ~110 us per key with returns and the tier window on (measured on the
#: slowest host yet, 2 cores at ~320 ms per sum(range(10**7))): ~0.45 s of loop for 4,096.
PACED_KEYS = 4096
#: Records processed by the lanes since the last commit from which a worker that has caught
#: up with its input commits at once (Consumer._commit_if_caught_up).
CAUGHT_UP_COMMIT_RECORDS = 10_000


def caught_up(positions: Iterable[tuple[int | None, int | None]]) -> bool:
    """Whether partitions, each given as (last offset processed, highwater), hold nothing
    more to read (unknown: not caught up)."""
    return all(read is not None and highwater is not None and read + 1 >= highwater
               for read, highwater in positions)


def paced_parts(batch: list[Any], max_keys: int) -> Iterator[list[Any]]:
    """``batch`` cut, in order, into parts of at most ``max_keys`` distinct record keys (a
    part's state is written in one step: its cost grows with its keys, not its records)."""
    keys: set[Any] = set()
    start = 0
    for index, record in enumerate(batch):
        key = record.key
        if key not in keys:
            if len(keys) == max_keys:
                yield batch[start:index]
                keys.clear()
                start = index
            keys.add(key)
    if start < len(batch):
        yield batch[start:] if start else batch


def lane_chunk(size: int, elapsed_s: float) -> int:
    """The next chunk size after a chunk of ``size`` records took ``elapsed_s``: shrunk to
    fit :data:`LANE_STEP_S` when it took longer, doubled (up to :data:`LANE_CHUNK`) when it
    took under a quarter of it."""
    if elapsed_s > LANE_STEP_S:
        return max(LANE_CHUNK_MIN, int(size * LANE_STEP_S / elapsed_s))
    if elapsed_s < LANE_STEP_S / 4:
        return min(LANE_CHUNK, size * 2)
    return size

#: Loop turns given to aiokafka before an urgent batch is processed: one for its fetch routine
#: to see the records taken and build the next request, one for the request's task to write
#: it, one to spare.
FETCH_AHEAD_YIELDS = 3


async def _let_fetcher_send() -> None:
    """Let aiokafka send the next fetch before the lanes run, not after.

    aiokafka builds the next fetch once records are taken, but in the fetch routine's own
    task, which runs only when this one yields: after every lane of the fetch had run and its
    output was handed over. With the request already on the wire, the broker's reply (or its
    fetch wait) overlaps the processing instead of following it. Measured at 500 positions/s
    in six alternating 15-s pairs: location-to-offer p99 28.9-49.6 ms against 31.8-50.3 ms,
    mean 37.9 against 43.5; the gap between a fetch reply and the next request was 1.3-1.8 ms
    p50 against the plain aiokafka loop's 0.4 ms before it.
    """
    for _ in range(FETCH_AHEAD_YIELDS):
        await asyncio.sleep(0)


def _log_commit_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("commit after catching up failed: %r", future.exception())


def _urgent_first(item: tuple[TP, Any]) -> bool:
    """Sort key: batches of :data:`app.runtime.fastlane.URGENT` topics first (``False`` first)."""
    return item[0].topic not in fastlane.URGENT


class CompleteFlushBuffer(ProducerBuffer):  # type: ignore[misc]
    """Faust's producer buffer, with a flush that waits until every message reached aiokafka.

    Faust flushes this buffer before committing offsets, but its flush gives up after 0.1 s
    without progress (DESIGN section 7: "a flush that can return early"). A commit after such
    a flush, then a SIGKILL, lost table writes whose input offsets were already committed:
    measured, 134 purchases in a fault run with 10 SIGKILLs.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.enqueued = 0
        self.published = 0

    def put(self, fut: Any) -> None:
        self.enqueued += 1
        super().put(fut)

    async def _send_pending(self, fut: Any) -> None:
        try:
            await super()._send_pending(fut)
        finally:
            self.published += 1

    async def flush(self) -> None:
        while self.published < self.enqueued and self.state == "running":
            await self.flush_atmost(None)
            if self.published < self.enqueued:
                await asyncio.sleep(0.001)


class Producer(faust_aiokafka.Producer):  # type: ignore[misc]
    """Faust's aiokafka producer whose flush drains its buffer completely.

    It also owns the :class:`app.runtime.bulk.BulkWriter` of the fast lane and flushes it with
    everything else before Faust commits offsets.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        buffer = CompleteFlushBuffer(loop=self.loop, beacon=self.beacon)
        buffer.app = self.app
        self.buffer = buffer
        self.bulk = BulkWriter(on_error=self._bulk_failed)

    async def on_start(self) -> None:
        """Start aiokafka, then the bulk writer's sender."""
        await super().on_start()
        self.add_future(self.bulk.run(self._ensure_producer()))

    async def send_queued(self) -> None:
        """Hand the bulk writer's queued records to aiokafka now (does not wait for acks)."""
        if self._producer is not None:
            await self.bulk.drain(self._producer)

    async def flush(self) -> None:
        """Everything queued (bulk records, Faust's buffer) acknowledged by the broker."""
        if self._producer is not None:
            await self.bulk.flush(self._producer)
        await super().flush()

    def _settings_extra(self) -> dict[str, Any]:
        """``PRODUCER_IDEMPOTENCE=on``: acks=all and idempotence without transactions too
        (a retried send after a broker fail-over is then written once)."""
        extra: dict[str, Any] = dict(super()._settings_extra())
        if SETTINGS.producer_idempotence:
            extra.update(acks="all", enable_idempotence=True)
        return extra

    def _bulk_failed(self, exc: BaseException) -> None:
        """A changelog batch was not written: stop the worker rather than diverge."""
        self.add_future(self.crash(exc))


#: Longest wait (s) for a topic just created (or found existing) to show in the metadata.
TOPIC_METADATA_WAIT_S = 10.0


async def _until_in_metadata(client: Any, topic: str, timeout_s: float) -> None:
    """Return once a metadata request shows ``topic`` with partitions (or after ``timeout_s``).

    Apache Kafka answers CreateTopics once the controller has committed the topic; a broker's
    metadata shows it a moment later (KRaft brokers replay the record). A consumer subscribing
    in that moment is told the changelog does not exist, its group leader assigns none of its
    partitions and records 0 for it until the next metadata refresh (5 min): measured on
    Kafka 4.4, the first dead letter of a fresh deployment then crashed the worker with
    ``PartitionsMismatch`` (dead_letter_marks "has 0 partitions").
    """
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            if (await client.fetch_all_metadata()).partitions_for_topic(topic):
                return
        except Exception as exc:  # the broker's own error handling applies later
            log.debug("metadata for new topic %s: %r", topic, exc)
        if asyncio.get_running_loop().time() >= deadline:
            log.warning("topic %s not in the broker's metadata %.0f s after its creation",
                        topic, timeout_s)
            return
        await asyncio.sleep(0.1)


#: How long topic creation keeps trying through broker errors that pass (s).
TOPIC_CREATE_PATIENCE_S = 90.0


def _passing(exc: BaseException) -> bool:
    """Whether a topic creation failed for a reason that passes: a broker down or moving
    (unreachable, not ready, timed out, not the controller any more)."""
    if isinstance(exc, KafkaError):
        return bool(exc.retriable) or isinstance(exc, KafkaConnectionError)
    return isinstance(exc, OSError | TimeoutError) or "Invalid controller" in str(exc)


async def _create_patiently(create: Callable[[], Awaitable[None]],
                            refresh: Callable[[], Awaitable[object]], topic: str,
                            patience_s: float = TOPIC_CREATE_PATIENCE_S) -> None:
    """``create()``, tried again while it fails for a reason that passes (metadata refreshed
    in between, 0.5 s doubling to 5 s), for up to ``patience_s``."""
    deadline = time.monotonic() + patience_s
    wait = 0.5
    while True:
        try:
            await create()
            return
        except Exception as exc:
            if not _passing(exc) or time.monotonic() + wait > deadline:
                raise
            log.warning("creating topic %s failed (%r), trying again in %.1f s", topic, exc,
                        wait)
        await asyncio.sleep(wait)
        wait = min(5.0, wait * 2)
        try:
            await refresh()
        except Exception as exc:  # the next try says what is wrong
            log.debug("metadata refresh before creating %s: %r", topic, exc)


class Transport(faust_aiokafka.Transport):  # type: ignore[misc]
    """``kafka://`` transport: configurable fetch wait, a producer flush that drains, topic
    creation that keeps trying while a broker is down and returns once the new topic is in
    the broker's metadata."""

    Consumer = Consumer
    Producer = Producer
    TransactionManager = guarantees.TransactionManager

    async def _really_create_topic(self, owner: Any, client: Any, topic: str,
                                   partitions: int, replication: int, **kwargs: Any) -> None:
        """Faust's, tried again through broker errors that pass: a worker (re)started while
        the broker Faust asked was down exited at once (``NodeNotReadyError`` declaring its
        leader topic, in the cluster run: a worker restarted during a leader kill)."""
        await _create_patiently(
            lambda: super(Transport, self)._really_create_topic(
                owner, client, topic, partitions, replication, **kwargs),
            client.force_metadata_update, topic)
        await _until_in_metadata(client, topic, TOPIC_METADATA_WAIT_S)

    async def _get_controller_node(self, owner: Any, client: Any,
                                   timeout: int = 30000) -> int | None:
        """Faust's, asking the brokers in turn until one answers (Faust asks the first only,
        down or not): the node a CreateTopics request goes to."""
        failure: BaseException | None = None
        for broker in list(client.cluster.brokers()):
            try:
                answer = await owner.wait(client.send(broker.nodeId, MetadataRequest([])),
                                          timeout=timeout)
            except Exception as exc:
                if not _passing(exc):
                    raise
                failure = exc
                continue
            if answer.stopped:
                return None
            return cast(int, answer.result.controller_id)
        raise failure if failure is not None else KafkaConnectionError("no broker known")


def install() -> None:
    """Make ``kafka://`` and ``aiokafka://`` URLs use this transport."""
    for scheme in ("kafka", "aiokafka"):
        drivers.TRANSPORTS.aliases[scheme] = "app.runtime.transport:Transport"
