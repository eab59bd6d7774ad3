"""Topic creation returns once the new topic is in the broker's metadata (app/runtime/transport.py):
on Apache Kafka a consumer subscribing right after CreateTopics was told a fresh changelog did
not exist, and its worker crashed on its first dead letter (PartitionsMismatch)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, NodeNotReadyError, TopicAuthorizationFailedError

from app.runtime.transport import _create_patiently, _until_in_metadata


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


class Creation:
    """Fails with ``errors`` in turn, then succeeds; counts the metadata refreshes."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.tries = 0
        self.refreshes = 0

    async def create(self) -> None:
        self.tries += 1
        if self.errors:
            raise self.errors.pop(0)

    async def refresh(self) -> None:
        self.refreshes += 1


def test_topic_creation_waits_out_a_broker_that_is_down() -> None:
    """A worker restarted while the broker it asked was down exited at once (the cluster
    run's leader kills); it now tries again until the broker is back or another answers."""
    creation = Creation(NodeNotReadyError("node 2 not ready"), KafkaConnectionError("refused"))
    asyncio.run(_create_patiently(creation.create, creation.refresh, "leader", patience_s=10))
    assert (creation.tries, creation.refreshes) == (3, 2)


def test_topic_creation_does_not_retry_what_will_not_pass() -> None:
    creation = Creation(TopicAuthorizationFailedError("denied"))
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(_create_patiently(creation.create, creation.refresh, "leader"))
    assert creation.tries == 1


def test_topic_creation_gives_up_after_its_patience() -> None:
    creation = Creation(*[NodeNotReadyError("down")] * 100)
    with pytest.raises(NodeNotReadyError):
        asyncio.run(_create_patiently(creation.create, creation.refresh, "leader",
                                      patience_s=1.0))
    assert creation.tries == 2  # at 0 s and 0.5 s; the next wait (1 s) would pass 1 s
