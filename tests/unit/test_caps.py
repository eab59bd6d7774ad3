"""Frequency caps per visit and per day, and a store's quiet hours in its own time zone."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from core.caps import (
    DAY_CAP,
    QUIET_HOURS,
    VISIT_CAP,
    Caps,
    Frequency,
    StoreSettings,
    apply_caps,
    parse_quiet_hours,
)

LONDON = StoreSettings("s1", "Europe/London", parse_quiet_hours("21:00-08:00"))
NEW_YORK = StoreSettings("s2", "America/New_York", parse_quiet_hours("12:00-13:30"))


def epoch(text: str) -> float:
    """An ISO time with its UTC offset, as epoch seconds (the oracle: datetime alone)."""
    return datetime.fromisoformat(text).timestamp()


def test_quiet_hours_are_read_in_the_stores_own_time_zone() -> None:
    # 22:30 in London in summer is 21:30 UTC; 07:59 local is quiet, 08:00 is not.
    assert LONDON.quiet(epoch("2026-07-01T21:30:00+00:00"))
    assert LONDON.quiet(epoch("2026-07-01T07:59:00+01:00"))
    assert not LONDON.quiet(epoch("2026-07-01T08:00:00+01:00"))
    assert not LONDON.quiet(epoch("2026-07-01T20:30:00+01:00"))
    assert NEW_YORK.quiet(epoch("2026-01-15T17:15:00+00:00"))  # 12:15 in New York
    assert not NEW_YORK.quiet(epoch("2026-01-15T12:15:00+00:00"))
    assert not StoreSettings("s3").quiet(0.0)


def test_bad_store_settings_are_refused() -> None:
    for bad in ("21:00", "25:00-08:00", "21:00-08:61"):
        with pytest.raises(ValueError):
            parse_quiet_hours(bad)
    with pytest.raises(KeyError):  # zoneinfo's ZoneInfoNotFoundError
        StoreSettings("s9", "Mars/Olympus")


def test_a_visit_allows_so_many_offers_then_withholds_them_until_the_next_visit() -> None:
    caps = Caps(per_visit=2, visit_gap_s=1800)
    kept, withheld, state = apply_caps(["a", "b", "c"], Frequency(), 0.0, "d1", caps, False)
    assert kept == ["a", "b"] and withheld == [("c", VISIT_CAP)]
    kept, withheld, state = apply_caps(["d"], state, 1700.0, "d1", caps, False)
    assert kept == [] and withheld == [("d", VISIT_CAP)]
    kept, _, state = apply_caps(["e"], state, 1700.0 + 1801, "d1", caps, False)
    assert kept == ["e"]  # over half an hour without positions: a new visit


def test_a_day_allows_so_many_offers_across_visits() -> None:
    caps = Caps(per_visit=5, per_day=3, visit_gap_s=60)
    state = Frequency()
    got = []
    for n, ts in enumerate((0.0, 100.0, 200.0, 300.0)):
        kept, withheld, state = apply_caps([f"o{n}"], state, ts, "d1", caps, False)
        got.append((kept, withheld))
    assert got[3] == ([], [("o3", DAY_CAP)])
    kept, _, _ = apply_caps(["next"], state, 400.0, "d2", caps, False)
    assert kept == ["next"]


def test_nothing_goes_out_in_quiet_hours_and_nothing_is_counted_against_the_caps() -> None:
    kept, withheld, state = apply_caps(["a"], Frequency(), 0.0, "d1", Caps(per_day=1), True)
    assert kept == [] and withheld == [("a", QUIET_HOURS)] and state.day_offers == 0


@given(st.lists(st.tuples(st.floats(0, 50), st.integers(0, 4)), max_size=40),
       st.integers(1, 4), st.integers(1, 8))
@example(steps=[(34.4851744188615, 1), (30.0, 1)], per_visit=1, per_day=2)
def test_no_visit_and_no_day_ever_gets_more_than_its_cap(
        steps: list[tuple[float, int]], per_visit: int, per_day: int) -> None:
    caps = Caps(per_visit=per_visit, per_day=per_day, visit_gap_s=30)
    state, ts = Frequency(), 0.0
    visits: list[int] = [0]
    total = 0
    for gap, count in steps:
        last, ts = ts, ts + gap
        if ts - last > 30:  # as the clock reads it (34.49 + 30.0 - 34.49 is over 30)
            visits.append(0)
        kept, withheld, state = apply_caps(list(range(count)), state, ts, "d1", caps, False)
        assert len(kept) + len(withheld) == count
        visits[-1] += len(kept)
        total += len(kept)
    assert max(visits) <= per_visit and total <= per_day
    assert Frequency.from_json(state.to_json()) == state


@given(ts=st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False),
       zone=st.sampled_from(["UTC", "Europe/London", "America/New_York", "Asia/Kolkata",
                             "Australia/Adelaide", "America/St_Johns"]))
def test_quiet_hours_and_day_are_the_local_clock_at_any_instant(ts: float, zone: str) -> None:
    # The conversions are cached per second: any instant of a second reads the same.
    store = StoreSettings("s", zone, parse_quiet_hours("00:00-12:00"))
    local = datetime.fromtimestamp(ts, ZoneInfo(zone))
    assert store.day(ts) == local.date().isoformat()
    assert store.quiet(ts) == (local.hour < 12)


def test_counts_remember_the_last_position_written_and_keep_it_through_json() -> None:
    state = Frequency(10.0, 1, "d1", 1).written_at("loc", 2, 40).written_at("loc", 2, 39)
    assert state.applied == {("loc", 2): 40}  # never back
    again = Frequency.from_json(state.to_json())
    assert again == state and again.at(20.0, "d1", Caps(per_visit=2)).applied == state.applied
    assert Frequency.from_json({"last_seen": None, "visit_offers": 0, "day": "",
                                "day_offers": 0}).applied == {}  # written before it existed
