"""Returns (issue 22, criterion 1): a purchase given back takes back its spend at the price it
was counted at, its coffee stamp and its campaign part; the tier drops with ``tier_changed``;
unknown and already-returned purchases are rejected with the reason; exactly once by offset;
a return that arrives before its purchase waits for it within the lateness window."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from core.events import BadEvent, parse_return
from core.loyalty import (
    TIER_CHANGED,
    Basket,
    LoyaltyRules,
    Outcome,
    Purchase,
    Spend,
    Stamps,
    customer_document,
)
from core.pricing import PriceHistory, with_price
from core.returns import (
    PURCHASE_RETURNED,
    Ledger,
    Return,
    apply_purchase_returnable,
    apply_return,
    remember_purchase,
    remember_purchases,
)

RULES = LoyaltyRules()
DAY = 86_400.0


@dataclass
class Customer:
    """One customer's records, fed event by event as the agents feed them."""

    prices: dict[str, PriceHistory] = field(default_factory=dict)
    spend: Spend = Spend()
    stamps: Stamps = Stamps()
    basket: Basket = Basket()
    ledger: Ledger = Ledger()
    events: list[Any] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    next_purchase: int = 0
    next_return: int = 0

    def catalogue(self, product_id: str) -> PriceHistory:
        return self.prices.get(product_id, ())

    def _take(self, out: Any) -> None:
        self.spend = out.spend or self.spend
        self.stamps = out.stamps or self.stamps
        self.basket = out.basket or self.basket
        self.ledger = out.ledger or self.ledger
        self.events.extend(out.events)
        if out.rejected:
            self.rejected.append(out.rejected)
        self.expired.extend(reason for _, reason in out.expired)

    def buy(self, product: str, ts: float, price: int | None = None, pid: str | None = None,
            offset: int | None = None) -> None:
        if offset is None:
            offset, self.next_purchase = self.next_purchase, self.next_purchase + 1
        self._take(apply_purchase_returnable(
            Purchase("k", product, ts, price, pid), offset, self.spend, self.stamps,
            self.basket, self.ledger, self.catalogue, RULES))

    def give_back(self, pid: str, ts: float, amount: int | None = None,
                  offset: int | None = None, repartitioned: bool = False) -> None:
        if offset is None:
            offset, self.next_return = self.next_return, self.next_return + 1
        self._take(apply_return(Return("k", pid, ts, amount), offset, self.spend,
                                self.stamps, self.basket, self.ledger, self.catalogue, RULES,
                                repartitioned=repartitioned))

    def document(self) -> dict[str, Any]:
        return customer_document("k", self.spend, self.stamps, self.basket, self.catalogue,
                                 RULES)


def types(customer: Customer) -> list[str]:
    return [event.type for event in customer.events]


def test_a_return_takes_back_the_price_paid_the_stamp_and_drops_the_tier() -> None:
    kris = Customer()
    kris.buy("coffee", 10.0, 300, "c1")
    kris.buy("tv", 20.0, 20_000, "tv1")
    assert kris.document()["reward_level"] == "BRONZE"
    kris.events.clear()
    kris.give_back("tv1", 30.0)
    assert kris.document()["total"] == 3.0
    assert kris.document()["reward_level"] == "CLIMBING"
    assert types(kris) == [PURCHASE_RETURNED, TIER_CHANGED]
    assert kris.events[1].details == {"from": "BRONZE", "to": "CLIMBING", "total_cents": 300}
    kris.give_back("c1", 31.0)
    assert kris.document()["coffee"] == {"total": 0, "sequence": 0, "next_one_free": False}
    assert kris.document()["total"] == 0


def test_a_return_is_reversed_at_the_catalogue_price_in_force_when_it_was_bought() -> None:
    kris = Customer(prices={"coffee": ((0.0, 299),)})
    kris.buy("coffee", 10.0, None, "c1")
    kris.buy("coffee", 5 * DAY, None, "c2")  # c1 is settled at 2.99 now
    kris.prices["coffee"] = with_price(kris.prices["coffee"], 3 * DAY, 350)
    kris.give_back("c1", 6 * DAY)
    assert kris.document()["total"] == 3.5  # c2 at the new price; c1 taken back at 2.99


