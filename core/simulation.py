"""The demo store's floor plan and a shopper walk model (pure, deterministic for a seed)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from core.lift import in_control_group

STORE_ID = "flagship"
ORIGIN = (51.5074, -0.1278)  # the store's south-west corner
M_PER_DEG = 6_371_000 * math.pi / 180
AISLES = ("tea", "coffee", "bakery", "pets", "fashion", "produce")
DISPLAYS_PER_AISLE = 8
AISLE_GAP_M = 4.0
DISPLAY_GAP_M = 2.5
WALK_SPEED_M_S = 1.2
DWELL_S = 4.0


def to_latlon(x_m: float, y_m: float) -> tuple[float, float]:
    """Store coordinates (metres east, north of the origin) to latitude/longitude."""
    lat = ORIGIN[0] + y_m / M_PER_DEG
    lon = ORIGIN[1] + x_m / (M_PER_DEG * math.cos(math.radians(ORIGIN[0])))
    return lat, lon


@dataclass(frozen=True, slots=True)
class PlannedDisplay:
    """A display on the floor plan, in store coordinates."""

    sku: str
    segment: str
    variant: str
    x_m: float
    y_m: float

    def record(self) -> dict[str, Any]:
        """The ``stores.products`` event for this display."""
        lat, lon = to_latlon(self.x_m, self.y_m)
        return {"sku": self.sku, "lat": lat, "lon": lon, "segment": self.segment,
                "variant": self.variant, "store_id": STORE_ID, "active": True}


def floor_plan() -> list[PlannedDisplay]:
    """Six aisles of eight displays each."""
    plan = []
    for aisle, segment in enumerate(AISLES):
        for slot in range(DISPLAYS_PER_AISLE):
            plan.append(PlannedDisplay(
                sku=str(1000 + aisle * 100 + slot), segment=segment,
                variant=f"{segment}-{slot + 1}",
                x_m=2.0 + slot * DISPLAY_GAP_M, y_m=2.0 + aisle * AISLE_GAP_M,
            ))
    return plan


def promotions() -> list[dict[str, Any]]:
    """The demo's promotions: by segment, by sku, and tier-gated."""
    return [
        {"pid": "tea-week", "segment": "tea", "discount_pct": 10, "ts": 0.0},
        {"pid": "espresso-1203", "sku": "1103", "discount_pct": 15, "ts": 0.0},
        {"pid": "croissant-2for1", "sku": "1205", "discount_pct": 50, "ts": 0.0},
        {"pid": "pets-gold", "segment": "pets", "discount_pct": 25, "min_tier": "GOLD",
         "ts": 0.0},
        {"pid": "fashion-silver", "segment": "fashion", "discount_pct": 20,
         "min_tier": "SILVER", "ts": 0.0},
    ]


def offered_skus(plan: list[PlannedDisplay], promos: list[dict[str, Any]]) -> frozenset[str]:
    """Skus whose display gets every shopper an offer: those of a promotion open to every
    tier (the demo's shoppers stay CLIMBING), by sku or by segment."""
    open_to_all = [p for p in promos if not p.get("min_tier")]
    return frozenset(d.sku for d in plan
                     if any(p.get("sku") == d.sku or p.get("segment") == d.segment
                            for p in open_to_all))


@dataclass(slots=True)
class Shopper:
    """A shopper walking from display to display."""

    uid: str
    x_m: float
    y_m: float
    target: PlannedDisplay
    dwell_left_s: float = 0.0
    #: Displays stopped at in this visit.
    stops: int = 0


