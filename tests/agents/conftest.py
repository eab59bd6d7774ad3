"""Agent tests: Faust's test_context, memory store, no broker; sends are captured."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("APP_STORE", "memory://")

import app as storestream
from app import topics
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


class Sent:
    """Records sent to output topics instead of a broker."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes]] = []

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
