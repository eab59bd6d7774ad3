"""Agent tests: Faust's test_context, memory store, no broker; sends are captured."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

os.environ.setdefault("APP_STORE", "memory://")

import app as storestream
from app import topics
from app.runtime.bulk import KEYED, BulkWriter
from tables import loyalty as tables
from tables.deadletters import DEAD_LETTERS, RETURN_LETTERS, SENT, dead_letter_marks
from tables.offers import (
    DISPLAYS,
    FIGURES,
    PROMOTIONS,
    attribution,
    frequency,
    presence,
    promotion_figures,
    visits,
)


class StandInConsumer:
    """The part of the transport's consumer that ``_run_lane`` touches, recording order."""

    def __init__(self, steps: list[str]) -> None:
        async def send_queued() -> None:
            steps.append("sent")

        self.app = SimpleNamespace(
            consumer_generation_id=1,
            monitor=SimpleNamespace(track_tp_end_offset=lambda tp, offset: None),
            producer=SimpleNamespace(send_queued=send_queued),
        )
        self._read_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self._lane_done: dict[TP, tuple[int, int]] = {}
        self.steps = steps

    def highwater(self, tp: TP) -> int:
        return 0

    def _to_message(self, tp: TP, record: Any) -> Any:
        return record

    async def _add_gap(self, tp: TP, start: int, end: int) -> None:
        return None

    def _ack_offsets(self, tp: TP, offsets: list[int]) -> None:
        self.steps.append(f"acked {offsets}")


class CapturingBulk(BulkWriter):
    """The producer's bulk writer, capturing what goes to output topics and dropping
    changelog records (their tables are written all the same)."""

    def __init__(self, sent: Sent) -> None:
        super().__init__()
        self._sent = sent

    def enqueue_record(self, topic: str, partition: int, record: Any) -> None:
        if partition == KEYED:
            self._sent.records.append((topic, record[0], record[1]))
        else:
            self._sent.changelog.append((topic, partition, record[0]))


class Sent:
    """Records sent to output topics instead of a broker."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes]] = []
        #: (changelog topic, partition, key) of each state record queued on the bulk writer
        self.changelog: list[tuple[str, int, bytes | None]] = []

    def by_topic(self, suffix: str) -> list[tuple[bytes | None, bytes]]:
        return [(k, v) for t, k, v in self.records if t.endswith(suffix)]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sent]:
    """Capture sends to loyalty.events, dead-letters and offers.redemptions; fresh tables for
    each test."""
    app = storestream.app
    app.finalize()
    app.flow_control.resume()
    captured = Sent()
    for topic in (topics.loyalty_events_topic, topics.dead_letters_topic,
                  topics.redemptions_topic, topics.presence_topic, topics.associates_topic):
        name = topic.get_topic_name()

        async def send(*, key: Any = None, value: Any = None, _name: str = name,
                       **_: Any) -> asyncio.Future[None]:
            captured.records.append((_name, key, value))
            delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            delivered.set_result(None)  # what a broker acknowledgement resolves
            return delivered

        def send_soon(*, key: Any = None, value: Any = None, _name: str = name,
                      **_: Any) -> None:
            captured.records.append((_name, key, value))

        monkeypatch.setattr(topic, "send", send)
        monkeypatch.setattr(topic, "send_soon", send_soon)
    # the agent path's writes under at_least_once go to the producer's bulk writer
    monkeypatch.setattr(app.producer, "bulk", CapturingBulk(captured))
    for table in (tables.catalogue, tables.spend, tables.stamps, tables.baskets,
                  tables.profiles, tables.ledgers, attribution, promotion_figures, presence,
                  frequency, visits):
        table.data.clear()
    tables.CATALOGUE.data.clear()
    dead_letter_marks.data.clear()
    SENT.clear()
    RETURN_LETTERS.clear()
    for replica in (tables.CATALOGUE, DISPLAYS, PROMOTIONS, DEAD_LETTERS, FIGURES):
        replica.ready = True  # no broker here: the replicas are filled by the tests
    yield captured
