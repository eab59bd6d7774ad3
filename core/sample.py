"""The sample data of the ksqlDB loyalty recipe (seed 003), with event times in script order.

Statements are given ascending event times one second apart, so the coffee price rise applies
exactly to the purchases the script inserts after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: Event time of the first statement.
BASE_TS = 1_700_000_000.0

USERS = (("u2001", "kris"), ("u2002", "dave"), ("u2003", "yeva"), ("u2004", "rick"))

PRODUCTS = (
    ("tea", "beverages", 2.55),
    ("coffee", "beverages", 2.99),
    ("dog", "pets", 249.99),
    ("cat", "pets", 195.00),
    ("beret", "fashion", 34.99),
    ("handbag", "fashion", 126.00),
)

PURCHASES_BEFORE_RISE = (
    ("kris", "coffee"), ("kris", "coffee"), ("kris", "coffee"), ("yeva", "beret"),
    ("yeva", "coffee"), ("yeva", "cat"), ("kris", "coffee"), ("rick", "tea"),
    ("yeva", "coffee"), ("yeva", "coffee"), ("kris", "coffee"), ("dave", "dog"),
    ("dave", "coffee"), ("kris", "coffee"), ("kris", "beret"),
)

PRICE_RISE = ("coffee", "beverages", 3.05)

PURCHASES_AFTER_RISE = (
    ("kris", "coffee"), ("rick", "coffee"), ("yeva", "coffee"), ("kris", "coffee"),
    ("kris", "coffee"), ("rick", "dog"), ("rick", "coffee"), ("yeva", "coffee"),
    ("rick", "cat"), ("kris", "coffee"), ("kris", "coffee"), ("kris", "coffee"),
    ("kris", "coffee"), ("yeva", "handbag"),
)

#: "Kris will never get any rewards at that rate! Let's buy him a dog."
KRIS_DOG = ("kris", "dog")


@dataclass(frozen=True, slots=True)
class SampleEvent:
    """One record to produce: topic (unprefixed), key and JSON value."""

    topic: str
    key: str
    value: dict[str, Any]


def recipe_events(include_dog: bool = True) -> Iterator[SampleEvent]:
    """Every record of the recipe's mock data, in script order."""
    ts = BASE_TS

    def tick() -> float:
        nonlocal ts
        ts += 1.0
        return ts

    for user_id, name in USERS:
        yield SampleEvent("users", name, {"user_id": name, "name": name, "account": user_id})
    for product_id, category, price in PRODUCTS:
        yield SampleEvent("products", product_id, {
            "product_id": product_id, "category": category, "price": price, "ts": tick(),
        })
    for number, (user, product) in enumerate(PURCHASES_BEFORE_RISE):
        yield _purchase(user, product, tick(), f"p{number:03d}")
    product_id, category, price = PRICE_RISE
    yield SampleEvent("products", product_id, {
        "product_id": product_id, "category": category, "price": price, "ts": tick(),
    })
    offset = len(PURCHASES_BEFORE_RISE)
    for number, (user, product) in enumerate(PURCHASES_AFTER_RISE, start=offset):
        yield _purchase(user, product, tick(), f"p{number:03d}")
    if include_dog:
        yield _purchase(*KRIS_DOG, tick(), "p999")


def _purchase(user: str, product: str, ts: float, purchase_id: str) -> SampleEvent:
    return SampleEvent("purchases", user, {
        "user_id": user, "product_id": product, "purchase_id": purchase_id, "ts": ts,
    })


#: What every table must hold after the whole script, dog included (as-of event-time pricing).
EXPECTED_TOTALS = {"dave": "252.98", "rick": "453.64", "kris": "324.27", "yeva": "371.06"}
EXPECTED_TIERS = {"dave": "BRONZE", "rick": "GOLD", "kris": "SILVER", "yeva": "SILVER"}
EXPECTED_KRIS_BEFORE_DOG = "74.28"
EXPECTED_COFFEE = {"dave": (1, 1, False), "rick": (2, 2, False), "kris": (13, 1, False),
                   "yeva": (5, 5, True)}
EXPECTED_CAMPAIGNS: dict[str, dict[str, list[str]]] = {
    "dave": {}, "rick": {}, "yeva": {},
    "kris": {"french_poodle": ["beret", "dog"], "loose_leaf": ["coffee"]},
}
