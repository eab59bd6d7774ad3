"""The loyalty rules, as the recipe (seed 003) and DESIGN section 3 state them."""

from __future__ import annotations

import random
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from core import sample
from core.campaigns import DEFAULT_CAMPAIGNS, Campaign, qualifying
from core.loyalty import (
    CAMPAIGN_QUALIFIED,
    FREE_COFFEE_READY,
    TIER_CHANGED,
    Basket,
    LoyaltyRules,
    Purchase,
    Spend,
    Stamps,
    apply_purchase,
    campaigns_met,
    coffee_status,
    replay,
    view_spend,
)
from core.money import format_cents, to_cents
from core.pricing import PriceHistory, price_at, with_price
from core.stamps import StampCard, stamp_status
from core.tiers import TIER_ORDER, TierThresholds, tier_for, tier_rank
from tests.unit import loyalty_oracle

RULES = LoyaltyRules()


def catalogue_of(prices: dict[str, PriceHistory]):  # type: ignore[no-untyped-def]
    return lambda product_id: prices.get(product_id, ())


def run_recipe(include_dog: bool = True) -> dict[str, tuple[Spend, Stamps, Basket]]:
    """Apply the recipe's sample data in script order, interleaving prices and purchases."""
    prices: dict[str, PriceHistory] = {}
    state: dict[str, tuple[Spend, Stamps, Basket]] = defaultdict(
        lambda: (Spend(), Stamps(), Basket())
    )
    for offset, event in enumerate(sample.recipe_events(include_dog)):
        if event.topic == "products":
            v = event.value
            prices[v["product_id"]] = with_price(
                prices.get(v["product_id"], ()), v["ts"], to_cents(v["price"])
            )
        elif event.topic == "purchases":
            v = event.value
            purchase = Purchase(v["user_id"], v["product_id"], v["ts"])
            spend, stamps, basket = state[v["user_id"]]
            out = apply_purchase(purchase, offset, spend, stamps, basket,
                                 catalogue_of(prices), RULES)
            state[v["user_id"]] = (out.spend or spend, out.stamps or stamps,
                                   out.basket or basket)
    state["_prices"] = prices  # type: ignore[assignment]
    return state


def test_recipe_totals_are_priced_as_of_event_time() -> None:
    state = run_recipe()
    prices = state.pop("_prices")  # type: ignore[arg-type]
    for user, (spend, _, _) in state.items():
        view = view_spend(spend, catalogue_of(prices), RULES)  # type: ignore[arg-type]
        assert format_cents(view.total_cents) == sample.EXPECTED_TOTALS[user]
        assert view.tier == sample.EXPECTED_TIERS[user]
        assert view.unpriced == 0


def test_kris_spends_74_28_before_the_dog_not_the_recipes_racy_74_22() -> None:
    state = run_recipe(include_dog=False)
    prices = state.pop("_prices")  # type: ignore[arg-type]
    view = view_spend(state["kris"][0], catalogue_of(prices), RULES)  # type: ignore[arg-type]
    assert format_cents(view.total_cents) == sample.EXPECTED_KRIS_BEFORE_DOG
    assert view.tier == "CLIMBING"


def test_recipe_coffee_and_campaigns() -> None:
    state = run_recipe()
    prices = state.pop("_prices")  # type: ignore[arg-type]
    for user, (spend, stamps, basket) in state.items():
        status = coffee_status(stamps, RULES)
        assert (status.total, status.sequence, status.next_one_free) == sample.EXPECTED_COFFEE[user]
        met = campaigns_met(basket, spend, catalogue_of(prices), RULES)  # type: ignore[arg-type]
        assert met == sample.EXPECTED_CAMPAIGNS[user]


def test_sixth_coffee_is_free() -> None:
    card = StampCard()
    assert [stamp_status(n, card).next_one_free for n in range(1, 8)] == [
        False, False, False, False, True, False, False
    ]
    assert stamp_status(6, card).sequence == 0


def test_free_coffee_ready_event_after_fifth_coffee() -> None:
    prices = {"coffee": ((0.0, 299),)}
    purchases = [Purchase("kris", "coffee", float(t)) for t in range(5)]
    *_, events = replay(purchases, catalogue_of(prices), RULES)
    ready = [e for e in events if e.type == FREE_COFFEE_READY]
    assert len(ready) == 1 and ready[0].details["total"] == 5


def test_tier_thresholds_are_exclusive() -> None:
    assert tier_for(20_000) == "CLIMBING"
    assert tier_for(20_001) == "BRONZE"
    assert tier_for(30_001) == "SILVER"
    assert tier_for(40_000) == "SILVER"
    assert tier_for(40_001) == "GOLD"


