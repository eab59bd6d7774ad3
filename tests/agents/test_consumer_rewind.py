"""Records aiokafka hands over for a partition Faust has paused are not skipped: the
partition is sought back to the first of them, so the next fetch delivers them again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP

import app as storestream
from app.runtime import fastlane
from app.runtime.transport import Consumer
from app.topics import purchases_topic, users_topic


def records(tp: TP, first: int, count: int) -> list[ConsumerRecord[bytes, bytes]]:
    return [ConsumerRecord(topic=tp.topic, partition=tp.partition, offset=offset, timestamp=0,
                           timestamp_type=0, key=b"k", value=b"{}", checksum=None,
                           serialized_key_size=1, serialized_value_size=2, headers=())
            for offset in range(first, first + count)]


@pytest.fixture
def consumer(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Consumer, list[Any]]]:
    app = storestream.app
    app.finalize()
    consumer = app.consumer
    assert isinstance(consumer, Consumer)
    sought: list[Any] = []

    async def seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    monkeypatch.setattr(consumer, "seek", seek)
    monkeypatch.setattr(consumer, "flow_active", True)
    monkeypatch.setattr(consumer, "highwater", lambda tp: 100)
    yield consumer, sought


Fetched = dict[TP, list[ConsumerRecord[bytes, bytes]]]


async def fetch(consumer: Consumer, monkeypatch: pytest.MonkeyPatch,
                fetched: Fetched, active: set[TP]) -> list[tuple[TP, int]]:
    """What ``getmany`` yields to Faust's agents for one fetch."""
    async def wait_next_records(timeout: float) -> tuple[Fetched, set[TP]]:
        return fetched, active

    monkeypatch.setattr(consumer, "_wait_next_records", wait_next_records)
    return [(tp, message.offset) async for tp, message in consumer.getmany(1.0)]


async def test_records_of_a_paused_agent_partition_are_rewound_not_skipped(
        consumer: tuple[Consumer, list[Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    faust_consumer, sought = consumer
    running, paused = TP(users_topic.get_topic_name(), 0), TP(users_topic.get_topic_name(), 1)
    taken = await fetch(faust_consumer, monkeypatch,
                        {running: records(running, 5, 2), paused: records(paused, 40, 3)},
                        active={running})
    assert taken == [(running, 5), (running, 6)]
    assert sought == [(paused, 40)]


async def test_records_of_a_paused_lane_partition_are_rewound_not_processed(
        consumer: tuple[Consumer, list[Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    faust_consumer, sought = consumer
    paused = TP(purchases_topic.get_topic_name(), 2)
    assert paused.topic in fastlane.LANES
    taken = await fetch(faust_consumer, monkeypatch, {paused: records(paused, 7, 4)},
                        active=set())
    assert taken == []
    assert sought == [(paused, 7)]
