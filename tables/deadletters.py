"""Which source offsets have already been dead-lettered, per source partition."""

from __future__ import annotations

from typing import Any

import orjson

from app.faust_app import app
from app.runtime.replica import TopicReplica
from app.settings import SETTINGS
from core.changelog import mark_offsets
from core.repartition import repartition_topic
from tables.base import text_keyed_table

#: "topic:partition" -> highest offset already sent to dead-letters. Written from the source
#: event, so its changelog partition is the source partition and the mark moves with it.
#: Restored highest-first: under exactly_once a partition kept through a rebalance keeps its
#: open transaction (Faust begins none while one is open) and is read again from its committed
#: offset, and the recovery in between applied the mark's older committed records over the
#: newer one still in that transaction; the records read again were then dead-lettered a
#: second time, into the same transaction, and both copies committed (the cluster run under
#: exactly_once: 4-18 dead letters twice, each pair by one worker 3-5 s apart, right after a
#: rebalance with ``Invalid state transition IN_TRANSACTION -> IN_TRANSACTION``).
dead_letter_marks = text_keyed_table(
    app.Table, "dead_letter_marks", "Highest dead-lettered offset per source partition",
    newest_by_offsets=mark_offsets,
)


def mark_key(topic: str, partition: int) -> str:
    """Table key of a source partition."""
    return f"{topic}:{partition}"


#: (topic, partition) -> highest source offset present on the dead-letters topic itself.
#: The marks table can miss a dead letter that reached the topic just before a crash (the
#: mark was still in the producer's buffer); the topic cannot, so both are consulted.
SENT: dict[str, int] = {}


def _source(raw: bytes) -> tuple[str, int]:
    letter: Any = orjson.loads(raw)
    return mark_key(str(letter["topic"]), int(letter["partition"])), int(letter["offset"])


#: The returns topics: their dead letters are also remembered one by one (``RETURN_LETTERS``).
RETURN_TOPICS = frozenset({SETTINGS.topics.returns, repartition_topic(SETTINGS.topics.returns)})

#: "topic:partition:offset" of every dead letter of a returns topic seen on the dead-letters
#: topic or sent by this process. A held return is given up when a later purchase comes, out
#: of offset order with its partition's other dead letters, so the highest offset per source
#: partition cannot tell whether its letter was sent; this can (they are few: bounded by the
#: dead-letters topic's retention).
RETURN_LETTERS: set[str] = set()


def _letter_seen(key: str, old: tuple[str, int] | None, new: tuple[str, int] | None) -> None:
    if new is not None:
        source, offset = new
        if offset > SENT.get(source, -1):
            SENT[source] = offset
        if source.rpartition(":")[0] in RETURN_TOPICS:
            RETURN_LETTERS.add(f"{source}:{offset}")


DEAD_LETTERS: TopicReplica[tuple[str, int]] = TopicReplica(
    SETTINGS.topics.dead_letters, _source, _letter_seen
)


def already_dead_lettered(topic: str, partition: int, offset: int) -> bool:
    """Whether this source record was dead-lettered before (by any run of any worker)."""
    key = mark_key(topic, partition)
    marked = dead_letter_marks.get(key)
    return (marked is not None and marked >= offset) or SENT.get(key, -1) >= offset



def return_letter_sent(topic: str, partition: int, offset: int) -> bool:
    """Whether a returns record's dead letter is on the dead-letters topic (as this worker
    has read it) or was sent by this process; then remember it as sent."""
    key = f"{mark_key(topic, partition)}:{offset}"
    if key in RETURN_LETTERS:
        return True
    RETURN_LETTERS.add(key)
    return False
