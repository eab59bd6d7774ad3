"""The loyalty rules, as the recipe (seed 003) and DESIGN section 3 state them."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import hypothesis
from hypothesis import given, settings
from hypothesis import strategies as st

from core import sample
from core.campaigns import DEFAULT_CAMPAIGNS, Campaign, CampaignPlan, qualifying
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
    assert sorted(state) == sorted(sample.EXPECTED_TOTALS) == ["dave", "kris", "rick", "yeva"]
    for user, (spend, _, _) in state.items():
        view = view_spend(spend, catalogue_of(prices), RULES)  # type: ignore[arg-type]
        assert format_cents(view.total_cents) == sample.EXPECTED_TOTALS[user]
        assert view.tier == sample.EXPECTED_TIERS[user]
        assert view.unpriced == 0


def test_kris_spends_74_28_before_the_dog_not_the_recipes_racy_74_22() -> None:
    state = run_recipe(include_dog=False)
    prices = state.pop("_prices")  # type: ignore[arg-type]
    assert "kris" in state
    view = view_spend(state["kris"][0], catalogue_of(prices), RULES)  # type: ignore[arg-type]
    assert format_cents(view.total_cents) == sample.EXPECTED_KRIS_BEFORE_DOG
    assert view.tier == "CLIMBING"


def test_recipe_coffee_and_campaigns() -> None:
    state = run_recipe()
    prices = state.pop("_prices")  # type: ignore[arg-type]
    assert sorted(state) == sorted(sample.EXPECTED_COFFEE) == ["dave", "kris", "rick", "yeva"]
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

#: The price lateness window (``price_lateness_s`` in faust.ini, one day): a catalogue-priced
#: purchase settles once a purchase more than this much later (event time) is processed.
WINDOW = int(RULES.lateness_s)
assert WINDOW == 86_400

#: Event times from the same second up to four windows apart, and the window's edges.
event_times = st.one_of(
    st.integers(0, 50),
    st.integers(0, 4 * WINDOW),
    st.sampled_from([WINDOW - 1, WINDOW, WINDOW + 1, WINDOW + 50, 2 * WINDOW, 3 * WINDOW + 1]),
)
PRICED = ["coffee", "tea", "dog"]
launch_prices = st.lists(st.integers(0, 50_000), min_size=len(PRICED), max_size=len(PRICED))
price_changes = st.lists(
    st.tuples(st.sampled_from(PRICED), event_times, st.integers(0, 50_000)), max_size=12)
purchase_events = st.lists(
    st.tuples(st.sampled_from([*PRICED, "beret"]), event_times,
              st.one_of(st.none(), st.integers(0, 10_000))),
    max_size=25,
)


@st.composite
def purchases_across_the_window(draw: st.DrawFn) -> list[tuple[str, int, int | None]]:
    """Purchases (product, ts, own price) whose settled and pending paths are both taken: one
    catalogue-priced purchase in the first 50 s (anywhere in the topic), and last in the
    topic, the newest catalogue-priced purchase, past that one's window."""
    purchases = draw(purchase_events)
    early = (draw(st.sampled_from(PRICED)), draw(st.integers(0, 50)), None)
    purchases.insert(draw(st.integers(0, len(purchases))), early)
    newest = max(ts for _, ts, _ in purchases)
    late_ts = max(newest, 50 + WINDOW) + draw(st.integers(1, WINDOW))
    return [*purchases, (draw(st.sampled_from(PRICED)), late_ts, None)]


@settings(max_examples=200)
@given(launch_prices, price_changes, purchases_across_the_window(),
       st.randoms(use_true_random=False))
