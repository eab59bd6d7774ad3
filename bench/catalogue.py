"""The benchmark's catalogue and event-time period (no imports from the app: peers use it)."""

from __future__ import annotations

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PERIOD_S = 30 * 86_400.0
STAMP_PRODUCT = "coffee"

#: product_id -> (price in currency units, relative weight in purchases).
CATALOGUE: dict[str, tuple[float, int]] = {
    "coffee": (2.5, 30), "tea": (2.0, 10), "croissant": (1.8, 12), "muffin": (2.2, 8),
    "bagel": (1.5, 8), "sandwich": (4.5, 10), "juice": (3.0, 8), "water": (1.0, 10),
    "beret": (25.0, 2), "dog": (95.0, 1),
}
#: The coffee price rise half-way through the period (as-of pricing must see it).
PRICE_CHANGES: tuple[tuple[str, float, float], ...] = (("coffee", 2.75, T0 + PERIOD_S / 2),)


def price_of(product_id: str) -> float:
    """The peers' catalogue lookup: the initial list price (0 for an unknown product)."""
    entry = CATALOGUE.get(product_id)
    return entry[0] if entry else 0.0


def price_as_of(product_id: str, ts: float) -> float:
    """storestream's price for a catalogue-priced purchase at event time ``ts``."""
    price = price_of(product_id)
    for product, new_price, since in PRICE_CHANGES:
        if product == product_id and ts >= since:
            price = new_price
    return price
