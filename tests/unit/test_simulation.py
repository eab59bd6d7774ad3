"""The demo store and shopper walk."""

from __future__ import annotations

import itertools

from core.geo import DisplayIndex, haversine_m, parse_display
from core.offers import PromotionIndex, decide_offers, parse_promotion
from core.simulation import STORE_ID, StoreWalk, floor_plan, promotions


def test_floor_plan_displays_are_valid_and_far_enough_apart() -> None:
    displays = [parse_display(d.record()) for d in floor_plan()]
    assert len({d.sku for d in displays}) == len(displays) == 48
    assert all(d.store_id == STORE_ID for d in displays)
    closest = min(haversine_m(a.lat, a.lon, b.lat, b.lon)
                  for a, b in itertools.combinations(displays, 2))
    assert closest > 2 * 0.9144


def test_shoppers_reach_promoted_displays_and_earn_offers() -> None:
    index = DisplayIndex()
    for planned in floor_plan():
        index.upsert(parse_display(planned.record()))
    promos = PromotionIndex(parse_promotion(p) for p in promotions())
    walk = StoreWalk(shoppers=5, seed=1)
    offers = []
    for event in itertools.islice(walk.positions(rate=10, start_ts=0.0), 3000):
        offers += decide_offers(event["uid"], event["lat"], event["lon"], event["ts"],
                                opted_out=False, tier="GOLD", displays=index,
                                promotions=promos, last_offered={})
    assert offers, "a few minutes of walking must pass a promoted display"


def test_walk_is_deterministic_for_a_seed() -> None:
    a = list(itertools.islice(StoreWalk(3, seed=7).positions(5, 0.0), 50))
    b = list(itertools.islice(StoreWalk(3, seed=7).positions(5, 0.0), 50))
    assert a == b


def test_some_shoppers_buy_what_they_stood_at_without_changing_the_walk() -> None:
    plain, buying = StoreWalk(6, seed=3), StoreWalk(6, seed=3, buy_pct=50)
    a = plain.positions(20, 0.0)
    b = buying.positions(20, 0.0)
    bought = []
    for _ in range(3000):
        assert next(a) == next(b)
        bought += buying.take_purchases()
    assert bought and plain.take_purchases() == []
    skus = {d.sku for d in floor_plan()}
    assert all(p["product_id"] in skus and p["price"] > 0 and p["user_id"].startswith("shopper-")
               for p in bought)