def test_result_does_not_depend_on_consumption_order(
    launches: list[int],
    changes: list[tuple[str, int, int]],
    purchases_in: list[tuple[str, int, int | None]],
    rnd: random.Random,
) -> None:
    """Fixed event times spread over several lateness windows, the two topics consumed in any
    interleaving in which a price change arrives within the window (before any purchase more
    than the window after it): the same totals, unpriced count, campaigns and stamps, with
    purchases both settled and still pending."""
    # Every product sold from the catalogue has a price from time 0 (beret never has one).
    prices_in = [(p, 0, cents) for p, cents in zip(PRICED, launches, strict=True)] + changes
    purchases = [Purchase("k", p, float(ts), price) for p, ts, price in purchases_in]

    def consume(order: list[tuple[str, int]]) -> tuple[tuple[object, ...], Spend]:
        assert sorted(order) == sorted(
            [("p", i) for i in range(len(prices_in))] + [("b", i) for i in range(len(purchases))])
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
        return (view.total_cents, view.unpriced, met, stamps.total), spend

    def interleave(tags: list[str]) -> list[tuple[str, int]]:
        """Each topic in its own order, as partitions are; a price change no later than the
        first purchase more than the window after it (with the prices before it)."""
        order: list[tuple[str, int]] = []
        next_price = next_purchase = 0
        for tag in tags:
            if tag == "p":
                if next_price < len(prices_in):
                    order.append(("p", next_price))
                    next_price += 1
                continue
            ts = purchases[next_purchase].ts
            due = max((j + 1 for j, (_, at, _) in enumerate(prices_in) if at + WINDOW < ts),
                      default=0)
            order.extend(("p", j) for j in range(next_price, max(due, next_price)))
            next_price = max(due, next_price)
            order.append(("b", next_purchase))
            next_purchase += 1
        order.extend(("p", j) for j in range(next_price, len(prices_in)))
        return order

    tags = ["p"] * len(prices_in) + ["b"] * len(purchases)
    products_first, spend = consume(interleave(tags))
    rnd.shuffle(tags)
    assert consume(interleave(tags))[0] == products_first
    # prices as late as the window allows: each change reprices purchases already processed
    assert consume(interleave(sorted(tags)))[0] == products_first

    catalogue_priced = sum(1 for p in purchases if p.price_cents is None)
    settled = catalogue_priced - len(spend.pending)
    hypothesis.event("catalogue-priced purchases settled: "
                     + (str(settled) if settled < 5 else "5+"))
    assert settled >= 1, "no catalogue-priced purchase crossed the lateness window"
    assert spend.pending, "no catalogue-priced purchase was left within the window"


# --- the single-pass rules agree with the plain ones ---------------------------------------

def oracle_rules(rules: LoyaltyRules) -> loyalty_oracle.Rules:
    """The same programme, spelled for the oracle (which shares no type with core)."""
    return loyalty_oracle.Rules(
        gold_cents=rules.tiers.gold_cents, silver_cents=rules.tiers.silver_cents,
        bronze_cents=rules.tiers.bronze_cents, stamp_product=rules.stamps.product_id,
        stamp_cycle=rules.stamps.cycle,
        campaigns=tuple(loyalty_oracle.CampaignRule(c.name, c.watch, c.require, c.exclude,
                                                    c.min_spend_cents)
                        for c in rules.campaigns),
        lateness_s=rules.lateness_s, max_pending=rules.max_pending)


def test_the_oracle_states_the_same_default_programme() -> None:
    assert oracle_rules(RULES) == loyalty_oracle.Rules()


oracle_products = st.sampled_from(["coffee", "tea", "dog", "beret", "bagel", "unknown"])
oracle_ops = st.lists(
    st.one_of(
        # a catalogue price, arriving between purchases
        st.tuples(st.just("price"), st.sampled_from(["coffee", "tea", "dog"]),
                  st.integers(0, 40), st.integers(0, 50_000)),
        # a purchase: product, ts, own price, replayed (offset one back) or not
        st.tuples(st.just("buy"), oracle_products, st.integers(0, 40),
                  st.one_of(st.none(), st.integers(0, 10_000)), st.booleans()),
    ),
    max_size=50,
)