class StoreWalk:
    """Shoppers wandering the floor plan; ``step`` advances one shopper by ``dt`` seconds."""

    def __init__(self, shoppers: int, seed: int = 42, buy_pct: float = 0.0,
                 offer_buy_pct: float | None = None, control_pct: float = 0.0,
                 visit_stops: int = 0) -> None:
        self._rnd = random.Random(seed)
        #: Purchases are drawn apart, so the walk is the same with or without them.
        self._buy_rnd = random.Random(seed + 1)
        self.buy_pct = buy_pct
        #: The chance of buying at a display the shopper was offered a promotion for
        #: (``None``: ``buy_pct``, offers change nothing); shoppers of the control group
        #: (``control_pct``, the worker's ``CONTROL_GROUP_PCT``) get no offer, so they buy at
        #: ``buy_pct``: the difference is the lift the live page shows.
        self.offer_buy_pct = buy_pct if offer_buy_pct is None else offer_buy_pct
        self.control_pct = control_pct
        #: After this many stops a shopper leaves and a new one (a new uid) comes in at the
        #: entrance (0: shoppers stay): offers then have a visit to convert in, as in a shop.
        self.visit_stops = visit_stops
        self._offered = offered_skus(floor_plan(), promotions())
        #: Purchases made since last taken (:meth:`take_purchases`).
        self.purchases: list[dict[str, Any]] = []
        self._plan = floor_plan()
        self.shoppers = [
            Shopper(uid=f"shopper-{n:03d}", x_m=0.5, y_m=0.5 + n % 20,
                    target=self._rnd.choice(self._plan))
            for n in range(shoppers)
        ]
        self._arrived = shoppers

    def step(self, shopper: Shopper, dt: float) -> tuple[float, float]:
        """Move (or dwell) for ``dt`` seconds; returns the new latitude/longitude."""
        if shopper.dwell_left_s > 0:
            shopper.dwell_left_s -= dt
            if shopper.dwell_left_s <= 0:
                chance = self.buy_pct
                if shopper.target.sku in self._offered and not in_control_group(
                        shopper.uid, self.control_pct):
                    chance = self.offer_buy_pct
                if chance > 0 and self._buy_rnd.random() * 100 < chance:
                    # Some shoppers buy what they stood at (after an offer or not): the
                    # purchases that attribution and lift are measured on.
                    self.purchases.append({"user_id": shopper.uid,
                                           "product_id": shopper.target.sku,
                                           "price": round(1 + self._buy_rnd.random() * 9, 2)})
                shopper.target = self._rnd.choice(self._plan)
                shopper.stops += 1
                if self.visit_stops and shopper.stops >= self.visit_stops:
                    # leaves; a new shopper comes in at the entrance
                    shopper.uid = f"shopper-{self._arrived:03d}"
                    self._arrived += 1
                    shopper.x_m, shopper.stops = 0.5, 0
            return to_latlon(shopper.x_m, shopper.y_m)
        # stand just in front of the display (within the three-foot radius)
        tx, ty = shopper.target.x_m, shopper.target.y_m - 0.4
        dx, dy = tx - shopper.x_m, ty - shopper.y_m
        distance = math.hypot(dx, dy)
        reach = WALK_SPEED_M_S * dt
        if distance <= reach:
            shopper.x_m, shopper.y_m = tx, ty
            shopper.dwell_left_s = DWELL_S * (0.5 + self._rnd.random())
        else:
            shopper.x_m += dx / distance * reach
            shopper.y_m += dy / distance * reach
        return to_latlon(shopper.x_m, shopper.y_m)

    def take_purchases(self) -> list[dict[str, Any]]:
        """The purchases made since the last call (without ``ts``: the sender stamps it)."""
        taken, self.purchases = self.purchases, []
        return taken

    def positions(self, rate: float, start_ts: float) -> Iterator[dict[str, Any]]:
        """Endless position events at ``rate`` per second in total (event time from start_ts)."""
        dt_each = len(self.shoppers) / rate
        ts = start_ts
        while True:
            for shopper in self.shoppers:
                ts += 1.0 / rate
                lat, lon = self.step(shopper, dt_each)
                yield {"uid": shopper.uid, "lat": lat, "lon": lon, "store_id": STORE_ID,
                       "ts": round(ts, 3)}
