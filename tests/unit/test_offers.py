"""Unit tests for core.offers: matching, tiers, cooldown, offer ids, decide_offers and replays."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from decimal import Decimal

import hypothesis
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.geo import DEFAULT_RADIUS_M, EARTH_RADIUS_M, Display, DisplayIndex
from core.offers import (
    DEFAULT_COOLDOWN_S,
    CooldownState,
    Offer,
    PositionSource,
    Promotion,
    PromotionIndex,
    Tier,
    Window,
    cooldown_allows,
    decide_offers,
    offer_id,
    parse_discount,
    parse_promotion,
    parse_tier,
    promotion_matches_display,
    prune_last_offered,
    record_offers,
    tier_allows,
    window_allows,
)

STORE_LAT, STORE_LON = 51.5072, -0.1276
M_PER_DEG = math.pi * EARTH_RADIUS_M / 180.0
T0 = 1_700_000_000.0


def north(metres: float) -> tuple[float, float]:
    """A point ``metres`` north of the store anchor."""
    return STORE_LAT + metres / M_PER_DEG, STORE_LON


MILK = Display("101", *north(0.0), segment="dairy", variant="1L", store_id="s1")
CHEESE = Display("202", *north(0.5), segment="dairy", variant="200g", store_id="s1")
BREAD = Display("303", *north(0.3), segment="bakery", variant="loaf", store_id="s1")


def make_displays(*displays: Display) -> DisplayIndex:
    index = DisplayIndex()
    for display in displays or (MILK, CHEESE, BREAD):
        index.upsert(display)
    return index


def decide(
    promotions: PromotionIndex,
    *,
    ts: float = T0,
    at: tuple[float, float] = (STORE_LAT, STORE_LON),
    displays: DisplayIndex | None = None,
    opted_out: bool = False,
    tier: Tier | str | None = "GOLD",
    last_offered: Mapping[tuple[str, str], float] | None = None,
    uid: str = "u1",
) -> list[Offer]:
    return decide_offers(
        uid,
        *at,
        ts,
        opted_out=opted_out,
        tier=tier,
        displays=displays if displays is not None else make_displays(),
        promotions=promotions,
        last_offered=last_offered or {},
        radius_m=DEFAULT_RADIUS_M,
        cooldown_s=DEFAULT_COOLDOWN_S,
    )


# --- parsing ----------------------------------------------------------------------------


def test_parse_promotion_normalises_fields() -> None:
    promo = parse_promotion(
        {"pid": 7, "sku": 101, "discount_pct": "12.50", "min_tier": "silver", "ts": T0}
    )
    assert promo == Promotion("7", Decimal("12.50"), sku="101", min_tier=Tier.SILVER, ts=T0)
    assert promo.active is True and promo.segment is None


def test_parse_promotion_segment_only_with_defaults() -> None:
    promo = parse_promotion({"pid": "p", "segment": "dairy", "discount_pct": 10})
    assert (promo.sku, promo.segment, promo.min_tier, promo.active) == (None, "dairy", None, True)


@pytest.mark.parametrize(
    "record",
    [
        {"pid": "p", "discount_pct": 10},
        {"pid": "p", "sku": "", "segment": " ", "discount_pct": 10},
        {"pid": "p", "sku": "1", "discount_pct": 101},
        {"pid": "p", "sku": "1", "discount_pct": -1},
        {"pid": "p", "sku": "1", "discount_pct": "ten"},
        {"pid": "p", "sku": "1", "discount_pct": 10, "min_tier": "PLATINUM"},
        {"sku": "1", "discount_pct": 10},
    ],
)
def test_parse_promotion_rejects_bad_records(record: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        parse_promotion(record)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (10, 10),
        ("15", 15),
        (Decimal("20.0"), 20),
        (12.5, Decimal("12.5")),
        ("0.1", Decimal("0.1")),
        (100, 100),
        (0, 0),
    ],
)
def test_discount_is_kept_exact(raw: object, expected: int | Decimal) -> None:
    parsed = parse_discount(raw)
    assert parsed == expected
    assert type(parsed) is type(expected)


def test_promotion_rejects_float_discount() -> None:
    with pytest.raises(ValueError):
        Promotion("p", 12.5, sku="1")  # type: ignore[arg-type]


# --- matching ---------------------------------------------------------------------------


def test_segment_match_and_sku_match() -> None:
    by_sku = Promotion("p-sku", 10, sku="101")
    by_segment = Promotion("p-seg", 5, segment="dairy")
    both = Promotion("p-both", 5, sku="303", segment="dairy")
    assert promotion_matches_display(by_sku, MILK)
    assert not promotion_matches_display(by_sku, CHEESE)
    assert promotion_matches_display(by_segment, MILK)
    assert promotion_matches_display(by_segment, CHEESE)
    assert not promotion_matches_display(by_segment, BREAD)
    assert all(promotion_matches_display(both, d) for d in (MILK, CHEESE, BREAD))

    index = PromotionIndex([by_sku, by_segment, both])
    assert [p.pid for p in index.promotions_for(MILK)] == ["p-both", "p-seg", "p-sku"]
    assert [p.pid for p in index.promotions_for(BREAD)] == ["p-both"]


def test_inactive_promotion_does_not_match() -> None:
    promo = Promotion("p", 10, sku="101", active=False)
    assert not promotion_matches_display(promo, MILK)
    assert PromotionIndex([promo]).promotions_for(MILK) == []


def test_promotion_update_moves_between_skus() -> None:
    index = PromotionIndex([Promotion("p", 10, sku="101", ts=1)])
    index.upsert(Promotion("p", 10, sku="202", ts=2))
    assert index.promotions_for(MILK) == []
    assert [p.pid for p in index.promotions_for(CHEESE)] == ["p"]
    assert len(index) == 1


# --- tiers ------------------------------------------------------------------------------


def test_tier_order() -> None:
    assert Tier.CLIMBING < Tier.BRONZE < Tier.SILVER < Tier.GOLD
    assert parse_tier(" gold ") is Tier.GOLD
    assert parse_tier(None) is None and parse_tier("") is None


@pytest.mark.parametrize("name", ["CLIMBING", "BRONZE", "SILVER", "GOLD"])
def test_a_tier_is_read_from_its_name_in_any_case(name: str) -> None:
    for written in (name, name.lower(), name.title(), f" {name} "):
        assert parse_tier(written) is Tier[name]


@pytest.mark.parametrize("value", ["PLATINUM", "gold!", "  x ", 3])
def test_an_unknown_tier_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="unknown tier"):
        parse_tier(value)


@pytest.mark.parametrize(
    ("customer", "minimum", "allowed"),
    [
        ("GOLD", "GOLD", True),
        ("SILVER", "GOLD", False),
        ("GOLD", "BRONZE", True),
        ("BRONZE", "SILVER", False),
        ("CLIMBING", "CLIMBING", True),
        ("CLIMBING", "BRONZE", False),
        (None, None, True),
        (None, "CLIMBING", True),
        (None, "BRONZE", False),
        ("BRONZE", None, True),
    ],
)
def test_tier_allows(customer: str | None, minimum: str | None, allowed: bool) -> None:
    assert tier_allows(customer, minimum) is allowed


@pytest.mark.parametrize(
    ("customer", "offered"), [("CLIMBING", False), ("BRONZE", False), ("SILVER", True)]
)
def test_min_tier_gates_offer(customer: str, offered: bool) -> None:
    promotions = PromotionIndex([Promotion("p", 10, sku="101", min_tier=Tier.SILVER)])
    assert bool(decide(promotions, tier=customer)) is offered


def test_unknown_customer_tier_is_an_error() -> None:
    with pytest.raises(ValueError):
        decide(PromotionIndex(), tier="PLATINUM")


# --- cooldown ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "now", "allowed"),
    [
        (None, T0, True),
        (T0, T0, False),
        (T0, T0 + 1799.999, False),
        (T0, T0 + 1800, True),
        (T0, T0 - 5, False),  # late event from before the last offer
    ],
)
def test_cooldown_allows(last: float | None, now: float, allowed: bool) -> None:
    assert cooldown_allows(last, now, 1800) is allowed


def test_offer_not_repeated_within_cooldown() -> None:
    promotions = PromotionIndex([Promotion("p", 10, sku="101")])
    first = decide(promotions, ts=T0)
    assert len(first) == 1
    state = record_offers({}, first)
    assert state == {("p", "101"): T0}
    assert decide(promotions, ts=T0 + 60, last_offered=state) == []
    assert decide(promotions, ts=T0 + DEFAULT_COOLDOWN_S - 0.001, last_offered=state) == []
    again = decide(promotions, ts=T0 + DEFAULT_COOLDOWN_S, last_offered=state)
    assert len(again) == 1
    assert again[0].offer_id != first[0].offer_id


def test_cooldown_is_per_customer_promotion_and_sku() -> None:
    promotions = PromotionIndex([Promotion("p", 10, segment="dairy"), Promotion("q", 5, sku="101")])
    state = {("p", "101"): T0}
    offers = decide(promotions, ts=T0 + 1, last_offered=state)
    assert {(o.pid, o.sku) for o in offers} == {("p", "202"), ("q", "101")}


def test_prune_last_offered_keeps_only_blocking_entries() -> None:
    state = {("p", "1"): T0, ("p", "2"): T0 + 1000}
    assert prune_last_offered(state, T0 + 1800, 1800) == {("p", "2"): T0 + 1000}


# --- decide_offers ----------------------------------------------------------------------


def test_offer_carries_display_and_promotion_fields() -> None:
    promotions = PromotionIndex([Promotion("p", Decimal("7.5"), sku="101")])
    [offer] = decide(promotions, at=north(0.1))
    assert (offer.uid, offer.pid, offer.sku, offer.store_id) == ("u1", "p", "101", "s1")
    assert (offer.segment, offer.variant, offer.discount_pct) == ("dairy", "1L", Decimal("7.5"))
    assert offer.distance_m == pytest.approx(0.1, abs=1e-6)
    assert offer.ts == T0
    assert offer.to_record()["discount_pct"] == "7.5"


def test_opted_out_customer_gets_no_offer() -> None:
    promotions = PromotionIndex([Promotion("p", 10, segment="dairy")])
    assert decide(promotions, opted_out=True) == []
    assert decide(promotions, opted_out=False) != []


def test_ended_promotion_never_offered() -> None:
    promotions = PromotionIndex([Promotion("p", 10, sku="101", ts=T0)])
    assert decide(promotions) != []
    promotions.upsert(Promotion("p", 10, sku="101", active=False, ts=T0 + 10))
    assert decide(promotions, ts=T0 + 20) == []
    # A stale, out-of-order "active" record must not resurrect the ended promotion.
    assert promotions.upsert(Promotion("p", 10, sku="101", ts=T0 + 5)) is False
    assert decide(promotions, ts=T0 + 30) == []
    # Positions replayed from before the end are not offered either: it has ended.
    assert decide(promotions, ts=T0 + 1) == []


def test_no_offer_beyond_radius() -> None:
    promotions = PromotionIndex([Promotion("p", 10, sku="101")])
    assert decide(promotions, at=north(-0.9)) != []
    assert decide(promotions, at=north(-0.95)) == []


def test_inactive_display_gives_no_offer() -> None:
    displays = make_displays()
    displays.upsert(Display("101", *north(0.0), segment="dairy", store_id="s1", active=False))
    promotions = PromotionIndex([Promotion("p", 10, sku="101")])
    assert decide(promotions, displays=displays) == []


def test_at_most_one_offer_per_promotion_and_sku_nearest_wins() -> None:
    near_display = Display("101", *north(0.2), segment="dairy", store_id="s1")
    far_display = Display("101", *north(-0.4), segment="dairy", store_id="s2")
    promotions = PromotionIndex([Promotion("p", 10, sku="101"), Promotion("q", 5, segment="dairy")])
    offers = decide(promotions, displays=make_displays(near_display, far_display))
    assert [(o.pid, o.sku, o.store_id) for o in offers] == [("p", "101", "s1"), ("q", "101", "s1")]


def test_offers_are_in_deterministic_order() -> None:
    promotions = PromotionIndex(
        [Promotion("z", 1, segment="dairy"), Promotion("a", 2, segment="dairy"),
         Promotion("m", 3, segment="bakery")]
    )  # fmt: skip
    offers = decide(promotions)
    assert [(o.sku, o.pid) for o in offers] == [
        ("101", "a"), ("101", "z"), ("303", "m"), ("202", "a"), ("202", "z"),
    ]  # fmt: skip


def test_invalid_position_gives_no_offer() -> None:
    promotions = PromotionIndex([Promotion("p", 10, sku="101")])
    assert decide(promotions, at=(91.0, 0.0)) == []
    assert decide(promotions, at=(math.nan, 0.0)) == []
    assert decide(promotions, ts=math.nan) == []


def test_offer_time_is_event_time() -> None:
    promotions = PromotionIndex([Promotion("p", 10, sku="101")])
    [offer] = decide(promotions, ts=1_000.0)
    assert offer.ts == 1_000.0
    assert offer.offer_id == offer_id("u1", "p", "101", 1_000.0)


# --- offer ids and replay ---------------------------------------------------------------


def test_offer_id_is_deterministic_for_replay() -> None:
    promotions = PromotionIndex([Promotion("p", 10, segment="dairy")])
    positions = [(T0 + i * 120.0, north(0.4 * math.sin(i))) for i in range(60)]

    def run() -> list[Offer]:
        state: dict[tuple[str, str], float] = {}
        emitted: list[Offer] = []
        for ts, at in positions:
            offers = decide(promotions, ts=ts, at=at, last_offered=state)
            state = record_offers(state, offers)
            emitted.extend(offers)
        return emitted

    first, replay = run(), run()
    assert first == replay
    assert len({o.offer_id for o in first}) == len(first)
    assert len(first) > 2  # several cooldown windows were opened


def test_offer_id_depends_on_every_part() -> None:
    base = offer_id("u", "p", "s", T0)
    assert base == offer_id("u", "p", "s", T0)
    assert len(base) == 32 and int(base, 16) >= 0
    variants = [("u2", "p", "s", T0), ("u", "p2", "s", T0), ("u", "p", "s2", T0)]
    variants.append(("u", "p", "s", T0 + 1))
    assert base not in {offer_id(*v) for v in variants}
    # Separators in ids cannot make two different triples collide.
    assert offer_id("a|b", "c", "d", T0) != offer_id("a", "b|c", "d", T0)


def test_offer_id_same_for_int_and_float_ts() -> None:
    assert offer_id("u", "p", "s", 1_700_000_000) == offer_id("u", "p", "s", 1_700_000_000.0)


positions_strategy = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=4 * 3600.0, allow_nan=False),
        st.floats(min_value=-1.5, max_value=1.5, allow_nan=False),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(events=positions_strategy, cooldown_s=st.sampled_from([0.0, 60.0, 1800.0]))
def test_cooldown_invariant_and_replay_property(
    events: list[tuple[float, float]], cooldown_s: float
) -> None:
    promotions = PromotionIndex(
        [Promotion("p", 10, segment="dairy"), Promotion("q", Decimal("2.5"), sku="303")]
    )
    displays = make_displays()

    def run() -> list[Offer]:
        state: dict[tuple[str, str], float] = {}
        emitted: list[Offer] = []
        for dt, metres in sorted(events):
            offers = decide_offers(
                "u1", *north(metres), T0 + dt, opted_out=False, tier=None,
                displays=displays, promotions=promotions, last_offered=state,
                cooldown_s=cooldown_s,
            )  # fmt: skip
            assert len({o.cooldown_key for o in offers}) == len(offers)
            state = record_offers(state, offers)
            emitted.extend(offers)
        return emitted

    emitted = run()
    assert emitted == run()
    if any(abs(metres) <= 0.9 for _, metres in events):  # within reach of MILK's promotion
        assert emitted
    hypothesis.event(f"offers emitted: {min(len(emitted), 3)}{'+' if len(emitted) >= 3 else ''}")
    last_seen: dict[tuple[str, str], float] = {}
    for offer in emitted:
        previous = last_seen.get(offer.cooldown_key)
        assert previous is None or offer.ts - previous >= cooldown_s
        last_seen[offer.cooldown_key] = offer.ts
        assert offer.distance_m <= DEFAULT_RADIUS_M


# --- replays told by source offset, not timestamp ---------------------------------------

LOCATIONS = "customers.locations"
TWO_PROMOTIONS = [Promotion("p", 10, sku="101"), Promotion("q", 5, segment="dairy")]


def at(offset: int, topic: str = LOCATIONS, partition: int = 3) -> PositionSource:
    return PositionSource(topic, partition, offset)


def step(
    state: CooldownState,
    source: PositionSource,
    ts: float,
    *,
    where: tuple[float, float] = (STORE_LAT, STORE_LON),
    promotions: PromotionIndex | None = None,
    displays: DisplayIndex | None = None,
    cooldown_s: float = DEFAULT_COOLDOWN_S,
) -> tuple[CooldownState, list[Offer]]:
    """One position through the rules as the locations agent applies them."""
    offers = decide_offers(
        "u1", *where, ts, opted_out=False, tier=None,
        displays=displays if displays is not None else make_displays(MILK),
        promotions=promotions if promotions is not None else PromotionIndex(TWO_PROMOTIONS),
        last_offered=state.windows, cooldown_s=cooldown_s,
        source=source, redelivered=state.redelivers(source),
    )  # fmt: skip
    if offers:
        state = state.after(offers, source, ts, cooldown_s)
    return state, offers


def test_redelivered_position_yields_same_offer_ids() -> None:
    state, first = step(CooldownState(), at(5), T0)
    assert [(o.pid, o.sku) for o in first] == [("p", "101"), ("q", "101")]
    # Redelivered after a crash before the commit, onto the state it already wrote ...
    again_state, again = step(state, at(5), T0)
    assert again == first and again_state == state
    # ... or onto state from before it (the changelog write was lost too): the same ids.
    _, fresh = step(CooldownState(), at(5), T0)
    assert [o.offer_id for o in fresh] == [o.offer_id for o in first]


def test_distinct_position_same_timestamp_within_cooldown_yields_nothing() -> None:
    """A shopper lingering at a display: 8 positions stamped in the same millisecond, two
    promotions -> one offer per promotion, not eight."""
    state = CooldownState()
    emitted: list[Offer] = []
    for offset in range(8):
        state, offers = step(state, at(offset), T0)
        emitted += offers
    assert [(o.pid, o.source) for o in emitted] == [("p", at(0)), ("q", at(0))]


def test_distinct_position_earlier_timestamp_within_cooldown_yields_nothing() -> None:
    state, first = step(CooldownState(), at(0), T0)
    assert len(first) == 2
    for offset, ts in enumerate([T0 - 0.001, T0 - 600, T0 - 10 * DEFAULT_COOLDOWN_S], 1):
        assert step(state, at(offset), ts)[1] == []


def test_distinct_position_after_the_cooldown_opens_a_new_window() -> None:
    state, first = step(CooldownState(), at(0), T0)
    assert step(state, at(1), T0 + DEFAULT_COOLDOWN_S - 0.001)[1] == []
    state, again = step(state, at(2), T0 + DEFAULT_COOLDOWN_S)
    assert len(again) == 2
    assert not {o.offer_id for o in again} & {o.offer_id for o in first}
    assert step(state, at(0), T0)[1] == []  # the first position, redelivered: now superseded


def test_position_from_another_log_is_a_distinct_position() -> None:
    """A keyless position forwarded through the repartition topic has offsets of its own."""
    state, first = step(CooldownState(), at(7), T0)
    assert step(state, at(7, topic=LOCATIONS + ".repartition"), T0)[1] == []
    assert step(state, at(7, partition=1), T0)[1] == []
    assert len(first) == 2


def test_earlier_record_of_the_same_log_redelivered_yields_nothing() -> None:
    """A record before the window's opener was processed before it and opened nothing."""
    promotions = PromotionIndex([Promotion("p", 10, sku="101")])
    state, first = step(CooldownState(), at(9), T0, promotions=promotions)
    assert len(first) == 1
    assert step(state, at(4), T0 + 5 * DEFAULT_COOLDOWN_S, promotions=promotions)[1] == []