@settings(max_examples=300)
@given(oracle_ops, st.integers(0, 30), st.integers(1, 6), st.integers(2, 6),
       st.lists(st.integers(0, 60_000), min_size=3, max_size=3))
def test_rules_agree_with_the_plain_oracle(
    ops: list[tuple[Any, ...]], lateness: int, max_pending: int, cycle: int,
    thresholds: list[int],
) -> None:
    """Same records, events and totals as rules written independently, event by event:
    replays, late (out-of-order) purchases, late catalogue changes, the lateness window, the
    pending cap, any stamp cycle and any tier thresholds."""
    bronze, silver, gold = sorted(thresholds)
    rules = LoyaltyRules(tiers=TierThresholds(gold, silver, bronze),
                         stamps=StampCard("coffee", cycle), lateness_s=float(lateness),
                         max_pending=max_pending)
    plain_rules = oracle_rules(rules)
    prices: dict[str, PriceHistory] = {}
    catalogue = catalogue_of(prices)
    plain_catalogue = loyalty_oracle.Catalogue()
    plain = loyalty_oracle.Customer("k")
    spend, stamps, basket = Spend(), Stamps(), Basket()
    offset = 0
    carried: int | None = None  # what the pending purchases come to, as the agent carries it
    for op in ops:
        if op[0] == "price":
            _, product, ts, cents = op
            prices[product] = with_price(prices.get(product, ()), float(ts), cents)
            plain_catalogue.add(product, float(ts), cents)
            carried = None  # the catalogue changed: priced again
            continue
        _, product, ts, price, replayed = op
        offset = offset - 1 if replayed and offset > 0 else offset + 1
        purchase = Purchase("k", product, float(ts), price)
        fast = apply_purchase(purchase, offset, spend, stamps, basket, catalogue, rules)
        quick = apply_purchase(purchase, offset, spend, stamps, basket, catalogue, rules,
                               pending_cents=carried)
        assert quick[:5] == fast[:5]  # the same records and events, priced less often
        if quick.spend is not None:
            carried = quick.pending_cents
        changed, events = plain.apply(product, float(ts), price, offset, plain_catalogue,
                                      plain_rules)
        assert (fast.spend is not None, fast.stamps is not None,
                fast.basket is not None) == changed
        assert list(fast.events) == events
        spend, stamps, basket = (fast.spend or spend, fast.stamps or stamps,
                                 fast.basket or basket)
        assert tuple(spend)[:8] == plain.spend_record(plain_rules)
        assert tuple(stamps)[:2] == plain.stamps_record()
        assert tuple(basket)[:3] == plain.basket_record()
        view = view_spend(spend, catalogue, rules)
        assert (view.total_cents, view.unpriced, dict(view.by_product_cents)) == (
            plain.priced(plain_catalogue, plain_rules))
        assert carried is None or carried == view.total_cents - spend.settled_cents
        assert view.tier == loyalty_oracle.tier_for(view.total_cents, plain_rules)
        status = coffee_status(stamps, rules)
        assert (status.total, status.sequence, status.next_one_free) == (
            loyalty_oracle.stamp_status(stamps.total, plain_rules))
        assert campaigns_met(basket, spend, catalogue, rules) == loyalty_oracle.qualifying(
            plain_rules.campaigns, basket.products, view.by_product_cents)


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 999)), max_size=12),
       st.integers(-5, 25))
def test_price_as_of_event_time_agrees_with_the_plain_oracle(
    events: list[tuple[int, int]], ts: int
) -> None:
    """Latest price at or before the time (a later event for the same time replaces the
    earlier), else the earliest known, else none."""
    history: PriceHistory = ()
    plain = loyalty_oracle.Catalogue()
    for at, cents in events:
        history = with_price(history, float(at), cents)
        plain.add("coffee", float(at), cents)
    assert price_at(history, float(ts)) == plain.price_at("coffee", float(ts))


@given(st.lists(st.integers(0, 50_000), min_size=3, max_size=3), st.integers(0, 60_000),
       st.integers(0, 40))
