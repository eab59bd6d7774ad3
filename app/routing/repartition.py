"""``REPARTITION`` in the worker: forwarding keyless (and misplaced) input records through
``<topic>.repartition``, and reading them back there exactly once (see core/repartition.py).

Forward (on the input topic): the record is re-keyed by its owner field and queued, with its
timestamp and its origin header, for the repartition topic's partition that
``KEY_PARTITIONER`` gives the owner: on the fast lane's writer (the producer's bulk writer,
flushed before any offset commit, or under exactly_once the writer of the source partition's
transaction) or, on Faust's own path under exactly_once, sent from the event's task (the
transaction of its source partition). The input record is then acknowledged without touching
any state. A record whose owner cannot be told goes to ``dead-letters`` with the reason.

Read back (on the repartition topic): the same handlers run as for the input topic, the
state's per-record offsets kept apart (``last_rp``), and a record forwarded a second time
(a crash between forward and commit) is skipped by the marks of :mod:`tables.repartition`.

Private internals mirrored (listed in app/runtime/internals.py; checked against
faust-streaming 0.15.3 and aiokafka 0.14.0, re-check on upgrade), to read the input
topics' partition counts from the worker's own consumer:
``faust.transport.consumer.ThreadDelegateConsumer._thread``,
``faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._ensure_consumer``,
``aiokafka.consumer.consumer.AIOKafkaConsumer._client``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

from faust.types import TopicT

from app.faust_app import METRICS, app
from app.outcomes import count_lane, dead_letter_all, dead_letter_once, lane_clock
from app.runtime import fastlane
from app.runtime.bulk import KEYED, BulkWriter, Record
from app.runtime.fastlane import Source
from app.runtime.guarantees import LANE_WRITERS
from app.settings import SETTINGS
from core.config import repartition_mode
from core.partitioners import partition_function
from core.repartition import (
    FORWARD,
    OWNER_FIELDS,
    Mark,
    NoOwner,
    decide,
    is_forwarded_again,
    next_mark,
    origin_header,
    owner,
    read_origin,
    repartition_topic,
)
from tables.batch import TableWrites
from tables.repartition import mark_key, repartition_marks

log = logging.getLogger(__name__)

REPARTITIONED = "repartitioned"


def _topic(name: str) -> TopicT:
    return app.topic(name, key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw")


#: Input topic -> (mode, owner field, repartition topic), for topics not ``off``.
FORWARDS: dict[str, tuple[str, str, TopicT]] = {}
#: Repartition topic name -> its input topic.
ORIGINS: dict[str, str] = {}
for _base, _field in OWNER_FIELDS.items():
    _mode = repartition_mode(SETTINGS, _base)
    if _mode != "off":
        _name = SETTINGS.topics.name(_base)
        FORWARDS[_name] = (_mode, _field, _topic(repartition_topic(_name)))
        ORIGINS[repartition_topic(_name)] = _name


def rp_topic(topic: str) -> TopicT | None:
    """The repartition topic of an input topic (``None``: ``REPARTITION`` is off for it)."""
    entry = FORWARDS.get(topic)
    return None if entry is None else entry[2]


def is_repartitioned(topic: str) -> bool:
    """Whether ``topic`` is a repartition topic (its offsets are not the input topic's)."""
    return topic in ORIGINS


def _record(source: Any, field: str) -> Record:
    """The forwarded form of an input record (raises :class:`NoOwner`)."""
    who = owner(source.value, field, source.key)
    stamp = source.timestamp
    return (who.encode(), source.value, None if stamp is None else int(stamp * 1000),
            [origin_header(source.partition, source.offset)])


def input_partition_count(topic: str) -> int | None:
    """Partitions of an input topic as the worker's consumer knows them (``None``: not yet)."""
    try:
        client = cast(Any, app.consumer)._thread._ensure_consumer()._client
        partitions = client.cluster.partitions_for_topic(topic)
    except Exception:  # no consumer yet, or no metadata for the topic yet
        return None
    return len(partitions) if partitions else None


def _placed_quietly(topic: str, partition: int, key: bytes) -> bool:
    """Whether ``KEY_PARTITIONER`` puts ``key`` on ``partition`` (not counted: the
    placement sensor counts Faust's path)."""
    count = input_partition_count(topic)
    if not count:
        return True
    return partition_function(SETTINGS.key_partitioner)(key, count) == partition


def _count(topic: str, forwarded: int) -> None:
    if forwarded:
        METRICS.inc("storestream_events_total", forwarded, topic=topic,
                    outcome=REPARTITIONED)


# ------------------------------------------------------------------------------ fast lane

def _lane_writer(first: Source) -> BulkWriter:
    if app.in_transaction:
        return LANE_WRITERS.writer(app, first.topic, first.partition)
    return cast(BulkWriter, cast(Any, app.producer).bulk)


def forwarding_lane(topic: str, handler: fastlane.BatchHandler,
                    check: Any) -> fastlane.BatchHandler:
    """A fast-lane handler of an input topic that checks each record's placement
    (``check``, :meth:`app.routing.partitioning.Placement.check`), forwards what ``REPARTITION``
    says and hands the rest to ``handler``."""
    mode, field, target = FORWARDS[topic]
    target_name = target.get_topic_name()

    async def forward_then_handle(batch: Sequence[Source]) -> None:
        started = lane_clock()
        keep: list[Source] = []
        failed: list[tuple[Source, str]] = []
        writer: BulkWriter | None = None
        forwarded = 0
        for source in batch:
            placed = check(source.topic, source.partition, source.offset, source.key)
            if decide(mode, source.key, placed) != FORWARD:
                keep.append(source)
                continue
            try:
                record = _record(source, field)
            except (NoOwner, UnicodeDecodeError) as exc:
                failed.append((source, str(exc)))
                continue
            if writer is None:
                writer = _lane_writer(source)
            writer.enqueue_record(target_name, KEYED, record)
            forwarded += 1
        _count(topic, forwarded)
        if forwarded:  # the lane's busy window (bench) covers the forwards as well
            count_lane([s for s in batch if s not in keep], started)
        if keep:
            await handler(keep)
        if failed:
            await dead_letter_all(failed)
    return forward_then_handle


def reading_lane(handler: fastlane.BatchHandler) -> fastlane.BatchHandler:
    """A fast-lane handler of a repartition topic: records forwarded again are skipped,
    the marks of the rest written (once per origin partition and batch), then ``handler``
    runs on them."""
    async def skip_then_handle(batch: Sequence[Source]) -> None:
        first = batch[0]
        if app.in_transaction:
            writes = TableWrites(first.partition,
                                 LANE_WRITERS.writer(app, first.topic, first.partition))
        else:
            writes = TableWrites(first.partition, cast(BulkWriter, cast(Any, app.producer).bulk))
        marks: dict[str, Mark | None] = {}
        moved: set[str] = set()
        keep: list[Source] = []
        for source in batch:
            origin = read_origin(source.headers)
            if origin is None:
                keep.append(source)
                continue
            key = mark_key(source.topic, source.partition, origin[0])
            mark = marks[key] if key in marks else Mark.from_json(
                writes.get(repartition_marks, key))
            if is_forwarded_again(mark, origin[1], source.offset):
                marks[key] = mark
                continue
            marks[key] = next_mark(mark, origin[1], source.offset)
            moved.add(key)
            keep.append(source)
        for key in moved:
            writes.put(repartition_marks, key, cast(Mark, marks[key]).to_json())
        writes.commit()
        if len(keep) < len(batch):
            METRICS.inc("storestream_events_total", len(batch) - len(keep), topic=first.topic,
                        outcome="duplicate")
        if keep:
            await handler(keep)
    return skip_then_handle


def _skip(source: Any, writes: TableWrites | None) -> bool:
    """Whether a repartition record was forwarded before and applied (and if not, its mark
    moved on: in ``writes``, or straight into the table)."""
    origin = read_origin(source.headers)
    if origin is None:
        return False
    key = mark_key(source.topic, source.partition, origin[0])
    raw = writes.get(repartition_marks, key) if writes is not None else repartition_marks.get(key)
    mark = Mark.from_json(raw)
    if is_forwarded_again(mark, origin[1], source.offset):
        return True
    new = next_mark(mark, origin[1], source.offset).to_json()
    if writes is not None:
        writes.put(repartition_marks, key, new)
    else:
        repartition_marks[key] = new
    return False


# ---------------------------------------------------------------------------- Faust's path

async def divert(message: Any) -> str | None:
    """On Faust's own path, before an input record is processed: forward it if
    ``REPARTITION`` says so (``"repartitioned"``), dead-letter it if its owner is unknown
    (that outcome), skip a record forwarded again (``"duplicate"``); ``None``: process it.
    Call it inside the event's :data:`app.runtime.guarantees.GATE`."""
    topic = message.topic
    if topic in ORIGINS:
        return "duplicate" if _skip(message, None) else None
    entry = FORWARDS.get(topic)
    if entry is None:
        return None
    mode, field, target = entry
    key = message.key
    placed = True if not key or mode != "all" else _placed_quietly(
        topic, message.partition, key)
    if decide(mode, key, placed) != FORWARD:
        return None
    try:
        record = _record(message, field)
    except (NoOwner, UnicodeDecodeError) as exc:
        return await dead_letter_once(message, str(exc))
    if app.in_transaction:  # from the event's task: the source partition's transaction
        await target.send(key=record[0], value=record[1],
                          timestamp=None if record[2] is None else record[2] / 1000.0,
                          headers=record[3])
    else:
        cast(BulkWriter, cast(Any, app.producer).bulk).enqueue_record(
            target.get_topic_name(), KEYED, record)
    return REPARTITIONED


def install() -> None:
    """Register the repartition topics' fast lanes (after the input topics' lanes)."""
    for name, input_name in ORIGINS.items():
        handler = fastlane.LANES.get(input_name)
        if handler is not None and name not in fastlane.LANES:
            fastlane.lane(name, urgent=input_name in fastlane.URGENT)(reading_lane(handler))