def test_tier_changed_event_carries_from_and_to() -> None:
    prices = {"dog": ((0.0, 24_999),)}
    *_, events = replay([Purchase("k", "dog", 1.0)], catalogue_of(prices), RULES)
    assert [(e.type, e.details["from"], e.details["to"]) for e in events] == [
        (TIER_CHANGED, "CLIMBING", "BRONZE")
    ]


@given(st.lists(st.integers(min_value=0, max_value=100_000), max_size=60))
def test_tier_never_goes_down_as_spend_grows(amounts: list[int]) -> None:
    total, rank = 0, 0
    for cents in amounts:
        total += cents
        new_rank = tier_rank(tier_for(total))
        assert new_rank >= rank
        rank = new_rank


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9))
def test_configured_tiers_are_monotonic(a: int, b: int, c: int, spend: int) -> None:
    bronze, silver, gold = sorted((a, b, c))
    thresholds = TierThresholds(gold, silver, bronze)
    assert tier_rank(tier_for(spend, thresholds)) <= tier_rank(tier_for(spend + 1, thresholds))
    assert tier_for(spend, thresholds) in TIER_ORDER


def test_money_is_exact_to_the_cent() -> None:
    assert to_cents(2.99) == 299
    assert to_cents("0.1") + to_cents(0.2) == 30
    assert sum(to_cents(0.1) for _ in range(10)) == 100
    assert to_cents(249.99) + to_cents(74.28) == 32_427
    assert format_cents(7_428) == "74.28"


def test_price_before_first_known_price_is_the_earliest_known() -> None:
    history = with_price(with_price((), 10.0, 300), 5.0, 200)
    assert price_at(history, 1.0) == 200
    assert price_at(history, 7.0) == 200
    assert price_at(history, 10.0) == 300
    assert price_at((), 10.0) is None


def test_purchase_of_unknown_product_is_counted_unpriced() -> None:
    spend, *_ = replay([Purchase("k", "unicorn", 1.0)], catalogue_of({}), RULES)
    view = view_spend(spend, catalogue_of({}), RULES)
    assert (view.total_cents, view.unpriced, spend.purchases) == (0, 1, 1)


def test_own_price_overrides_the_catalogue() -> None:
    prices = {"coffee": ((0.0, 299),)}
    spend, *_ = replay([Purchase("k", "coffee", 1.0, price_cents=150)], catalogue_of(prices), RULES)
    assert view_spend(spend, catalogue_of(prices), RULES).total_cents == 150


def test_replayed_offset_is_not_counted_twice() -> None:
    prices = {"coffee": ((0.0, 299),)}
    purchase = Purchase("k", "coffee", 1.0)
    first = apply_purchase(purchase, 7, Spend(), Stamps(), Basket(), catalogue_of(prices), RULES)
    assert first.spend and first.stamps
    again = apply_purchase(purchase, 7, first.spend, first.stamps, Basket(frozenset(),
                           frozenset(), 7), catalogue_of(prices), RULES)
    assert again.spend is None and again.stamps is None and again.basket is None
    assert again.events == ()


def test_late_price_change_within_window_reprices_pending_purchases() -> None:
    prices: dict[str, PriceHistory] = {"coffee": ((0.0, 299),)}
    spend, *_ = replay([Purchase("k", "coffee", 100.0)], catalogue_of(prices), RULES)
    prices["coffee"] = with_price(prices["coffee"], 50.0, 305)  # arrives late, applies at ts 50
    assert view_spend(spend, catalogue_of(prices), RULES).total_cents == 305


def test_purchases_outside_the_window_are_settled_exactly() -> None:
    rules = LoyaltyRules(lateness_s=10.0)
    prices = {"coffee": ((0.0, 299),)}
    purchases = [Purchase("k", "coffee", 0.0), Purchase("k", "coffee", 100.0)]
    spend, *_ = replay(purchases, catalogue_of(prices), rules)
    assert spend.settled_cents == 299 and len(spend.pending) == 1
    assert view_spend(spend, catalogue_of(prices), rules).total_cents == 598


def test_campaign_needs_every_required_product_and_no_excluded_one() -> None:
    poodle, loose_leaf = DEFAULT_CAMPAIGNS
    assert qualifying([poodle], {"dog"}, {}) == {}
    assert qualifying([poodle], {"beret", "dog", "cat"}, {}) == {"french_poodle": ["beret", "dog"]}
    assert qualifying([loose_leaf], {"coffee"}, {"coffee": 2_001}) == {"loose_leaf": ["coffee"]}
    assert qualifying([loose_leaf], {"coffee"}, {"coffee": 2_000}) == {}
    assert qualifying([loose_leaf], {"coffee", "tea"}, {"coffee": 9_999}) == {}


