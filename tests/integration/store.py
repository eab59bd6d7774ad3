"""A tiny test store: displays at known distances, promotions of every kind."""

from __future__ import annotations

import math
from typing import Any

ORIGIN = (51.5, -0.1)
M_PER_DEG_LAT = 6_371_000 * math.pi / 180


def offset(north_m: float = 0.0, east_m: float = 0.0) -> tuple[float, float]:
    """A point ``north_m``/``east_m`` metres from the store origin."""
    lat = ORIGIN[0] + north_m / M_PER_DEG_LAT
    lon = ORIGIN[1] + east_m / (M_PER_DEG_LAT * math.cos(math.radians(ORIGIN[0])))
    return lat, lon


D1, D2, D3 = offset(), offset(east_m=10), offset(east_m=20)

DISPLAYS: list[dict[str, Any]] = [
    {"sku": 1001, "lat": D1[0], "lon": D1[1], "segment": "tea", "store_id": "s1",
     "variant": "green"},
    {"sku": "2002", "latitude": D2[0], "longitude": D2[1], "segment": "coffee",
     "store_id": "s1"},
    {"sku": "3003", "lat": D3[0], "lon": D3[1], "segment": "tea", "store_id": "s1"},
]

PROMOTIONS: list[dict[str, Any]] = [
    {"pid": "p-sku", "sku": "2002", "discount_pct": 15, "ts": 1.0},
    {"pid": "p-seg", "segment": "tea", "discount_pct": 10, "ts": 1.0},
    {"pid": "p-gold", "sku": "3003", "discount_pct": 30, "min_tier": "GOLD", "ts": 1.0},
    {"pid": "p-off", "sku": 1001, "discount_pct": "12.5", "ts": 1.0},
]


def display_records() -> list[tuple[str, str, dict[str, Any]]]:
    return [("stores.products", str(d["sku"]), d) for d in DISPLAYS]


def promotion_records() -> list[tuple[str, str, dict[str, Any]]]:
    return [("products.promotions", p["pid"], p) for p in PROMOTIONS]


def position(uid: str, point: tuple[float, float], ts: float,
             north_m: float = 0.0) -> tuple[str, str, dict[str, Any]]:
    lat = point[0] + north_m / M_PER_DEG_LAT
    return ("customers.locations", uid,
            {"uid": uid, "lat": lat, "lon": point[1], "store_id": "s1", "ts": ts})