def test_a_pending_purchase_returned_leaves_no_trace_even_if_repriced_later() -> None:
    kris = Customer(prices={"coffee": ((0.0, 299),)})
    kris.buy("coffee", 10.0, None, "c1")
    kris.give_back("c1", 20.0)
    kris.prices["coffee"] = with_price(kris.prices["coffee"], 5.0, 500)
    assert kris.document()["total"] == 0


def test_a_partial_return_takes_back_the_amount_and_keeps_the_item() -> None:
    kris = Customer()
    kris.buy("coffee", 10.0, 400, "c1")
    kris.give_back("c1", 20.0, amount=150)
    assert kris.document()["total"] == 2.5
    assert kris.document()["coffee"]["total"] == 1
    kris.give_back("c1", 21.0, amount=250)  # the rest: the item is returned
    assert kris.document()["total"] == 0
    assert kris.document()["coffee"]["total"] == 0


def test_returning_more_than_is_left_is_rejected_with_the_reason() -> None:
    kris = Customer()
    kris.buy("coffee", 10.0, 400, "c1")
    kris.give_back("c1", 20.0, amount=150)
    kris.give_back("c1", 21.0, amount=300)
    assert kris.rejected == ["return amount 300 cents exceeds the 250 cents left of the purchase"]
    assert kris.document()["total"] == 2.5


def test_a_purchase_returned_twice_and_an_unknown_purchase_are_rejected() -> None:
    kris = Customer()
    kris.buy("coffee", 2 * DAY, 300, "c1")
    kris.give_back("c1", 2 * DAY + 1)
    kris.give_back("c1", 2 * DAY + 2)
    kris.give_back("nope", 10.0)  # older than the lateness window: it cannot be on its way
    assert kris.rejected == ["purchase 'c1' already returned", "unknown purchase 'nope'"]
    assert kris.document()["total"] == 0


def test_a_redelivered_return_changes_nothing_and_is_rejected_alike() -> None:
    kris = Customer()
    kris.buy("coffee", 10.0, 300, "c1")
    kris.buy("tea", 11.0, 500, "t1")
    kris.give_back("c1", 20.0, offset=4)
    before = (kris.spend, kris.stamps, kris.basket, kris.ledger)
    kris.give_back("c1", 20.0, offset=4)
    assert (kris.spend, kris.stamps, kris.basket, kris.ledger) == before
    assert kris.rejected == []
    kris.give_back("c1", 21.0, offset=5)
    kris.give_back("c1", 21.0, offset=5)
    assert kris.rejected == ["purchase 'c1' already returned"] * 2
    assert kris.document()["total"] == 5.0


def test_a_return_redelivered_after_a_crash_applies_to_the_records_that_missed_it() -> None:
    kris = Customer()
    kris.buy("coffee", 10.0, 300, "c1")
    stale_spend, stale_stamps = kris.spend, kris.stamps
    kris.give_back("c1", 20.0, offset=0)
    # the ledger and spend were written, the stamps record was lost in the crash
    kris.stamps = stale_stamps
    kris.give_back("c1", 20.0, offset=0)
    assert kris.document()["coffee"]["total"] == 0 and kris.document()["total"] == 0
    assert stale_spend.settled_cents == 300


def test_a_return_before_its_purchase_is_applied_when_the_purchase_arrives() -> None:
    kris = Customer()
    kris.buy("tea", 10.0, 500, "t1")
    kris.give_back("c1", 30.0)
    assert kris.rejected == [] and kris.document()["total"] == 5.0
    kris.buy("coffee", 20.0, 300, "c1")
    assert kris.document()["total"] == 5.0
    assert kris.document()["coffee"]["total"] == 0
    kris.buy("coffee", 21.0, 300, "c1", offset=1)  # the purchase redelivered
    assert kris.document()["total"] == 5.0


