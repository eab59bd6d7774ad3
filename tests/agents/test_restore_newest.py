"""A restore keeps each customer's newest record by the source offsets it applied: a late
changelog write of a worker cut off from the group (it lands after its successor's writes)
never brings an older state back (tables/base.py ``restore_newest``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from faust.types import TP

from app.faust_app import METRICS
from core.associates import Visits
from core.attribution import AttributionState
from core.caps import Frequency
from core.presence import Presence
from tables.deadletters import dead_letter_marks
from tables.loyalty import spend
from tables.offers import attribution, frequency, presence, shoppers, visits

pytestmark = pytest.mark.timeout(30)


@dataclass
class Message:
    tp: TP
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Event:
    key: Any
    value: Any
    message: Message


def record(offset: int, key: str, value: dict[str, Any] | None, table: Any = spend) -> Event:
    tp = TP(table.changelog_topic.get_topic_name(), 0)
    raw = None if value is None else b"{}"  # only tombstones' raw values are read
    return Event(key, value, Message(tp, 0, offset, key.encode(), raw))


def superseded_count() -> float:
    return METRICS.value("storestream_changelog_superseded_total", table=spend.name)


def test_a_late_write_of_an_older_state_is_skipped_on_restore() -> None:
    before = superseded_count()
    newer = {"settled_cents": 900, "purchases": 3, "last_offset": 41}
    late = {"settled_cents": 600, "purchases": 2, "last_offset": 37}
    spend.apply_changelog_batch([record(0, "kris-late", newer), record(1, "kris-late", late)])
    assert spend.data.get("kris-late") == newer
    spend.apply_changelog_batch([record(2, "kris-late", late)])  # in a later batch as well
    assert spend.data.get("kris-late") == newer
    assert superseded_count() == before + 2


def test_newer_records_and_tombstones_apply_as_written() -> None:
    first = {"settled_cents": 100, "purchases": 1, "last_offset": 3}
    returned = {"settled_cents": 0, "purchases": 0, "last_offset": 3, "last_ret": 0}
    spend.apply_changelog_batch([record(0, "ann-newer", first), record(1, "ann-newer", returned)])
    assert spend.data.get("ann-newer") == returned
    spend.apply_changelog_batch([record(2, "ann-newer", None)])
    assert spend.data.get("ann-newer") is None


def test_a_late_write_of_older_offer_cooldowns_is_skipped_on_restore() -> None:
    """Else the shopper's cooldown window would be gone and the offer made again."""
    newer = {"last_offered": {"p1\x1fsku": 50.0},
             "applied": [["customers.locations", 0, 120]]}
    late = {"last_offered": {}, "applied": [["customers.locations", 0, 97]]}
    shoppers.apply_changelog_batch([record(0, "uid-late", newer, shoppers),
                                    record(1, "uid-late", late, shoppers)])
    assert shoppers.data.get("uid-late") == newer


LOG = "customers.locations"


@pytest.mark.parametrize(("table", "newer", "late"), [
    (presence, Presence({("s1", "sku"): 10.0}, {(LOG, 1): 80}).to_json(),
     Presence({}, {(LOG, 1): 61}).to_json()),
    (frequency, Frequency(100.0, 2, "d1", 2).written_at(LOG, 1, 80).to_json(),
     Frequency(90.0, 1, "d1", 1).written_at(LOG, 1, 61).to_json()),
    (visits, Visits({"s1": (50.0, 100.0)}).written_at(LOG, 1, 80).to_json(),
     Visits({"s1": (50.0, 90.0)}).written_at(LOG, 1, 61).to_json()),
    (attribution, AttributionState(applied={(LOG, 1): 80, ("purchases", 1): 9}).to_json(),
     AttributionState(applied={(LOG, 1): 61, ("purchases", 1): 9}).to_json()),
], ids=["presence", "frequency", "visits", "attribution"])
def test_a_late_write_of_an_offers_table_is_skipped_on_restore(
        table: Any, newer: dict[str, Any], late: dict[str, Any]) -> None:
    """The in-store tables keep the newest by their positions' offsets too (a zombie's late
    write would bring back a presence, a visit's clock or the caps' counts of the past)."""
    key = f"late-{table.name}"
    table.apply_changelog_batch([record(0, key, newer, table), record(1, key, late, table)])
    assert table.data.get(key) == newer
    later = {**newer, "applied": [[LOG, 1, 81]]}  # a newer write applies as written
    table.apply_changelog_batch([record(2, key, later, table)])
    assert table.data.get(key) == later


def test_a_dead_letter_mark_never_goes_back_on_restore() -> None:
    """Else records of a partition kept through a rebalance under exactly_once, read again
    from its committed offset, were dead-lettered a second time into the transaction that
    held their first dead letters (both committed)."""
    key = "products:2"
    dead_letter_marks.apply_changelog_batch([record(0, key, 10, dead_letter_marks),
                                             record(1, key, 7, dead_letter_marks)])
    assert dead_letter_marks.data.get(key) == 10
    dead_letter_marks.apply_changelog_batch([record(2, key, 12, dead_letter_marks)])
    assert dead_letter_marks.data.get(key) == 12
