"""The rolling window's packed day buckets (issue 22, criterion 2): the compact form holds
exactly what a plain ``{day: cents}`` dict would, through every operation the rules use, the
changelog codec, and records written before the packing."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from core.day_buckets import EMPTY_DAYS, DayBuckets
from core.loyalty import LoyaltyRules, Purchase, Spend, replay
from core.tiers import window_days

DAY = 86_400.0

days_st = st.integers(-5, 20_000)
adds_st = st.dictionaries(days_st, st.integers(-50_000, 50_000), max_size=4)


def naive_merge(buckets: dict[int, int], adds: dict[int, int], first: int) -> dict[int, int]:
    """What the buckets become: written out on a plain dict, not imported."""
    out = dict(buckets)
    for day, cents in adds.items():
        out[day] = out.get(day, 0) + cents
    return {day: cents for day, cents in out.items() if day >= first and cents != 0}


def assert_same(packed: DayBuckets, naive: dict[int, int], first: int) -> None:
    assert packed.to_dict() == naive and dict(packed.items()) == naive
    assert packed == naive and len(packed) == len(naive) and bool(packed) == bool(naive)
    assert list(packed) == sorted(naive) and sorted(packed.values()) == sorted(naive.values())
    assert packed.since(first) == sum(c for d, c in naive.items() if d >= first)
    for day in list(naive)[:3]:
        assert day in packed and packed[day] == naive[day]
    assert (max(naive, default=0) + 1) not in packed
    assert DayBuckets.of(naive) == packed and DayBuckets.of(naive).packed == packed.packed
    assert packed.packed.isascii() and " " not in packed.packed


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(adds_st, st.integers(0, 400)), max_size=30), st.integers(0, 20_000))
def test_the_packed_buckets_hold_what_a_day_dict_holds(
        steps: list[tuple[dict[int, int], int]], start: int) -> None:
    packed, naive, first = EMPTY_DAYS, {}, start - 400
    for adds, advance in steps:
        first += advance  # the window's first day only moves forward, as event time does
        packed = packed.merged(adds, first)
        naive = naive_merge(naive, adds, first)
        assert_same(packed, naive, first)
        # the changelog round trip (JSON) and a record written before the packing
        spend = Spend(settled_cents=1, days=packed)
        back = Spend.from_json(orjson.loads(orjson.dumps(spend.to_json())))
        assert back == spend and back.days == naive
        old = {**spend.to_json(), "days": {str(d): c for d, c in naive.items()}}
        old.pop("day_cents", None)
        assert Spend.from_json(old) == spend


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(days_st, st.integers(-1_000, 1_000), max_size=40),
       st.integers(0, 20_000), st.integers(1, 400))
def test_window_days_keeps_the_window_and_drops_empty_days(
        buckets: dict[int, int], today: int, window: int) -> None:
    first = today - window + 1
    naive = {d: c for d, c in buckets.items() if d >= first and c}
    assert_same(window_days(buckets, today, window), naive, first)
    assert_same(window_days(DayBuckets.of(buckets), today, window), naive, first)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 30.0), st.integers(1, 10_000)), min_size=1,
                max_size=40), st.integers(1, 60))
def test_after_any_purchases_the_buckets_are_the_window_s_spend_per_day(
        steps: list[tuple[float, int]], window: int) -> None:
    """Through the real rules: priced purchases settle at once, so the buckets are each
    day's spend within the window ending on the newest purchase's day."""
    ts, purchases = 0.0, []
    for gap_days, cents in steps:
        ts += gap_days * DAY
        purchases.append(Purchase("k", "tea", ts, cents))
    spend, *_ = replay(purchases, lambda _: (), LoyaltyRules(tier_window_days=window))
    today = int(ts // DAY)
    naive: dict[int, int] = {}
    for p in purchases:
        day = int(p.ts // DAY)
        if day > today - window:
            naive[day] = naive.get(day, 0) + (p.price_cents or 0)
    assert spend.days == naive and spend.days.to_dict() == naive


def test_the_packing_is_short_text() -> None:
    packed = DayBuckets.of({20_454: 250, 20_455: 1_999, 20_460: 45_000})
    assert packed.packed == "20454,250,1,1999,5,45000"
    assert Spend(days=packed).to_json()["day_cents"] == packed.packed
    assert DayBuckets.of({20_454: 0}) is EMPTY_DAYS and not EMPTY_DAYS and len(EMPTY_DAYS) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.dictionaries(st.integers(-2, 3), st.integers(-900, 900),
                                          max_size=3),
                          st.integers(0, 2), st.booleans()), max_size=60),
       st.integers(400, 20_000))
def test_a_batch_of_additions_read_before_and_after_folding_matches_a_day_dict(
        steps: list[tuple[dict[int, int], int, bool]], today: int) -> None:
    """Purchases of a batch add around the newest day (settling the day before, starting
    the next) and are read (the window's total) long before the record is written: the
    lazy additions and the folding into the string agree with a plain dict throughout."""
    packed, naive, window = EMPTY_DAYS, {}, 30
    for near, advance, write in steps:
        today += advance
        first = today - window + 1
        adds = {today + offset: cents for offset, cents in near.items()}
        packed = packed.merged(adds, first)
        naive = naive_merge(naive, adds, first)
        assert packed.since(first) == sum(naive.values())  # before any folding
        assert packed.since(first + 2) == sum(c for d, c in naive.items() if d >= first + 2)
        if write:  # the record is written: the additions are folded into the string
            assert_same(packed, naive, first)
    assert_same(packed, naive, today - window + 1)