def test_a_held_return_whose_purchase_never_comes_is_given_up_after_the_lateness_window(
) -> None:
    kris = Customer()
    kris.give_back("ghost", 10.0)
    kris.buy("tea", 10.0 + DAY + 1, 500, "t1")
    assert kris.expired == [
        "unknown purchase 'ghost' (held 86400 s of event time, it never arrived)"]
    assert kris.ledger.held == ()


def test_a_redelivered_purchase_reports_the_held_returns_it_gave_up_and_nothing_else(
) -> None:
    """The ledger remembers which purchase gave up which held return, so a redelivery of
    that purchase (its letter may not have reached the topic) reports the same ones again,
    and a redelivery of any other purchase none (the sender skips letters already out)."""
    kris = Customer()
    kris.give_back("ghost", 10.0)
    kris.give_back("spook", 20.0)
    kris.buy("tea", 15.0, 500, "t0")
    kris.buy("tea", 10.0 + DAY + 1, 500, "t1")
    assert kris.expired == [
        "unknown purchase 'ghost' (held 86400 s of event time, it never arrived)"]
    kris.buy("tea", 20.0 + DAY + 1, 500, "t2")
    assert len(kris.expired) == 2 and "spook" in kris.expired[1]
    after = (kris.spend, kris.ledger)
    for offset, expected in ((1, ["ghost"]), (2, ["spook"]), (0, [])):
        kris.expired.clear()
        kris.buy("tea", 0.0, 500, f"t{offset}", offset=offset)  # redelivered
        assert [e.split("'")[1] for e in kris.expired] == expected
        assert (kris.spend, kris.ledger) == after  # nothing else changes
    assert Ledger.from_json(kris.ledger.to_json()) == kris.ledger
    assert [h.purchase_id for _, h, _ in kris.ledger.given_up] == ["ghost", "spook"]


def test_two_held_returns_of_one_purchase_apply_once_and_reject_the_second() -> None:
    kris = Customer()
    kris.give_back("c1", 10.0)
    kris.give_back("c1", 11.0)
    kris.buy("coffee", 5.0, 300, "c1")
    assert kris.document()["total"] == 0 and kris.expired == ["purchase 'c1' already returned"]


def test_returning_the_only_beret_takes_the_customer_out_of_french_poodle() -> None:
    kris = Customer()
    kris.buy("dog", 1.0, 10_000, "d1")
    kris.buy("beret", 2.0, 2_000, "b1")
    kris.buy("beret", 3.0, 2_000, "b2")
    assert kris.document()["promotions"] == {"french_poodle": ["beret", "dog"]}
    kris.give_back("b1", 4.0)
    assert kris.document()["promotions"] == {"french_poodle": ["beret", "dog"]}
    kris.give_back("b2", 5.0)
    assert kris.document()["promotions"] == {}
    assert "beret" not in kris.basket.announced and not kris.basket.extra
    kris.buy("beret", 6.0, 2_000, "b3")  # qualifies again: announced again
    assert kris.document()["promotions"] == {"french_poodle": ["beret", "dog"]}
    assert types(kris).count("campaign_qualified") == 2


def test_loose_leaf_minimum_spend_counts_the_return() -> None:
    kris = Customer()
    kris.buy("coffee", 1.0, 1_500, "c1")
    kris.buy("coffee", 2.0, 1_000, "c2")
    assert kris.document()["promotions"] == {"loose_leaf": ["coffee"]}
    kris.give_back("c2", 3.0)
    assert kris.document()["promotions"] == {}


def test_parse_return_requires_the_purchase_and_a_positive_amount() -> None:
    ret = parse_return(b'{"user_id":"k","purchase_id":7,"amount":"1.50","ts":3}', "k", 9.0)
    assert ret == Return("k", "7", 3.0, 150)
    assert parse_return(b'{"user_id":"k","purchase_id":"p"}', None, 9.0).ts == 9.0
    for raw in (b'{"user_id":"k"}', b'{"user_id":"k","purchase_id":"p","amount":0}',
                b'{"user_id":"k","purchase_id":true}'):
        try:
            parse_return(raw, "k", 0.0)
        except BadEvent:
            continue
        raise AssertionError(raw)


# --- properties -------------------------------------------------------------------------

