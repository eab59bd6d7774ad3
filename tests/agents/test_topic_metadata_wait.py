"""Topic creation returns once the new topic is in the broker's metadata (app/runtime/transport.py):
on Apache Kafka a consumer subscribing right after CreateTopics was told a fresh changelog did
not exist, and its worker crashed on its first dead letter (PartitionsMismatch)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from app.runtime.transport import _until_in_metadata


class Cluster:
    def __init__(self, partitions: set[int] | None) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions


class Client:
    """Metadata answers without the topic ``missing`` times (raising once), then with it."""

    def __init__(self, missing: int) -> None:
        self.missing = missing
        self.calls = 0

    async def fetch_all_metadata(self) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("no broker answered")
        return Cluster(None if self.calls <= self.missing else {0, 1, 2, 3})


def test_waits_until_the_topic_has_partitions() -> None:
    client = Client(missing=3)
    asyncio.run(_until_in_metadata(client, "app-spend-changelog", timeout_s=5.0))
    assert client.calls == 4


def test_gives_up_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    client = Client(missing=10_000)
    with caplog.at_level(logging.WARNING):
        asyncio.run(_until_in_metadata(client, "app-spend-changelog", timeout_s=0.3))
    assert 2 <= client.calls <= 6
    assert "app-spend-changelog not in the broker's metadata" in caplog.text
