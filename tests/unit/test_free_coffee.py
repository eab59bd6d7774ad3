"""Free coffee (issue 22, criterion 3): the coffee bought when ``next_one_free`` is true is
free (priced 0, ``free_coffee_redeemed``) and starts a new card; off reproduces the recipe."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import load_settings
from core.loyalty import (
    FREE_COFFEE_READY,
    FREE_COFFEE_REDEEMED,
    Basket,
    LoyaltyRules,
    Purchase,
    Spend,
    Stamps,
    apply_purchase,
    customer_document,
    replay,
)
from core.returns import Ledger, Return, apply_purchase_returnable, apply_return

INI = str(Path(__file__).resolve().parents[2] / "faust.ini")
ON = LoyaltyRules(free_coffee=True)
OFF = LoyaltyRules()


def no_catalogue(_: str) -> tuple[tuple[float, int], ...]:
    return ()


def coffees(n: int, cents: int = 300) -> list[Purchase]:
    return [Purchase("k", "coffee", float(i), cents, f"c{i}") for i in range(n)]


def test_off_by_default_the_sixth_coffee_is_paid_as_in_the_recipe() -> None:
    assert load_settings({"STORESTREAM_CONFIG": INI}).loyalty.free_coffee is False
    spend, stamps, _, events = replay(coffees(6), no_catalogue, OFF)
    assert spend.settled_cents == 1_800 and stamps.total == 6
    assert FREE_COFFEE_REDEEMED not in [e.type for e in events]


def test_on_the_coffee_bought_when_next_one_free_is_free_and_starts_a_new_card() -> None:
    assert load_settings({"STORESTREAM_CONFIG": INI, "FREE_COFFEE": "on"}).loyalty.free_coffee
    spend, stamps, basket, events = replay(coffees(12), no_catalogue, ON)
    assert spend.settled_cents == 10 * 300
    document = customer_document("k", spend, stamps, basket, no_catalogue, ON)
    assert document["coffee"] == {"total": 12, "sequence": 0, "next_one_free": False}
    kinds = [(e.type, e.details["total"]) for e in events if "total" in e.details]
    assert kinds == [(FREE_COFFEE_READY, 5), (FREE_COFFEE_REDEEMED, 6),
                     (FREE_COFFEE_READY, 11), (FREE_COFFEE_REDEEMED, 12)]
    assert stamps.redeemed == 2


def test_a_free_coffee_replayed_after_its_stamp_was_written_is_still_free() -> None:
    spend, stamps, basket, _ = replay(coffees(5), no_catalogue, ON)
    sixth = Purchase("k", "coffee", 6.0, 300, "c6")
    first = apply_purchase(sixth, 5, spend, stamps, basket, no_catalogue, ON)
    assert first.free and first.stamps is not None
    # the stamps record was written, the spend record lost in a crash: the replay agrees
    again = apply_purchase(sixth, 5, spend, first.stamps, basket, no_catalogue, ON)
    assert again.free and again.stamps is None
    assert again.spend is not None and again.spend.settled_cents == 1_500
    assert Stamps.from_json(first.stamps.to_json()) == first.stamps


def test_returning_a_free_coffee_refunds_nothing_and_takes_its_stamp_back() -> None:
    spend, stamps, basket, ledger = Spend(), Stamps(), Basket(), Ledger()
    for offset, purchase in enumerate(coffees(6)):
        out = apply_purchase_returnable(purchase, offset, spend, stamps, basket, ledger,
                                        no_catalogue, ON)
        spend, stamps = out.spend or spend, out.stamps or stamps
        basket, ledger = out.basket or basket, out.ledger or ledger
    back = apply_return(Return("k", "c5", 10.0), 0, spend, stamps, basket, ledger,
                        no_catalogue, ON)
    assert back.spend is not None and back.spend.settled_cents == 1_500
    assert back.stamps is not None and back.stamps.total == 5


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["coffee", "tea"]), st.integers(1, 900)),
                max_size=40))
def test_every_sixth_coffee_is_free_whatever_else_is_bought(
        bought: list[tuple[str, int]]) -> None:
    purchases = [Purchase("k", product, float(i), cents) for i, (product, cents)
                 in enumerate(bought)]
    spend, stamps, _, events = replay(purchases, no_catalogue, ON)
    assert stamps.redeemed == sum(p.product_id == "coffee" for p in purchases) // 6
    expected, coffee_count = 0, 0
    for product, cents in bought:
        if product == "coffee":
            coffee_count += 1
            if coffee_count % 6 == 0:
                continue
        expected += cents
    assert spend.settled_cents == expected
    assert sum(e.type == FREE_COFFEE_REDEEMED for e in events) == coffee_count // 6