def test_redelivered_record_is_not_offered_what_a_pruned_window_blocked() -> None:
    """Pruning drops windows that no longer block later positions; a record redelivered from
    before it must not slip through the gap."""
    promotions = PromotionIndex([Promotion("p", 10, sku="101"), Promotion("b", 5, sku="303")])
    displays = make_displays(MILK, BREAD)
    state, first = step(CooldownState(), at(0), T0, promotions=promotions, displays=displays)
    assert {o.pid for o in first} == {"p", "b"}
    blocked = step(state, at(1), T0 + 10, promotions=promotions, displays=displays)
    assert blocked == (state, [])
    # far later, near the milk only: p's window reopens, b's (no longer blocking) is pruned
    later = T0 + 3 * DEFAULT_COOLDOWN_S
    state, reopened = step(state, at(2), later, where=north(-0.7), promotions=promotions,
                           displays=displays)
    assert [o.pid for o in reopened] == ["p"] and ("b", "303") not in state.windows
    # the crash: positions 1 and 2 come again
    assert step(state, at(1), T0 + 10, promotions=promotions, displays=displays)[1] == []
    again = step(state, at(2), later, where=north(-0.7), promotions=promotions,
                 displays=displays)[1]
    assert again == reopened


def test_window_of_unknown_source_blocks_by_timestamp_alone() -> None:
    """State written before sources were kept: ``last_offered`` holds bare timestamps."""
    legacy = CooldownState.from_json({"last_offered": {"p\x1f101": T0}})
    assert legacy.windows == {("p", "101"): Window(T0)}
    _, offers = step(legacy, at(0), T0)
    assert [o.pid for o in offers] == ["q"]
    assert window_allows(T0, T0, at(1), 60.0) is False
    assert window_allows(T0, T0 + 60, at(1), 60.0) is True


