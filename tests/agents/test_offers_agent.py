"""The locations agent tells replays by source offset, on the fast lane and Faust's path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from agents.offers import apply_positions, process_locations
from app import topics
from app.runtime.bulk import BulkWriter
from app.runtime.fastlane import Source
from core.geo import Display
from core.offers import Promotion
from tables.batch import TableWrites
from tables.offers import DISPLAY_INDEX, PROMOTION_INDEX, shoppers
from tests.agents.conftest import Sent

LAT, LON = 51.5072, -0.1276
STAMP = 1_700_000_000.123  # the record timestamp of every position: one millisecond
LINGERING = orjson.dumps({"uid": "kris", "lat": LAT, "lon": LON, "store_id": "s1"})  # no ts


@pytest.fixture
def store(sent: Sent) -> Iterator[Sent]:
    """One display, two promotions on it, no shopper state."""
    DISPLAY_INDEX.upsert(Display("101", LAT, LON, segment="dairy", store_id="s1"))
    for promo in (Promotion("p-sku", 10, sku="101"), Promotion("p-seg", 5, segment="dairy")):
        PROMOTION_INDEX.upsert(promo)
    shoppers.data.clear()
    yield sent
    DISPLAY_INDEX.remove("s1", "101")
    for pid in ("p-sku", "p-seg"):
        PROMOTION_INDEX.remove(pid)
    shoppers.data.clear()


def positions(offsets: range) -> list[Source]:
    topic = topics.locations_topic.get_topic_name()
    return [Source(topic, 2, offset, STAMP, b"kris", LINGERING) for offset in offsets]


async def lane(batch: list[Source]) -> list[dict[str, object]]:
    """One fast-lane batch (its changelog records queued on a bulk writer); its offers."""
    emitted: list[dict[str, object]] = []
    await apply_positions(batch, TableWrites(2, BulkWriter()), emitted)
    return emitted


async def test_lingering_shopper_gets_one_offer_per_promotion_on_the_fast_lane(
        store: Sent) -> None:
    first = await lane(positions(range(8)))
    assert sorted(str(o["pid"]) for o in first) == ["p-seg", "p-sku"]
    assert {o["ts"] for o in first} == {STAMP}
    state = shoppers.data["kris"]

    # A crash before the commit: the batch is delivered again, onto the state it wrote.
    again = await lane(positions(range(8)))
    assert again == first and shoppers.data["kris"] == state
    # The next position, same millisecond: a distinct one, within the cooldown.
    assert await lane(positions(range(8, 9))) == []
    # Redelivered onto state that was lost with the crash: the same offers, the same ids.
    shoppers.data.clear()
    assert await lane(positions(range(3))) == first


async def test_lingering_shopper_gets_one_offer_per_promotion_on_faust_path(
        store: Sent) -> None:
    def offers() -> list[dict[str, Any]]:
        return [orjson.loads(value)
                for _, value in store.by_topic(topics.offers_topic.get_topic_name())]

    async def deliver(count: int) -> list[dict[str, Any]]:
        before = len(offers())
        async with process_locations.test_context() as agent:  # offsets start at 0 each time
            for _ in range(count):
                await agent.put(LINGERING, key=b"kris", timestamp=STAMP)
        return offers()[before:]

    first = await deliver(8)
    assert sorted(o["pid"] for o in first) == ["p-seg", "p-sku"]
    assert await deliver(8) == first  # redelivered from offset 0: the same offers and ids
    assert store.by_topic("dead-letters") == []