PRODUCTS = ("coffee", "tea", "dog", "beret", "tv")
purchase_st = st.tuples(st.sampled_from(PRODUCTS), st.integers(1, 30_000),
                        st.floats(0.0, 3_600.0))


@settings(max_examples=150, deadline=None)
@given(st.lists(purchase_st, max_size=12), purchase_st, st.booleans())
def test_a_return_right_after_its_purchase_leaves_the_customer_as_if_it_never_happened(
        history: list[tuple[str, int, float]], extra: tuple[str, int, float],
        catalogue_priced: bool) -> None:
    prices = {p: ((0.0, 250 + i),) for i, p in enumerate(PRODUCTS)}
    without, with_it = Customer(prices=dict(prices)), Customer(prices=dict(prices))
    for n, (product, cents, ts) in enumerate(history):
        for customer in (without, with_it):
            customer.buy(product, ts, cents, f"h{n}")
    product, cents, ts = extra
    with_it.buy(product, ts, None if catalogue_priced else cents, "x")
    with_it.give_back("x", ts + 1.0)
    assert with_it.document() == without.document()
    assert with_it.spend.tier == without.spend.tier
    assert with_it.rejected == []


def oracle(purchases: list[tuple[str, str, int, float]],
           returns: list[tuple[str, int | None]]) -> dict[str, Any]:
    """Total, tier and coffee count written out independently of core."""
    price = {pid: cents for pid, _, cents, _ in purchases}
    product = {pid: prod for pid, prod, _, _ in purchases}
    refunded = {pid: 0 for pid in price}
    returned = set()
    for pid, amount in returns:
        if amount is None or amount >= price[pid]:
            returned.add(pid)
            refunded[pid] = price[pid]
        else:
            refunded[pid] = amount
    total = sum(price.values()) - sum(refunded.values())
    tier = ("GOLD" if total > 40_000 else "SILVER" if total > 30_000 else
            "BRONZE" if total > 20_000 else "CLIMBING")
    coffees = sum(1 for pid in price if product[pid] == "coffee" and pid not in returned)
    return {"total_cents": total, "tier": tier, "coffees": coffees}


#: Catalogue prices of the property below (fixed: only the two topics' order varies).
LIST_PRICES = {"coffee": 299, "tea": 450, "dog": 15_000, "beret": 2_500, "tv": 30_000}


@st.composite
def purchases_and_returns(draw: Any) -> tuple[list[tuple[str, str, int, float]],
                                              list[tuple[str, int | None]], list[bool]]:
    n = draw(st.integers(1, 10))
    purchases = [(f"p{i}", draw(st.sampled_from(PRODUCTS)),
                  draw(st.one_of(st.just(0), st.integers(1, 20_000))),  # 0: catalogue-priced
                  draw(st.floats(0.0, 3_600.0))) for i in range(n)]
    chosen = draw(st.lists(st.sampled_from([p[0] for p in purchases]), unique=True))
    returns = [(pid, draw(st.one_of(st.none(), st.integers(1, 25_000)))) for pid in chosen]
    # how the two topics interleave: True takes the next purchase, False the next return
    order = draw(st.permutations([True] * n + [False] * len(returns)))
    return purchases, returns, list(order)


@settings(max_examples=200, deadline=None)
@given(purchases_and_returns())
def test_any_interleaving_of_purchases_and_returns_within_the_lateness_window_gives_one_answer(
        case: tuple[list[tuple[str, str, int, float]], list[tuple[str, int | None]],
                    list[bool]]) -> None:
    purchases, returns, order = case
    catalogue_priced = {pid for pid, _, cents, _ in purchases if cents == 0}
    purchases = [(pid, product, cents or LIST_PRICES[product], ts)
                 for pid, product, cents, ts in purchases]
    price = {pid: cents for pid, _, cents, _ in purchases}
    returns = [(pid, None if amount is None or amount > price[pid] else amount)
               for pid, amount in returns]
    kris = Customer(prices={p: ((0.0, cents),) for p, cents in LIST_PRICES.items()})
    bought, given_back = iter(purchases), iter(returns)
    for take_purchase in order:
        if take_purchase:
            pid, product, cents, ts = next(bought)
            kris.buy(product, ts, None if pid in catalogue_priced else cents, pid)
        else:
            pid, amount = next(given_back)
            kris.give_back(pid, 3_600.0, amount)
    expected = oracle(purchases, returns)
    document = kris.document()
    assert round(document["total"] * 100) == expected["total_cents"]
    assert document["reward_level"] == expected["tier"] == kris.spend.tier
    assert document["coffee"]["total"] == expected["coffees"]
    assert kris.rejected == [] and kris.expired == [] and kris.ledger.held == ()