def test_window_allows_rules() -> None:
    opened = Window(T0, at(5))
    assert window_allows(None, T0, at(6), 60.0)
    assert window_allows(opened, T0, at(5), 60.0)  # the opener itself
    assert window_allows(opened, T0 - 1, at(5), 60.0)
    assert not window_allows(opened, T0, at(6), 60.0)  # same ts, distinct position
    assert not window_allows(opened, T0 - 1, at(6), 60.0)  # earlier ts
    assert window_allows(opened, T0 + 60, at(6), 60.0)  # the cooldown has passed
    assert not window_allows(opened, T0 + 600, at(4), 60.0)  # before the opener: replayed
    assert window_allows(opened, T0, at(5), 60.0, redelivered=True)
    assert not window_allows(opened, T0 + 600, at(6), 60.0, redelivered=True)
    assert not window_allows(None, T0, at(6), 60.0, redelivered=True)


def test_offer_id_depends_on_the_source() -> None:
    base = offer_id("u", "p", "s", T0, at(5))
    assert base == offer_id("u", "p", "s", T0, PositionSource(LOCATIONS, 3, 5))
    others = {offer_id("u", "p", "s", T0, src) for src in
              (at(6), at(5, partition=2), at(5, topic=LOCATIONS + ".repartition"))}
    others.add(offer_id("u", "p", "s", T0))
    assert base not in others and len(others) == 4


