"""RFM (issue 22, criterion 4): recency, frequency and monetary scores 1-5 by configured or
learnt quintile boundaries, a named segment, served in the customer document when on, and
usable to target a promotion (``segment_rfm``, beside ``min_tier``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import ConfigError, load_settings
from core.geo import DisplayIndex
from core.loyalty import Basket, LoyaltyRules, Purchase, Stamps, customer_document, replay
from core.offers import Promotion, PromotionIndex, decide_offers, parse_promotion
from core.rfm import (
    RfmBoundaries,
    learn_boundaries,
    parse_segments,
    rfm_of,
)
from tests.unit.test_offers import MILK, STORE_LAT, STORE_LON

INI = str(Path(__file__).resolve().parents[2] / "faust.ini")
DAY = 86_400.0
CUTS = RfmBoundaries()


def no_catalogue(_: str) -> tuple[tuple[float, int], ...]:
    return ()


@pytest.mark.parametrize(("days_away", "purchases", "cents", "scores", "segment"), [
    (1, 20, 100_000, (5, 5, 5), "champions"),
    (20, 6, 10_000, (4, 4, 2), "loyal"),
    (2, 1, 2_000, (5, 1, 1), "new"),
    (40, 3, 20_000, (3, 3, 3), "potential_loyalist"),
    (120, 9, 70_000, (2, 5, 5), "at_risk"),
    (400, 1, 1_000, (1, 1, 1), "hibernating"),
    (60, 1, 1_000, (3, 1, 1), "needs_attention"),
])
def test_scores_and_segment_follow_the_configured_boundaries(
        days_away: float, purchases: int, cents: int, scores: tuple[int, int, int],
        segment: str) -> None:
    rfm = rfm_of(1_000 * DAY, purchases, cents, 1_000 * DAY + days_away * DAY, CUTS)
    assert (rfm.recency, rfm.frequency, rfm.monetary) == scores
    assert rfm.segment == segment


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 10_000_000), min_size=5, max_size=300, unique=True))
def test_learnt_boundaries_split_a_population_into_fifths(spends: list[int]) -> None:
    population = [(0.0, 1, cents) for cents in spends]
    cuts = learn_boundaries(population, 0.0, CUTS)
    scores = [rfm_of(0.0, 1, cents, 0.0, cuts).monetary for cents in spends]
    # oracle: the rank of each customer, in fifths (nearest rank), computed here
    ordered = sorted(spends)
    n = len(spends)
    for cents, score in zip(spends, scores, strict=True):
        rank = ordered.index(cents) + 1  # 1..n
        expected = 1 + sum(1 for p in (20, 40, 60, 80) if rank > -(-p * n // 100))
        assert score == expected
    assert set(scores) == {1, 2, 3, 4, 5}


def test_too_small_a_population_keeps_the_configured_boundaries() -> None:
    assert learn_boundaries([(0.0, 1, 5)] * 4, 0.0, CUTS) == CUTS


def test_off_by_default_the_document_is_unchanged_and_on_it_carries_rfm() -> None:
    off = load_settings({"STORESTREAM_CONFIG": INI}).loyalty
    assert off.rfm is None
    spend, stamps, basket, _ = replay([Purchase("k", "tv", 0.0, 50_000)], no_catalogue, off)
    assert "rfm" not in customer_document("k", spend, stamps, basket, no_catalogue, off)
    on = LoyaltyRules(rfm=CUTS)
    document = customer_document("k", spend, Stamps(), Basket(), no_catalogue, on,
                                 now=10 * DAY)
    assert document["rfm"] == {"recency": 4, "frequency": 1, "monetary": 4,
                               "segment": "new"}


def test_rfm_settings_come_from_the_environment() -> None:
    rules = load_settings({"STORESTREAM_CONFIG": INI, "RFM": "learn",
                           "RFM_MONETARY": "10,20,30,40.50", "RFM_RECENCY_DAYS": "1,2,3,4",
                           "RFM_REFRESH_S": "60"}).loyalty
    assert rules.rfm is not None and rules.rfm_learn and rules.rfm_refresh_s == 60
    assert rules.rfm.monetary_cents == (1_000, 2_000, 3_000, 4_050)
    assert rules.rfm.recency_days == (1, 2, 3, 4)
    for bad in ({"RFM": "maybe"}, {"RFM": "on", "RFM_FREQUENCY": "1,2,3"},
                {"RFM": "on", "RFM_FREQUENCY": "4,3,2,1"}):
        with pytest.raises(ConfigError):
            load_settings({"STORESTREAM_CONFIG": INI, **bad})


def test_a_promotion_targets_rfm_segments_beside_min_tier() -> None:
    promo = parse_promotion({"pid": "p", "sku": "101", "discount_pct": 10,
                             "segment_rfm": "champions, loyal", "min_tier": "bronze"})
    assert promo.segment_rfm == frozenset({"champions", "loyal"})
    displays = DisplayIndex()
    displays.upsert(MILK)
    promotions = PromotionIndex([promo])

    def offered(segment: str | None, tier: str = "GOLD") -> bool:
        return bool(decide_offers("u1", STORE_LAT, STORE_LON, 1.0, opted_out=False, tier=tier,
                                  displays=displays, promotions=promotions, last_offered={},
                                  rfm_segment=segment))

    assert offered("champions") and offered("loyal")
    assert not offered("at_risk") and not offered(None)
    assert not offered("champions", tier="CLIMBING")
    everyone = PromotionIndex([Promotion("q", 5, sku="101")])
    assert decide_offers("u1", STORE_LAT, STORE_LON, 1.0, opted_out=False, tier=None,
                         displays=displays, promotions=everyone, last_offered={})
    with pytest.raises(ValueError, match="unknown RFM segment"):
        parse_segments("vip")
