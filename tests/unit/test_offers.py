"""Unit tests for core.offers: matching, tiers, cooldown, offer ids and decide_offers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal

import hypothesis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.geo import DEFAULT_RADIUS_M, EARTH_RADIUS_M, Display, DisplayIndex
from core.offers import (
    DEFAULT_COOLDOWN_S,
    Offer,
    Promotion,
    PromotionIndex,
    Tier,
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
