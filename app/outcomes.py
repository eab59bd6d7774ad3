"""What happened to each event, counted: outcomes, the fast lane's busy window, dead letters once.

Shared by the agents and by the repartition forwarder (:mod:`app.routing.repartition`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from app.deadletters import send_dead_letter
from app.faust_app import METRICS, app
from app.runtime.fastlane import Source, hold, take_held
from app.runtime.membership import MEMBERSHIP
from tables.deadletters import already_dead_lettered, dead_letter_marks, mark_key

OK = "ok"
DUPLICATE = "duplicate"
DEAD_LETTER = "dead_letter"
#: A bad record a worker cut off from its group did not dead-letter (its new owner does).
FENCED = "fenced"

_LANE_STARTED: set[str] = set()

#: "topic:partition" -> (consumer generation, lowest offset) of a dead letter held back in
#: that generation (:func:`dead_letter_once`).
_HELD_BACK: dict[str, tuple[int, int]] = {}


def lane_clock() -> tuple[float, float]:
    """Wall-clock time and process CPU time now (for :func:`count_lane`)."""
    return time.time(), time.process_time()


def count_lane(batch: Sequence[Source], started: tuple[float, float]) -> None:
    """Count a batch taken by the fast lane, and the lane's busy window so far.

    The window (wall clock and process CPU at the start of the first batch and at the end of
    the latest one) is what ``bench`` reads to time the worker as the peers time themselves.
    """
    topic = batch[0].topic
    METRICS.inc("storestream_fast_lane_batches_total", topic=topic)
    METRICS.inc("storestream_fast_lane_records_total", len(batch), topic=topic)
    if topic not in _LANE_STARTED:
        _LANE_STARTED.add(topic)
        METRICS.set("storestream_fast_lane_first_batch_seconds", started[0], topic=topic)
        METRICS.set("storestream_fast_lane_first_batch_cpu_seconds", started[1], topic=topic)
    wall, cpu = lane_clock()
    METRICS.set("storestream_fast_lane_last_batch_seconds", wall, topic=topic)
    METRICS.set("storestream_fast_lane_last_batch_cpu_seconds", cpu, topic=topic)


def count_batch(agent: str, batch: Sequence[Source], outcomes: Mapping[str, int]) -> None:
    """Count a batch's outcomes and its newest record's end-to-end latency."""
    topic = batch[0].topic
    for outcome, count in outcomes.items():
        if count:
            METRICS.inc("storestream_events_total", count, topic=topic, outcome=outcome)
    stamp = batch[-1].timestamp
    if stamp:
        METRICS.observe("storestream_agent_latency_seconds", max(0.0, time.time() - stamp),
                        agent=agent)


async def dead_letter_all(failed: Sequence[tuple[Source, str]]) -> None:
    """Dead-letter each (record, reason) once, in offset order, and count it."""
    for source, reason in sorted(failed, key=lambda item: item[0].offset):
        outcome = await dead_letter_once(source, reason)
        METRICS.inc("storestream_events_total", topic=source.topic, outcome=outcome)


async def dead_letter_once(message: Any, reason: str) -> str:
    """Dead-letter a message unless a previous run already did (redelivery after a crash).

    The offsets of valid events are remembered in each key's state; for bad events the
    highest dead-lettered offset of the source partition is remembered instead, in a
    changelogged table and, for a crash between the two sends, on the dead-letters topic.
    """
    if already_dead_lettered(message.topic, message.partition, message.offset):
        return DUPLICATE
    generation = app.consumer_generation_id
    key = mark_key(message.topic, message.partition)
    if held_back_before(key, generation, message.offset) or not await MEMBERSHIP.confirmed(
            app.conf.broker_session_timeout,
            lambda: bool(app.rebalancing) or app.consumer_generation_id != generation):
        # A worker cut off: the record's owner after the rebalance dead-letters it. In the
        # fast lane its offset is not acknowledged, so no commit passes it.
        METRICS.inc("storestream_dead_letters_fenced_total", topic=message.topic)
        held = _HELD_BACK.get(key)
        if held is None or held[0] != generation or message.offset < held[1]:
            _HELD_BACK[key] = (generation, message.offset)
        if isinstance(message, Source):
            hold(message)
        else:
            withhold(message)
        return FENCED
    await send_dead_letter(message, reason)
    dead_letter_marks[key] = message.offset
    return DEAD_LETTER


def held_back_before(key: str, generation: int, offset: int) -> bool:
    """Whether a dead letter of source partition ``key`` before ``offset`` was held back in
    consumer ``generation``: then this one is held too. The mark is the highest offset
    dead-lettered, so a later letter sent would mark the held record as done, and whoever
    reads the partition again from its committed offset (at or below the held record)
    would count it as a duplicate and never dead-letter it (measured on Apache Kafka 4.4:
    a worker that had just joined held one back at the start of the next rebalance, its
    heartbeat 6 s old, then sent the partition's next one, its heartbeat answered
    meanwhile: one dead letter of 60 lost)."""
    held = _HELD_BACK.get(key)
    return held is not None and held[0] == generation and held[1] < offset


def withhold(message: Any) -> None:
    """Keep a Faust ``Message`` from being acknowledged (the agent path's :func:`hold`)."""
    withholding = getattr(app.consumer, "withhold", None)
    if withholding is not None:
        withholding(message)


def withhold_if_held(message: Any) -> None:
    """After a batch of one made of ``message`` (the agent path of a lane's topic): keep it
    from being acknowledged if its handler held it back (:func:`hold`)."""
    if message.offset in take_held():
        withhold(message)