@settings(max_examples=150, deadline=None)
@given(purchases_and_returns(), st.lists(st.integers(0, 40), max_size=8))
def test_events_redelivered_after_a_crash_change_nothing(
        case: tuple[list[tuple[str, str, int, float]], list[tuple[str, int | None]],
                    list[bool]], crashes: list[int]) -> None:
    """Replaying everything from an earlier offset of either topic (at-least-once delivery
    after a crash) gives the records and answer of a run without the crash."""
    purchases, returns, order = case
    price = {pid: cents or 100 for pid, _, cents, _ in purchases}
    log: list[tuple[str, int, Any]] = []
    bought, given_back = iter(purchases), iter(returns)
    offsets = {"purchases": 0, "returns": 0}
    for take_purchase in order:
        topic = "purchases" if take_purchase else "returns"
        item = next(bought) if take_purchase else next(given_back)
        log.append((topic, offsets[topic], item))
        offsets[topic] += 1

    def run(redeliver: list[int]) -> Customer:
        customer = Customer()
        for at, (topic, offset, item) in enumerate(log):
            again = [log[i] for i in range(at) if at in redeliver and log[i][0] == topic][-3:]
            for replayed in (*again, (topic, offset, item)):
                r_topic, r_offset, r_item = replayed
                if r_topic == "purchases":
                    pid, product, _, ts = r_item
                    customer.buy(product, ts, price[pid], pid, offset=r_offset)
                else:
                    pid, amount = r_item
                    amount = None if amount is None or amount >= price[pid] else amount
                    customer.give_back(pid, 3_600.0, amount, offset=r_offset)
        return customer

    clean, crashed = run([]), run(crashes)
    assert (crashed.spend, crashed.stamps, crashed.basket, crashed.ledger) == (
        clean.spend, clean.stamps, clean.basket, clean.ledger)
    assert crashed.document() == clean.document()


def test_the_ledger_holds_at_most_a_window_and_a_day_of_purchases() -> None:
    kris = Customer()
    for day in range(200):
        for hour in (9, 13, 18):
            kris.buy("tea", day * DAY + hour * 3600.0, 100, f"d{day}h{hour}")
    window_days = RULES.return_window_s / DAY
    assert len(kris.ledger.bought) <= 3 * (window_days + 2)
    assert kris.ledger.entry("d199h18", RULES) is not None
    assert kris.ledger.entry(f"d{199 - int(window_days) - 1}h18", RULES) is None


@settings(max_examples=150, deadline=None)
@given(purchases_and_returns(), st.lists(st.booleans(), min_size=10, max_size=10),
       st.lists(st.integers(0, 40), max_size=8))