def test_tiers_and_stamps_agree_with_the_plain_oracle(
    thresholds: list[int], total: int, coffees: int
) -> None:
    bronze, silver, gold = sorted(thresholds)
    plain = loyalty_oracle.Rules(gold_cents=gold, silver_cents=silver, bronze_cents=bronze)
    assert tier_for(total, TierThresholds(gold, silver, bronze)) == (
        loyalty_oracle.tier_for(total, plain))
    status = stamp_status(coffees)
    assert (status.total, status.sequence, status.next_one_free) == (
        loyalty_oracle.stamp_status(coffees))


@given(st.sets(st.sampled_from(["coffee", "tea", "dog", "beret", "bagel"])),
       st.dictionaries(st.sampled_from(["coffee", "tea", "dog", "beret"]),
                       st.integers(0, 3_000)))
def test_campaigns_agree_with_the_plain_oracle(bought: set[str], spent: dict[str, int]) -> None:
    assert qualifying(DEFAULT_CAMPAIGNS, bought, spent) == loyalty_oracle.qualifying(
        loyalty_oracle.RECIPE_CAMPAIGNS, bought, spent)


PRODUCTS = ["coffee", "tea", "dog", "beret", "bagel"]


@st.composite
def campaign_sets(draw: st.DrawFn) -> list[Campaign]:
    campaigns = []
    for at in range(draw(st.integers(1, 4))):
        watch = draw(st.sets(st.sampled_from(PRODUCTS), min_size=1))
        require = draw(st.sets(st.sampled_from(sorted(watch))))
        exclude = draw(st.sets(st.sampled_from(sorted(watch - require) or ["-"])))
        campaigns.append(Campaign(f"c{at}", frozenset(watch), frozenset(require),
                                  frozenset(exclude - {"-"}),
                                  draw(st.none() | st.integers(0, 3_000))))
    return campaigns


@given(campaign_sets(), st.lists(st.tuples(
    st.frozensets(st.sampled_from(PRODUCTS)),
    st.dictionaries(st.sampled_from(PRODUCTS), st.integers(0, 3_000))), max_size=12))
def test_campaigns_met_by_a_basket_are_those_qualifying_finds(
    campaigns: list[Campaign], baskets: list[tuple[frozenset[str], dict[str, int]]]
) -> None:
    """The plan remembers what products decide; asked again (same products, other spend),
    it answers as the plain check does."""
    plan = CampaignPlan(campaigns)
    for bought, spent in baskets + baskets:
        assert plan.met_names(bought, spent) == frozenset(qualifying(campaigns, bought, spent))


def test_campaign_spend_is_priced_only_when_a_campaign_reads_it() -> None:
    """A purchase of a watched product prices its customer's pending purchases for the
    campaigns only when a campaign with a spend threshold gets as far as reading the spend."""
    priced: list[str] = []

    def catalogue(product_id: str) -> tuple[tuple[float, int], ...]:
        priced.append(product_id)
        return ((0.0, 300),)

    def apply(campaign: Campaign) -> tuple[str, ...]:
        rules = LoyaltyRules(campaigns=(campaign,))
        spend = Spend(pending=((10.0, "tea"), (20.0, "coffee")))
        priced.clear()
        out = apply_purchase(Purchase("kris", "tea", 30.0), 1, spend, Stamps(), Basket(),
                             catalogue, rules, pending_cents=600)
        return tuple(event.type for event in out.events)

    threshold = Campaign("tea_lovers", frozenset({"tea"}), min_spend_cents=500)
    assert apply(threshold) == (CAMPAIGN_QUALIFIED,)
    assert sorted(priced) == ["coffee", "tea", "tea", "tea"]  # the purchase, then pending
    needs_scones = Campaign("tea_and_scones", frozenset({"tea", "scone"}), frozenset({"scone"}),
                            min_spend_cents=500)
    assert apply(needs_scones) == () and priced == ["tea"]  # the purchase alone