def test_cooldown_state_round_trips_through_json() -> None:
    state, _ = step(CooldownState(), at(5), T0)
    state, _ = step(state, at(2, topic=LOCATIONS + ".repartition"), T0 + DEFAULT_COOLDOWN_S)
    raw = state.to_json()
    assert raw["last_offered"] == {"p\x1f101": T0 + DEFAULT_COOLDOWN_S,
                                   "q\x1f101": T0 + DEFAULT_COOLDOWN_S}
    assert raw["applied"] == [[LOCATIONS, 3, 5], [LOCATIONS + ".repartition", 3, 2]]
    assert CooldownState.from_json(orjson.loads(orjson.dumps(raw))) == state
    assert CooldownState.from_json(None) == CooldownState()


@settings(max_examples=200, deadline=None)
@given(
    stamps=st.lists(st.sampled_from([0.0, 0.0005, 1.0, 59.0, 60.0, 130.0, 400.0, -30.0]),
                    min_size=1, max_size=30),
    spots=st.data(),
    cooldown_s=st.sampled_from([0.0, 60.0, 1800.0]),
)
def test_replay_after_a_crash_repeats_offers_and_adds_none(
    stamps: list[float], spots: st.DataObject, cooldown_s: float
) -> None:
    """Positions at offsets 0..n-1 (timestamps colliding, going back, or absent and stamped
    alike); a crash leaves state written up to any record and a commit at or before it; the
    records from the commit on are delivered again. Replayed records yield only offers they
    yielded the first time, with the same ids; records past the state yield exactly what they
    did; and in offset order a (pid, sku) is offered again only once the cooldown passed (or
    its window was pruned: events more than a cooldown late are not held back)."""
    n = len(stamps)
    wheres = [north(m) for m in spots.draw(st.lists(
        st.sampled_from([0.0, 0.3, -0.7, 1.5]), min_size=n, max_size=n))]
    promotions = PromotionIndex([*TWO_PROMOTIONS, Promotion("b", 5, segment="bakery")])
    displays = make_displays()

    def run(state: CooldownState, start: int, stop: int,
            states: list[CooldownState] | None = None) -> dict[int, list[Offer]]:
        out: dict[int, list[Offer]] = {}
        for offset in range(start, stop):
            if states is not None:
                states.append(state)
            state, out[offset] = step(state, at(offset), T0 + stamps[offset],
                                      where=wheres[offset], promotions=promotions,
                                      displays=displays, cooldown_s=cooldown_s)
        if states is not None:
            states.append(state)
        return out

    states: list[CooldownState] = []
    original = run(CooldownState(), 0, n, states)
    assert run(CooldownState(), 0, n) == original  # deterministic

    written = spots.draw(st.integers(0, n))
    committed = spots.draw(st.integers(0, written))
    replayed = run(states[written], committed, n)
    for offset in range(committed, n):
        if offset >= written:
            assert replayed[offset] == original[offset]
        else:
            assert set(replayed[offset]) <= set(original[offset])

    opened: dict[tuple[str, str], Offer] = {}
    newest_written = -math.inf  # windows are pruned once 2 cooldowns older than a written ts
    for offset in range(n):
        for offer in original[offset]:
            previous = opened.get(offer.cooldown_key)
            assert (previous is None or offer.ts - previous.ts >= cooldown_s
                    or previous.ts <= newest_written - 2 * cooldown_s), (offset, offer)
            opened[offer.cooldown_key] = offer
        if original[offset]:
            newest_written = max(newest_written, T0 + stamps[offset])
    ids = [o.offer_id for offers in original.values() for o in offers]
    assert len(ids) == len(set(ids))


@given(uid=st.text(), pid=st.text(), sku=st.text(),
       window_start=st.floats(min_value=-1e20, max_value=1e20, allow_nan=False),
       topic=st.text(), partition=st.integers(0, 1_000),
       offset=st.integers(0, 2**62))
def test_offer_ids_are_the_sha256_of_the_compact_json_of_their_parts(
        uid: str, pid: str, sku: str, window_start: float, topic: str, partition: int,
        offset: int) -> None:
    # The oracle: the id's definition, with the standard library's JSON (ids must not change
    # across versions: a record redelivered after an upgrade must give the same offer id).
    parts = [uid, pid, sku, round(window_start * 1000), topic, partition, offset]
    text = json.dumps(parts, separators=(",", ":"), ensure_ascii=False)
    try:
        payload = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: no valid uid decodes to one
        return
    expected = hashlib.sha256(payload).hexdigest()[:32]
    assert offer_id(uid, pid, sku, window_start,
                    PositionSource(topic, partition, offset)) == expected