def test_returns_from_the_returns_topic_and_its_repartition_topic_apply_once_each(
        case: tuple[list[tuple[str, str, int, float]], list[tuple[str, int | None]],
                    list[bool]], keyless: list[bool], crashes: list[int]) -> None:
    """Keyed returns come from ``returns``, keyless ones re-keyed from its repartition
    topic: two logs whose offsets overlap. Each return counts once, whatever the log, with
    redeliveries of any of the three logs, as the independent oracle says."""
    purchases, returns, order = case
    purchases = [(pid, product, cents or 100, ts) for pid, product, cents, ts in purchases]
    price = {pid: cents for pid, _, cents, _ in purchases}
    returns = [(pid, None if amount is None or amount >= price[pid] else amount)
               for pid, amount in returns]
    log: list[tuple[str, int, Any]] = []
    bought, given_back = iter(purchases), iter(returns)
    offsets = {"purchases": 0, "returns": 0, "returns.repartition": 0}
    n = 0
    for take_purchase in order:
        if take_purchase:
            topic, item = "purchases", next(bought)
        else:
            topic = "returns.repartition" if keyless[n % len(keyless)] else "returns"
            item, n = next(given_back), n + 1
        log.append((topic, offsets[topic], item))
        offsets[topic] += 1
    customer = Customer()
    for at, (topic, offset, item) in enumerate(log):
        again = [log[i] for i in range(at) if at in crashes and log[i][0] == topic][-3:]
        for r_topic, r_offset, r_item in (*again, (topic, offset, item)):
            if r_topic == "purchases":
                pid, product, cents, ts = r_item
                customer.buy(product, ts, cents, pid, offset=r_offset)
            else:
                pid, amount = r_item
                customer.give_back(pid, 3_600.0, amount, offset=r_offset,
                                   repartitioned=r_topic == "returns.repartition")
    expected = oracle(purchases, returns)
    document = customer.document()
    assert round(document["total"] * 100) == expected["total_cents"]
    assert document["coffee"]["total"] == expected["coffees"]
    assert customer.rejected == [] and customer.ledger.held == ()
    assert Ledger.from_json(customer.ledger.to_json()) == customer.ledger
    assert Spend.from_json(customer.spend.to_json()) == customer.spend


def test_purchases_older_than_the_return_window_are_forgotten_and_a_return_of_one_refused(
) -> None:
    kris = Customer()
    kris.buy("tea", 0.0, 500, "old")
    kris.buy("tea", 31 * DAY, 500, "new")  # the default window: 30 days
    assert kris.ledger.entry("old", RULES) is None
    assert kris.ledger.entry("new", RULES) is not None
    kris.give_back("old", 31 * DAY + 1)  # unknown: it might still be on its way, held
    kris.buy("tea", 33 * DAY, 500, "later")
    assert kris.expired == [
        "unknown purchase 'old' (held 86400 s of event time, it never arrived)"]
    assert kris.document()["total"] == 15.0


SHORT = LoyaltyRules(return_window_s=3 * DAY)


@st.composite
def returnable_batches(draw: st.DrawFn) -> tuple[list[tuple[int, Purchase, bool]], int]:
    """Purchases with ids (some repeated), event time mostly rising over ~10 days, and where
    a batch boundary falls."""
    count = draw(st.integers(1, 30))
    ts, purchases = 0.0, []
    for offset in range(count):
        ts = max(0.0, ts + draw(st.floats(-DAY, DAY)))
        pid = f"p{draw(st.integers(0, 12))}"
        purchases.append((offset, Purchase("kris", draw(st.sampled_from(["tea", "coffee"])),
                                           ts, draw(st.none() | st.integers(0, 900)), pid),
                          draw(st.booleans())))
    return purchases, draw(st.integers(0, count))


@given(returnable_batches(), st.booleans())
def test_a_batch_remembered_at_once_lets_returns_see_what_one_at_a_time_does(
        case: tuple[list[tuple[int, Purchase, bool]], int], repartitioned: bool) -> None:
    purchases, cut = case
    one_by_one = Ledger()
    for offset, purchase, free in purchases:
        out = Outcome(None, None, None, (), free)
        one_by_one = remember_purchase(purchase, offset, out, Spend(), one_by_one, lambda _: (),
                                       SHORT, repartitioned=repartitioned).ledger or one_by_one
    batched = remember_purchases(Ledger(), purchases[:cut], SHORT, repartitioned=repartitioned)
    batched = remember_purchases(batched, purchases[cut:], SHORT, repartitioned=repartitioned)
    batched = remember_purchases(batched, purchases, SHORT, repartitioned=repartitioned)  # replay
    assert (batched.newest_ts, batched.last_offset, batched.last_rp) == (
        one_by_one.newest_ts, one_by_one.last_offset, one_by_one.last_rp)
    for pid in {p.purchase_id for _, p, _ in purchases}:
        assert pid is not None
        assert batched.entry(pid, SHORT) == one_by_one.entry(pid, SHORT)
