"""Purchases after an offer become redemptions on both paths: the fast lane and Faust's."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from agents import offers as offers_agent
from agents.loyalty import apply_purchases, process_purchases
from agents.offers import apply_positions, process_locations
from app import topics
from app.faust_app import METRICS
from app.runtime import fastlane
from app.runtime.bulk import BulkWriter
from app.runtime.fastlane import Abandoned, Pace, Source
from core.geo import Display
from core.offers import Promotion
from tables.batch import TableWrites
from tables.offers import (
    DISPLAY_INDEX,
    PROMOTION_INDEX,
    attribution,
    promotion_figures,
    shoppers,
)
from tests.agents.conftest import Sent

LAT, LON = 51.5072, -0.1276
T0 = 1_700_000_000.0


@pytest.fixture
def store(sent: Sent) -> Iterator[Sent]:
    """Display 101 (dairy) on a sku promotion; display 202 (dairy) on none."""
    DISPLAY_INDEX.upsert(Display("101", LAT, LON, segment="dairy", store_id="s1"))
    DISPLAY_INDEX.upsert(Display("202", LAT + 0.01, LON, segment="dairy", store_id="s1"))
    PROMOTION_INDEX.upsert(Promotion("p-sku", 10, sku="101"))
    shoppers.data.clear()
    yield sent
    DISPLAY_INDEX.remove("s1", "101")
    DISPLAY_INDEX.remove("s1", "202")
    PROMOTION_INDEX.remove("p-sku")
    shoppers.data.clear()


def position(offset: int, ts: float, lat: float = LAT) -> Source:
    value = orjson.dumps({"uid": "kris", "lat": lat, "lon": LON, "store_id": "s1", "ts": ts})
    return Source(topics.locations_topic.get_topic_name(), 2, offset, ts, b"kris", value)


def purchase(offset: int, ts: float, product: str = "101", price: float = 4.99) -> Source:
    value = orjson.dumps({"user_id": "kris", "product_id": product, "price": price, "ts": ts,
                          "purchase_id": f"till-{offset}"})
    return Source(topics.purchases_topic.get_topic_name(), 2, offset, ts, b"kris", value)


class Lanes:
    """The two fast lanes of partition 2, their output read from the bulk writer."""

    def __init__(self) -> None:
        self.bulk = BulkWriter()
        self.offers: list[dict[str, object]] = []

    async def positions(self, *batch: Source) -> None:
        await apply_positions(list(batch), TableWrites(2, self.bulk), self.offers)

    async def purchases(self, *batch: Source) -> None:
        await apply_purchases(list(batch), TableWrites(2, self.bulk))

    def queued(self, topic_name: str) -> list[dict[str, object]]:
        return [orjson.loads(value) for (topic, _), records in self.bulk._queued.items()
                if topic.endswith(topic_name) for _, value, _, _ in records
                if value is not None]

    def redemptions(self) -> list[dict[str, object]]:
        return self.queued(topics.redemptions_topic.get_topic_name())


async def test_a_purchase_of_the_offered_sku_is_redeemed_once_on_the_fast_lane(
        store: Sent) -> None:
    lanes = Lanes()
    await lanes.positions(position(0, T0))
    assert [o["pid"] for o in lanes.offers] == ["p-sku"]
    await lanes.purchases(purchase(0, T0 + 600))
    assert lanes.redemptions() == []  # the positions have not passed the purchase yet
    await lanes.positions(position(1, T0 + 700, lat=LAT + 0.01))
    assert lanes.redemptions() == [{
        "offer_id": lanes.offers[0]["offer_id"], "uid": "kris", "pid": "p-sku", "sku": "101",
        "purchase_id": "till-0", "revenue_cents": 499, "seconds_after_offer": 600.0,
        "ts": T0 + 600}]
    # Redelivered after a crash before the commit: nothing more.
    await lanes.purchases(purchase(0, T0 + 600))
    await lanes.positions(position(1, T0 + 700, lat=LAT + 0.01))
    assert len(lanes.redemptions()) == 1


async def test_a_purchase_consumed_after_the_positions_is_redeemed_at_once(store: Sent) -> None:
    lanes = Lanes()
    await lanes.positions(position(0, T0), position(1, T0 + 700, lat=LAT + 0.01))
    await lanes.purchases(purchase(0, T0 + 600), purchase(1, T0 + 650, product="202"))
    assert [r["purchase_id"] for r in lanes.redemptions()] == ["till-0"]


async def test_purchases_of_shoppers_never_offered_anything_leave_no_state(store: Sent) -> None:
    lanes = Lanes()
    await lanes.purchases(purchase(0, T0, product="coffee"))
    await lanes.positions(position(0, T0 + 5, lat=LAT + 0.01))
    assert "kris" not in attribution.data and lanes.redemptions() == []


async def test_a_purchase_is_redeemed_on_faust_path(store: Sent) -> None:
    async with process_locations.test_context() as agent:
        await agent.put(position(0, T0).value, key=b"kris", timestamp=T0)
    async with process_purchases.test_context() as agent:
        await agent.put(purchase(0, T0 + 60).value, key=b"kris", timestamp=T0 + 60)
    assert store.by_topic("offers.redemptions") == []
    async with process_locations.test_context() as agent:  # offsets from 0 again: the first
        # is taken for a redelivery of the first position, the second passes the purchase
        await agent.put(position(1, T0 + 70).value, key=b"kris", timestamp=T0 + 70)
        await agent.put(position(2, T0 + 80).value, key=b"kris", timestamp=T0 + 80)
    redeemed = [orjson.loads(value) for _, value in store.by_topic("offers.redemptions")]
    assert [(r["pid"], r["purchase_id"], r["revenue_cents"]) for r in redeemed] == [
        ("p-sku", "till-0", 499)]


def figures(pid: str) -> dict[str, int]:
    return dict(promotion_figures.data.get(f"{pid}/2") or {})


async def test_offers_and_redemptions_are_counted_per_promotion_once(store: Sent) -> None:
    lanes = Lanes()
    await lanes.positions(position(0, T0))
    await lanes.positions(position(0, T0))  # redelivered: its offer again, not counted again
    assert len(lanes.offers) == 2 and figures("p-sku")["sent"] == 1
    await lanes.purchases(purchase(0, T0 + 60), purchase(1, T0 + 90))
    await lanes.positions(position(1, T0 + 120, lat=LAT + 0.01))
    counted = figures("p-sku")
    assert (counted["sent_redeemed"], counted["sent_redemptions"],
            counted["sent_revenue_cents"], counted["held_out"]) == (1, 2, 998, 0)


async def test_a_held_out_shopper_gets_no_offer_and_what_they_would_have_got_is_recorded(
        store: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offers_agent, "CONTROL_PCT", 100.0)
    lanes = Lanes()
    await lanes.positions(position(0, T0))
    assert lanes.offers == [] and lanes.queued("customers.promotions") == []
    (held,) = lanes.queued("offers.held_out")
    assert held["pid"] == "p-sku" and held["held_out"] is True and held["uid"] == "kris"
    await lanes.purchases(purchase(0, T0 + 60))
    await lanes.positions(position(1, T0 + 120, lat=LAT + 0.01))
    (redeemed,) = lanes.redemptions()
    assert redeemed["offer_id"] == held["offer_id"] and redeemed["held_out"] is True
    counted = figures("p-sku")
    assert (counted["sent"], counted["held_out"], counted["held_out_redeemed"],
            counted["held_out_revenue_cents"]) == (0, 1, 1, 499)


@pytest.mark.parametrize("ours", [True, False])
async def test_a_redemption_is_counted_only_with_its_batch_written(store: Sent,
                                                                   ours: bool) -> None:
    """A paced purchase batch given up between slices (its partition revoked) redeems
    nothing yet: its redemption is neither sent nor counted until its records come again."""
    lanes = Lanes()
    await lanes.positions(position(0, T0), position(1, T0 + 700, lat=LAT + 0.01))
    before = METRICS.value("storestream_redemptions_total", pid="p-sku")
    batch = [purchase(0, T0 + 600), purchase(1, T0 + 610, product="coffee")]
    with fastlane.pacing(Pace(1, lambda size, seconds: size, lambda: ours)):
        if ours:
            await lanes.purchases(*batch)
        else:
            with pytest.raises(Abandoned):
                await lanes.purchases(*batch)
    counted = METRICS.value("storestream_redemptions_total", pid="p-sku") - before
    assert (counted, len(lanes.redemptions())) == ((1, 1) if ours else (0, 0))