def test_campaign_qualified_is_announced_once() -> None:
    prices = {"dog": ((0.0, 100),), "beret": ((0.0, 100),)}
    purchases = [Purchase("k", p, float(t)) for t, p in enumerate(["dog", "beret", "dog", "beret"])]
    *_, events = replay(purchases, catalogue_of(prices), RULES)
    announced = [e.details["campaign"] for e in events if e.type == CAMPAIGN_QUALIFIED]
    assert announced == ["french_poodle"]


def test_campaign_rejects_products_it_does_not_watch() -> None:
    try:
        Campaign("x", watch=frozenset({"a"}), require=frozenset({"b"}))
    except ValueError as exc:
        assert "not watched" in str(exc)
    else:
        raise AssertionError("expected ValueError")


# --- order independence -------------------------------------------------------------------

price_events = st.lists(
    st.tuples(st.sampled_from(["coffee", "tea", "dog"]), st.integers(0, 50),
              st.integers(0, 50_000)),
    max_size=12,
)
purchase_events = st.lists(
    st.tuples(st.sampled_from(["coffee", "tea", "dog", "beret"]), st.integers(0, 50),
              st.one_of(st.none(), st.integers(0, 10_000))),
    max_size=25,
)


@settings(max_examples=200)
@given(price_events, purchase_events, st.randoms(use_true_random=False))
def test_result_does_not_depend_on_consumption_order(
    prices_in: list[tuple[str, int, int]],
    purchases_in: list[tuple[str, int, int | None]],
    rnd: random.Random,
) -> None:
    """Fixed event times, two topics consumed in any interleaving: the same answer."""
    purchases = [Purchase("k", p, float(ts), price) for p, ts, price in purchases_in]

    def consume(order: list[tuple[str, int]]) -> tuple[int, int, dict[str, list[str]], int]:
        prices: dict[str, PriceHistory] = {}
        spend, stamps, basket = Spend(), Stamps(), Basket()
        for topic, index in order:
            if topic == "p":
                product, ts, cents = prices_in[index]
                prices[product] = with_price(prices.get(product, ()), float(ts), cents)
            else:
                out = apply_purchase(purchases[index], index, spend, stamps, basket,
                                     catalogue_of(prices), RULES)
                spend, stamps, basket = (out.spend or spend, out.stamps or stamps,
                                         out.basket or basket)
        view = view_spend(spend, catalogue_of(prices), RULES)
        met = campaigns_met(basket, spend, catalogue_of(prices), RULES)
        return view.total_cents, view.unpriced, met, stamps.total

    def interleave() -> list[tuple[str, int]]:
        tags = ["p"] * len(prices_in) + ["b"] * len(purchases)
        rnd.shuffle(tags)
        counters = {"p": 0, "b": 0}
        order = []
        for tag in tags:  # each topic keeps its own order, as partitions do
            order.append((tag, counters[tag]))
            counters[tag] += 1
        return order

    products_first = [("p", i) for i in range(len(prices_in))] + [
        ("b", i) for i in range(len(purchases))
    ]
    assert consume(interleave()) == consume(products_first)


# --- the single-pass rules agree with the plain ones ---------------------------------------

oracle_purchases = st.lists(
    st.tuples(st.sampled_from(["coffee", "tea", "dog", "beret", "bagel", "unknown"]),
              st.integers(0, 40), st.one_of(st.none(), st.integers(0, 10_000)),
              st.booleans()),
    max_size=40,
)


@settings(max_examples=300)
@given(price_events, oracle_purchases, st.integers(0, 30), st.integers(1, 6))
def test_rules_agree_with_the_plain_oracle(
    prices_in: list[tuple[str, int, int]],
    purchases_in: list[tuple[str, int, int | None, bool]],
    lateness: int,
    max_pending: int,
) -> None:
    """Same records and events as the straightforward rules, event by event, including
    replays, late (out-of-order) purchases, the lateness window and the pending cap."""
    prices: dict[str, PriceHistory] = {}
    for product, ts, cents in prices_in:
        prices[product] = with_price(prices.get(product, ()), float(ts), cents)
    catalogue = catalogue_of(prices)
    rules = LoyaltyRules(lateness_s=float(lateness), max_pending=max_pending)
    spend, stamps, basket = Spend(), Stamps(), Basket()
    offset = 0
    for product, ts, price, replayed in purchases_in:
        offset = offset - 1 if replayed and offset > 0 else offset + 1
        purchase = Purchase("k", product, float(ts), price)
        fast = apply_purchase(purchase, offset, spend, stamps, basket, catalogue, rules)
        plain = loyalty_oracle.apply(purchase, offset, spend, stamps, basket, catalogue, rules)
        assert fast == plain
        spend, stamps, basket = (fast.spend or spend, fast.stamps or stamps,
                                 fast.basket or basket)
        assert view_spend(spend, catalogue, rules).total_cents == (
            loyalty_oracle.priced(spend, catalogue)[0])
