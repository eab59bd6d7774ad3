"""Pure decision logic for in-store offers: promotions, tiers, cooldown and offer ids.

No I/O and no framework imports. Times are event-time seconds since the epoch (the
``ts`` of the shopper position), never the wall clock, so a replay of the same
events produces the same offers with the same ids.

Cooldown
    ``last_offered[(pid, sku)]`` holds, per customer, the ``ts`` of the last offer
    sent for that promotion and SKU. A new offer is allowed when there is none, or
    when ``ts - last >= cooldown_s``; positions earlier than the last offer (late
    or out-of-order events) are suppressed. Each offer therefore opens a cooldown
    window starting at its own ``ts``.

Offer id
    ``offer_id`` hashes ``(uid, pid, sku, window_start_ms)`` with SHA-256, where the
    window start is the event ``ts`` of the offer that opened the cooldown window,
    in whole milliseconds. Re-processing the same position with the same cooldown
    state yields the same id, so downstream consumers can deduplicate on it.

Ended promotions
    A promotion record with ``active=False`` ends it: ``PromotionIndex`` drops it and
    keeps its ``ts``, and ignores any record for that ``pid`` with an older ``ts``,
    so an out-of-order ``active`` record cannot bring it back. Only a record at least
    as new (equal ``ts``: the later one in the log wins) re-activates the ``pid``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TypeAlias

from core.geo import (
    DEFAULT_RADIUS_M,
    Display,
    DisplayIndex,
    normalise_id,
    normalise_sku,
    optional_str,
    parse_bool,
    parse_float,
    valid_coordinates,
)
from core.tiers import Tier

DEFAULT_COOLDOWN_S = 1800.0

Discount: TypeAlias = int | Decimal
CooldownKey: TypeAlias = tuple[str, str]


def parse_tier(value: object) -> Tier | None:
    """Parse a tier name (case-insensitive) or ``Tier``; ``None``/blank means no tier."""
    if value is None or isinstance(value, Tier):
        return value
    if isinstance(value, str):
        name = value.strip().upper()
        if not name:
            return None
        if name in Tier.__members__:
            return Tier[name]
    raise ValueError(f"unknown tier: {value!r}")


def tier_allows(customer_tier: Tier | str | None, min_tier: Tier | str | None) -> bool:
    """True when the customer's tier reaches ``min_tier``; no min_tier allows everyone.

    A customer with no known tier counts as ``CLIMBING``, the entry tier.
    """
    required = parse_tier(min_tier)
    if required is None:
        return True
    have = parse_tier(customer_tier)
    return (Tier.CLIMBING if have is None else have) >= required


def parse_discount(value: object) -> Discount:
    """Parse a discount percentage in [0, 100], exactly: ints stay ints, others become Decimal.

    Floats go through their shortest repr (``12.5`` -> ``Decimal("12.5")``); integral
    Decimals collapse to ``int``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"invalid discount_pct: {value!r}")
    try:
        exact = value if isinstance(value, int) else Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise ValueError(f"invalid discount_pct: {value!r}") from exc
    if isinstance(exact, Decimal):
        if not exact.is_finite():
            raise ValueError(f"invalid discount_pct: {value!r}")
        if exact == exact.to_integral_value():
            exact = int(exact)
    if not 0 <= exact <= 100:
        raise ValueError(f"discount_pct must be within 0-100, got {value!r}")
    return exact


@dataclass(frozen=True, slots=True)
class Promotion:
    """A promotion naming a SKU and/or a segment (``products.promotions``)."""

    pid: str
    discount_pct: Discount
    sku: str | None = None
    segment: str | None = None
    min_tier: Tier | None = None
    active: bool = True
    ts: float = 0.0

    def __post_init__(self) -> None:
        if not self.pid:
            raise ValueError("promotion pid must be non-empty")
        if self.sku is None and self.segment is None:
            raise ValueError(f"promotion {self.pid!r} names neither sku nor segment")
        exact = self.discount_pct
        if isinstance(exact, bool) or not isinstance(exact, int | Decimal):
            raise ValueError(f"discount_pct must be int or Decimal, got {exact!r}")
        parse_discount(exact)


