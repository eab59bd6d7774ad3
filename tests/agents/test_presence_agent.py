"""Accuracy, dwell and enter/exit events in the locations lane."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from agents import offers as offers_agent
from agents.offers import apply_positions
from app import topics
from app.faust_app import METRICS
from app.runtime.bulk import BulkWriter
from app.runtime.fastlane import Source
from core.caps import Caps, StoreSettings, parse_quiet_hours
from core.geo import Display
from core.offers import Promotion
from tables.batch import TableWrites
from tables.offers import DISPLAY_INDEX, PROMOTION_INDEX, presence, shoppers
from tests.agents.conftest import Sent

LAT, LON = 51.5072, -0.1276
T0 = 1_700_000_000.0


@pytest.fixture
def store(sent: Sent) -> Iterator[Sent]:
    DISPLAY_INDEX.upsert(Display("101", LAT, LON, segment="dairy", store_id="s1"))
    PROMOTION_INDEX.upsert(Promotion("p-now", 10, sku="101"))
    PROMOTION_INDEX.upsert(Promotion("p-dwell", 20, segment="dairy", dwell_s=30.0))
    shoppers.data.clear()
    yield sent
    DISPLAY_INDEX.remove("s1", "101")
    PROMOTION_INDEX.remove("p-now")
    PROMOTION_INDEX.remove("p-dwell")
    shoppers.data.clear()


def position(offset: int, ts: float, lat: float = LAT, **extra: float) -> Source:
    value = orjson.dumps({"uid": "kris", "lat": lat, "lon": LON, "store_id": "s1", "ts": ts,
                          **extra})
    return Source(topics.locations_topic.get_topic_name(), 2, offset, ts, b"kris", value)


class Lane:
    def __init__(self) -> None:
        self.bulk = BulkWriter()
        self.offers: list[dict[str, object]] = []

    async def __call__(self, *batch: Source) -> list[str]:
        before = len(self.offers)
        await apply_positions(list(batch), TableWrites(2, self.bulk), self.offers)
        return [str(o["pid"]) for o in self.offers[before:]]

    def presence_events(self) -> list[tuple[object, ...]]:
        name = topics.presence_topic.get_topic_name()
        return [(r["event"], r["sku"], r["ts"], r.get("dwell_s"))
                for (topic, _), records in self.bulk._queued.items() if topic == name
                for r in (orjson.loads(v) for _, v, _, _ in records if v is not None)]


async def test_an_inaccurate_position_never_triggers_an_offer_and_is_counted(
        store: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offers_agent, "MAX_ACCURACY_M", 5.0)
    before = METRICS.value("storestream_positions_inaccurate_total", store="s1")
    lane = Lane()
    assert await lane(position(0, T0, accuracy_m=12.0)) == []
    assert METRICS.value("storestream_positions_inaccurate_total", store="s1") == before + 1
    assert lane.presence_events() == [] and "kris" not in presence.data
    assert await lane(position(1, T0 + 1, accuracy_m=4.0)) == ["p-now"]


async def test_a_dwell_promotion_waits_for_the_stay_and_enter_exit_are_events(
        store: Sent) -> None:
    lane = Lane()
    assert await lane(position(0, T0)) == ["p-now"]
    assert await lane(position(1, T0 + 20)) == []
    assert await lane(position(2, T0 + 31)) == ["p-dwell"]
    assert await lane(position(3, T0 + 40, lat=LAT + 0.001)) == []  # walks away
    assert lane.presence_events() == [("enter", "101", T0, None),
                                      ("exit", "101", T0 + 40, 40.0)]
    # Back again: the stay starts over.
    assert await lane(position(4, T0 + 50)) == []
    assert lane.presence_events()[-1] == ("enter", "101", T0 + 50, None)


async def test_a_visit_cap_withholds_offers_and_counts_them_never_sending_them_later(
        store: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offers_agent, "CAPS", Caps(per_visit=1, visit_gap_s=600))
    before = METRICS.value("storestream_offers_withheld_total", reason="visit_cap")
    lane = Lane()
    assert await lane(position(0, T0)) == ["p-now"]
    assert await lane(position(1, T0 + 31)) == []  # p-dwell is due, the visit's cap is not
    assert METRICS.value("storestream_offers_withheld_total", reason="visit_cap") == before + 1
    assert await lane(position(2, T0 + 32)) == []  # never queued: withheld again
    assert METRICS.value("storestream_offers_withheld_total", reason="visit_cap") == before + 2
    # Gone for over ten minutes: a new visit, and the stay starts over.
    assert await lane(position(3, T0 + 700, lat=LAT + 0.001)) == []
    assert await lane(position(4, T0 + 710)) == []
    assert await lane(position(5, T0 + 741)) == ["p-dwell"]


async def test_no_offer_goes_out_in_a_stores_quiet_hours(
        store: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    quiet = StoreSettings("s1", "UTC", parse_quiet_hours("00:00-23:59"))
    monkeypatch.setattr(offers_agent, "STORES", {"s1": quiet})
    before = METRICS.value("storestream_offers_withheld_total", reason="quiet_hours")
    lane = Lane()
    assert await lane(position(0, T0)) == []
    assert METRICS.value("storestream_offers_withheld_total", reason="quiet_hours") == before + 1
    monkeypatch.setattr(offers_agent, "STORES", {})
    assert await lane(position(1, T0 + 1)) == ["p-now"]  # allowed again: a fresh trigger


async def test_associates_hear_a_watched_shoppers_arrival_once_per_visit_without_position(
        store: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offers_agent, "ASSOCIATE_TIERS", ("CLIMBING",))
    lane = Lane()
    await lane(position(0, T0), position(1, T0 + 60), position(2, T0 + 600))
    name = topics.associates_topic.get_topic_name()
    alerts = [(key, orjson.loads(v)) for (topic, _), records in lane.bulk._queued.items()
              if topic == name for key, v, _, _ in records if v is not None]
    assert len(alerts) == 1
    key, alert = alerts[0]
    assert key == b"s1" and alert["uid"] == "kris" and alert["tier"] == "CLIMBING"
    assert alert["event"] == "arrived" and alert["ts"] == T0
    assert not {"lat", "lon", "latitude", "longitude"} & set(alert)
    await lane(position(3, T0 + 600 + 1801))  # a new visit
    assert sum(1 for (topic, _), records in lane.bulk._queued.items() if topic == name
               for _ in records) == 2


async def test_a_redelivered_position_is_counted_once_inaccurate_or_withheld(
        store: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    """A position redelivered (a replay after a crash or a rebalance, same log place) changes
    no counter again: inaccurate, withheld by a cap or by quiet hours, or offered."""
    monkeypatch.setattr(offers_agent, "MAX_ACCURACY_M", 5.0)
    monkeypatch.setattr(offers_agent, "CAPS", Caps(per_visit=1, visit_gap_s=600))

    def counts() -> tuple[float, ...]:
        return (METRICS.value("storestream_positions_inaccurate_total", store="s1"),
                METRICS.value("storestream_offers_withheld_total", reason="visit_cap"),
                METRICS.value("storestream_offers_withheld_total", reason="quiet_hours"),
                METRICS.value("storestream_offers_total", store="s1"))

    start = counts()
    lane = Lane()
    sloppy = position(0, T0, accuracy_m=12.0)
    await lane(sloppy)
    await lane(sloppy)
    await lane(sloppy, position(1, T0 + 1))
    assert counts() == (start[0] + 1, start[1], start[2], start[3] + 1)  # p-now once
    await lane(position(1, T0 + 1))
    capped = position(2, T0 + 31)  # p-dwell is due, the visit's cap is not
    for _ in range(3):
        assert await lane(capped) == []
    assert counts() == (start[0] + 1, start[1] + 1, start[2], start[3] + 1)
    quiet = StoreSettings("s1", "UTC", parse_quiet_hours("00:00-23:59"))
    monkeypatch.setattr(offers_agent, "STORES", {"s1": quiet})
    monkeypatch.setattr(offers_agent, "CAPS", Caps())
    late = position(3, T0 + 2_000)
    assert await lane(late) == []
    quiet_once = counts()
    assert quiet_once[2] == start[2] + 2  # both promotions due, both withheld
    assert await lane(late) == []
    assert counts() == quiet_once
    # a later position is new: counted
    assert await lane(position(4, T0 + 2_001, accuracy_m=30.0)) == []
    assert counts()[0] == start[0] + 2
