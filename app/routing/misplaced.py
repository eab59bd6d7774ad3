"""Every input record's placement checked against ``KEY_PARTITIONER`` (app/routing/partitioning.py).

Records reach the agents two ways: the fast lane (a partition's fetched batch per call,
:mod:`app.runtime.fastlane`) and Faust's own path (one ``Message`` each). :func:`install` wraps the
fast lane's handlers of the input topics and adds a Faust sensor whose ``on_message_in`` sees
every record of the other path, so each input record is checked once, before it is processed.
Output topics (offers read back by the delivery agent, dead letters) are not checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from faust.sensors import Sensor

from app.broker.topic_startup import input_topics
from app.faust_app import METRICS, app
from app.routing import repartition
from app.routing.partitioning import Placement
from app.routing.repartition import input_partition_count
from app.runtime import fastlane
from app.runtime.fastlane import Source
from app.settings import SETTINGS


def _count(topic: str) -> None:
    METRICS.inc("storestream_misplaced_records_total", topic=topic)


#: This worker's misplaced input records, counted in /metrics and reported on /health.
PLACEMENT = Placement(SETTINGS.key_partitioner, input_partition_count, _count)


class PlacementSensor(Sensor):  # type: ignore[misc]
    """Checks every input record that takes Faust's own path."""

    def __init__(self, topics: frozenset[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.topics = topics

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        if tp.topic in self.topics:
            PLACEMENT.check(tp.topic, tp.partition, offset, message.key)


def checked(handler: fastlane.BatchHandler) -> fastlane.BatchHandler:
    """A fast-lane handler that checks each record's placement first."""
    async def check_then_handle(batch: Sequence[Source]) -> None:
        check = PLACEMENT.check
        for source in batch:
            check(source.topic, source.partition, source.offset, source.key)
        await handler(batch)
    return check_then_handle


_installed = False


def install() -> None:
    """Check the input topics on both paths (once; after the agents registered their lanes)."""
    global _installed
    if _installed:
        return
    _installed = True
    repartition.install()
    topics = frozenset(input_topics(SETTINGS))
    for topic, handler in list(fastlane.LANES.items()):
        if topic in repartition.FORWARDS:
            fastlane.LANES[topic] = repartition.forwarding_lane(topic, handler, PLACEMENT.check)
        elif topic in topics:
            fastlane.LANES[topic] = checked(handler)
    app.sensors.add(PlacementSensor(topics))