def parse_promotion(record: Mapping[str, object]) -> Promotion:
    """Build a ``Promotion`` from a ``products.promotions`` record; raises ``ValueError``."""
    raw_sku = record.get("sku")
    blank = raw_sku is None or (isinstance(raw_sku, str) and not raw_sku.strip())
    raw_ts = record.get("ts")
    return Promotion(
        pid=normalise_id(record.get("pid"), "pid"),
        discount_pct=parse_discount(record.get("discount_pct")),
        sku=None if blank else normalise_sku(raw_sku),
        segment=optional_str(record.get("segment")),
        min_tier=parse_tier(record.get("min_tier")),
        active=parse_bool(record.get("active"), default=True),
        ts=0.0 if raw_ts is None else parse_float(raw_ts, "ts"),
    )


def promotion_matches_display(promo: Promotion, display: Display) -> bool:
    """An active promotion matches a display naming its sku or its segment."""
    if not promo.active:
        return False
    if promo.sku is not None and promo.sku == display.sku:
        return True
    return promo.segment is not None and promo.segment == display.segment


class PromotionIndex:
    """Active promotions by SKU and by segment, last-writer-wins on ``ts`` per ``pid``."""

    def __init__(self, promotions: Iterable[Promotion] = ()) -> None:
        self._by_pid: dict[str, Promotion] = {}
        self._by_sku: dict[str, dict[str, Promotion]] = {}
        self._by_segment: dict[str, dict[str, Promotion]] = {}
        self._latest_ts: dict[str, float] = {}
        for promo in promotions:
            self.upsert(promo)

    def __len__(self) -> int:
        return len(self._by_pid)

    def __contains__(self, pid: object) -> bool:
        return pid in self._by_pid

    def get(self, pid: str) -> Promotion | None:
        """The active promotion with this pid, if any."""
        return self._by_pid.get(pid)

    def upsert(self, promo: Promotion) -> bool:
        """Apply a promotion record; returns False when it is older than what is known."""
        known = self._latest_ts.get(promo.pid)
        if known is not None and promo.ts < known:
            return False
        self._latest_ts[promo.pid] = promo.ts
        self._drop(promo.pid)
        if promo.active:
            self._by_pid[promo.pid] = promo
            if promo.sku is not None:
                self._by_sku.setdefault(promo.sku, {})[promo.pid] = promo
            if promo.segment is not None:
                self._by_segment.setdefault(promo.segment, {})[promo.pid] = promo
        return True

    def remove(self, pid: str) -> Promotion | None:
        """Forget a promotion entirely (e.g. a tombstone); returns it if it was active."""
        self._latest_ts.pop(pid, None)
        return self._drop(pid)

    def promotions_for(self, display: Display) -> list[Promotion]:
        """Active promotions matching the display, by pid, each once."""
        found: dict[str, Promotion] = dict(self._by_sku.get(display.sku, {}))
        if display.segment is not None:
            found.update(self._by_segment.get(display.segment, {}))
        return [found[pid] for pid in sorted(found)]

    def _drop(self, pid: str) -> Promotion | None:
        promo = self._by_pid.pop(pid, None)
        if promo is None:
            return None
        if promo.sku is not None:
            _discard(self._by_sku, promo.sku, pid)
        if promo.segment is not None:
            _discard(self._by_segment, promo.segment, pid)
        return promo


def _discard(table: dict[str, dict[str, Promotion]], label: str, pid: str) -> None:
    bucket = table.get(label)
    if bucket is not None:
        bucket.pop(pid, None)
        if not bucket:
            del table[label]


def cooldown_allows(last_offered_ts: float | None, now_ts: float, cooldown_s: float) -> bool:
    """True when no offer was sent yet, or the last one is at least ``cooldown_s`` old."""
    if cooldown_s < 0:
        raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s!r}")
    if last_offered_ts is None:
        return True
    return now_ts - last_offered_ts >= cooldown_s


def offer_id(uid: str, pid: str, sku: str, window_start_ts: float) -> str:
    """Deterministic id (32 hex chars) for an offer opening a cooldown window."""
    if not math.isfinite(window_start_ts):
        raise ValueError(f"invalid window start: {window_start_ts!r}")
    millis = round(window_start_ts * 1000)
    payload = json.dumps([uid, pid, sku, millis], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Offer:
    """An offer to send to a shopper near a display."""

    offer_id: str
    uid: str
    pid: str
    sku: str
    segment: str | None
    variant: str | None
    store_id: str
    discount_pct: Discount
    distance_m: float
    ts: float

    @property
    def cooldown_key(self) -> CooldownKey:
        """Key of this offer in the customer's ``last_offered`` mapping."""
        return (self.pid, self.sku)

    def to_record(self) -> dict[str, object]:
        """JSON-ready dict; a fractional Decimal discount is rendered as a string."""
        discount: object = self.discount_pct
        if isinstance(discount, Decimal):
            discount = str(discount)
        return {
            "offer_id": self.offer_id,
            "uid": self.uid,
            "pid": self.pid,
            "sku": self.sku,
            "segment": self.segment,
            "variant": self.variant,
            "store_id": self.store_id,
            "discount_pct": discount,
            "distance_m": self.distance_m,
            "ts": self.ts,
        }


def decide_offers(
    uid: str,
    lat: float,
    lon: float,
    ts: float,
    *,
    opted_out: bool,
    tier: Tier | str | None,
    displays: DisplayIndex,
    promotions: PromotionIndex,
    last_offered: Mapping[CooldownKey, float],
    radius_m: float = DEFAULT_RADIUS_M,
    cooldown_s: float = DEFAULT_COOLDOWN_S,
) -> list[Offer]:
    """Offers to emit for one shopper position at event time ``ts``.

    At most one offer per ``(pid, sku)``: the nearest matching display wins. Order is
    nearest first, then ``pid``, ``sku``, ``store_id``. Invalid positions or times
    yield no offers. The caller records the result with ``record_offers``.
    """
    customer_tier = parse_tier(tier)
    if opted_out or not valid_coordinates(lat, lon) or not math.isfinite(ts):
        return []
    offers: dict[CooldownKey, Offer] = {}
    for display, distance in displays.near(lat, lon, radius_m):
        for promo in promotions.promotions_for(display):
            key = (promo.pid, display.sku)
            if key in offers or not _eligible(promo, display, customer_tier):
                continue
            if cooldown_allows(last_offered.get(key), ts, cooldown_s):
                offers[key] = _make_offer(uid, promo, display, distance, ts)
    return sorted(offers.values(), key=lambda o: (o.distance_m, o.pid, o.sku, o.store_id))


def _eligible(promo: Promotion, display: Display, tier: Tier | None) -> bool:
    return (
        display.active
        and promotion_matches_display(promo, display)
        and tier_allows(tier, promo.min_tier)
    )


def _make_offer(uid: str, promo: Promotion, display: Display, distance: float, ts: float) -> Offer:
    return Offer(
        offer_id=offer_id(uid, promo.pid, display.sku, ts),
        uid=uid,
        pid=promo.pid,
        sku=display.sku,
        segment=display.segment,
        variant=display.variant,
        store_id=display.store_id,
        discount_pct=promo.discount_pct,
        distance_m=distance,
        ts=ts,
    )


def record_offers(
    last_offered: Mapping[CooldownKey, float], offers: Iterable[Offer]
) -> dict[CooldownKey, float]:
    """New ``last_offered`` mapping including the given offers (keeps the later ts)."""
    updated = dict(last_offered)
    for offer in offers:
        previous = updated.get(offer.cooldown_key)
        if previous is None or offer.ts > previous:
            updated[offer.cooldown_key] = offer.ts
    return updated


def prune_last_offered(
    last_offered: Mapping[CooldownKey, float], now_ts: float, cooldown_s: float
) -> dict[CooldownKey, float]:
    """Drop entries that no longer block an offer at ``now_ts`` (keeps state small).

    Use a ``now_ts`` no later than the oldest event still expected (a watermark):
    pruning past it would let a late position slip into a closed cooldown window.
    """
    return {
        key: last
        for key, last in last_offered.items()
        if not cooldown_allows(last, now_ts, cooldown_s)
    }
