"""Pure decision logic for in-store offers: promotions, tiers, cooldown and offer ids.

No I/O and no framework imports. Times are event-time seconds since the epoch (the
``ts`` of the shopper position), never the wall clock, so a replay of the same
events produces the same offers with the same ids.

Cooldown
    ``last_offered[(pid, sku)]`` holds, per customer, the cooldown :class:`Window` of that
    promotion and SKU: the ``ts`` of the offer that opened it and the position's
    :class:`PositionSource` (topic, partition, offset). Replays are told apart by source,
    never by timestamp (distinct positions can carry the same ``ts``):

    * a record processed before (redelivered after a crash before the commit) is offered
      again exactly what it opened: the same offers, the same ids
      (:meth:`CooldownState.redelivers`, :func:`window_allows`);
    * any other position is a distinct one: it opens a new window only when
      ``ts - window.ts >= cooldown_s``; within the cooldown (same ``ts``, an earlier one,
      or a record without ``ts`` stamped in the same millisecond) it yields nothing.

    A bare float in ``last_offered`` is a window of unknown source (state kept before
    sources were recorded): the ``ts`` rule alone applies.

Offer id
    ``offer_id`` hashes ``(uid, pid, sku, window_start_ms)`` and the position's source
    (topic, partition, offset) with SHA-256, where the window start is the event ``ts`` of
    the position that opened the cooldown window, in whole milliseconds. Re-processing the
    same record yields the same id, so downstream consumers can deduplicate on it, and two
    distinct positions never share one.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, TypeAlias

import orjson

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
from core.rfm import parse_segments
from core.tiers import Tier

DEFAULT_COOLDOWN_S = 1800.0

Discount: TypeAlias = int | Decimal
CooldownKey: TypeAlias = tuple[str, str]


def parse_tier(value: object) -> Tier | None:
    """Parse a tier name (case-insensitive) or ``Tier``; ``None``/blank means no tier."""
    if value is None or isinstance(value, Tier):
        return value
    if isinstance(value, str):
        tier = _TIERS.get(value)  # the usual case: a tier's own name
        if tier is not None:
            return tier
        name = value.strip().upper()
        if not name:
            return None
        tier = _TIERS.get(name)
        if tier is not None:
            return tier
    raise ValueError(f"unknown tier: {value!r}")


#: Tiers by name (``Tier[name]`` and ``Tier.__members__`` go through the enum's Python-level
#: lookups; a tier is parsed for every position).
_TIERS: dict[str, Tier] = {tier.name: tier for tier in Tier}


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
    #: Seconds the shopper must have stayed within the radius before the offer goes out.
    dwell_s: float = 0.0
    #: RFM segments the promotion targets (``segment_rfm``); ``None``: every customer.
    segment_rfm: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.dwell_s) or self.dwell_s < 0:
            raise ValueError(f"dwell_s must be >= 0 seconds, got {self.dwell_s!r}")
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
    raw_dwell = record.get("dwell_s")
    return Promotion(
        pid=normalise_id(record.get("pid"), "pid"),
        discount_pct=parse_discount(record.get("discount_pct")),
        sku=None if blank else normalise_sku(raw_sku),
        segment=optional_str(record.get("segment")),
        min_tier=parse_tier(record.get("min_tier")),
        active=parse_bool(record.get("active"), default=True),
        ts=0.0 if raw_ts is None else parse_float(raw_ts, "ts"),
        dwell_s=0.0 if raw_dwell is None else parse_float(raw_dwell, "dwell_s"),
        segment_rfm=parse_segments(record.get("segment_rfm")),
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

    def covers(self, sku: str, segments: Iterable[str] = ()) -> bool:
        """Whether an active promotion names ``sku`` or one of ``segments``."""
        return sku in self._by_sku or any(s in self._by_segment for s in segments)

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


@dataclass(frozen=True, slots=True)
class PositionSource:
    """Where a position was read: its identity in the log (a redelivery has the same one)."""

    topic: str
    partition: int
    offset: int

    def before(self, other: PositionSource) -> bool:
        """True when this record precedes ``other`` in the same log (topic and partition)."""
        return (self.topic == other.topic and self.partition == other.partition
                and self.offset < other.offset)


@dataclass(frozen=True, slots=True)
class Window:
    """A cooldown window: the event time of the offer that opened it, and where the position
    that opened it was read (``None``: unknown, state kept before sources were recorded)."""

    ts: float
    source: PositionSource | None = None


#: What ``last_offered`` maps a ``(pid, sku)`` to: a window, or a bare ``ts`` (source unknown).
Cooldown: TypeAlias = Window | float


def as_window(value: Cooldown) -> Window:
    """A ``last_offered`` value as a :class:`Window` (a bare ``ts`` has no source)."""
    return value if isinstance(value, Window) else Window(float(value))


def cooldown_allows(last_offered_ts: float | None, now_ts: float, cooldown_s: float) -> bool:
    """True when no offer was sent yet, or the last one is at least ``cooldown_s`` old."""
    if cooldown_s < 0:
        raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s!r}")
    if last_offered_ts is None:
        return True
    return now_ts - last_offered_ts >= cooldown_s


def window_allows(window: Cooldown | None, ts: float, source: PositionSource | None,
                  cooldown_s: float, *, redelivered: bool = False) -> bool:
    """Whether a position at event time ``ts``, read at ``source``, may be offered a
    ``(pid, sku)`` whose cooldown window is ``window``.

    A record that was processed before (``redelivered``: the shopper's state already holds
    its effects, :meth:`CooldownState.redelivers`) is offered again exactly what it opened:
    yes when it opened this window, otherwise no. For any other record: yes when there is no
    window or the window was opened by this very record; no when this record precedes the
    window's opener in the same log (it was processed before, and did not open the window);
    otherwise it is a distinct position, offered only once the cooldown has passed since the
    window opened, whatever its ``ts`` (equal or earlier ones are within the cooldown).
    """
    opened = None if window is None else as_window(window)
    if redelivered:
        return opened is not None and source is not None and opened.source == source
    if opened is None:
        return cooldown_allows(None, ts, cooldown_s)
    if source is not None and opened.source is not None:
        if opened.source == source:
            return True
        if source.before(opened.source):
            return False
    return cooldown_allows(opened.ts, ts, cooldown_s)


def offer_id(uid: str, pid: str, sku: str, window_start_ts: float,
             source: PositionSource | None = None) -> str:
    """Deterministic id (32 hex chars) for the offer of the position read at ``source``,
    opening a cooldown window at ``window_start_ts``."""
    if not math.isfinite(window_start_ts):
        raise ValueError(f"invalid window start: {window_start_ts!r}")
    millis = round(window_start_ts * 1000)
    parts: list[object] = [uid, pid, sku, millis]
    if source is not None:
        parts += [source.topic, source.partition, source.offset]
    try:  # orjson writes what json.dumps writes here, in a fraction of the time
        payload = orjson.dumps(parts)
    except TypeError:  # an int beyond 64 bits (orjson's encode error is a TypeError)
        payload = json.dumps(parts, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:32]


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
    #: Where the position was read (``None`` when the caller did not say).
    source: PositionSource | None = None

    @property
    def cooldown_key(self) -> CooldownKey:
        """Key of this offer in the customer's ``last_offered`` mapping."""
        return (self.pid, self.sku)

    @property
    def window(self) -> Window:
        """The cooldown window this offer opens."""
        return Window(self.ts, self.source)

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
    last_offered: Mapping[CooldownKey, Cooldown],
    radius_m: float = DEFAULT_RADIUS_M,
    cooldown_s: float = DEFAULT_COOLDOWN_S,
    source: PositionSource | None = None,
    redelivered: bool = False,
    stayed: Callable[[Display], float] | None = None,
    rfm_segment: str | None = None,
    nearby: Sequence[tuple[Display, float]] | None = None,
) -> list[Offer]:
    """Offers to emit for one shopper position at event time ``ts``, read at ``source``.

    At most one offer per ``(pid, sku)``: the nearest matching display wins. Order is
    nearest first, then ``pid``, ``sku``, ``store_id``. Invalid positions or times
    yield no offers. Cooldowns follow :func:`window_allows`: pass ``source`` (and
    ``redelivered``, from :meth:`CooldownState.redelivers`) so that a redelivered record
    yields its offers again and any other position within the cooldown none. The caller
    records the result with :meth:`CooldownState.after` (or ``record_offers``).

    A promotion with ``dwell_s`` is offered only once ``stayed(display)`` (seconds the shopper
    has been within the display's radius, :meth:`core.presence.Presence.stayed`) reaches it;
    a redelivered record is offered what it opened, as the cooldown says.

    ``nearby``: ``displays.near(lat, lon, radius_m)`` when the caller has it already.
    """
    customer_tier = parse_tier(tier)
    if opted_out or not valid_coordinates(lat, lon) or not math.isfinite(ts):
        return []
    offers: dict[CooldownKey, Offer] = {}
    if nearby is None:
        nearby = displays.near(lat, lon, radius_m)
    for display, distance in nearby:
        for promo in promotions.promotions_for(display):
            key = (promo.pid, display.sku)
            if key in offers or not _eligible(promo, display, customer_tier, rfm_segment):
                continue
            if promo.dwell_s > 0 and not redelivered and (
                    stayed is None or stayed(display) < promo.dwell_s):
                continue
            if window_allows(last_offered.get(key), ts, source, cooldown_s,
                             redelivered=redelivered):
                offers[key] = _make_offer(uid, promo, display, distance, ts, source)
    return sorted(offers.values(), key=lambda o: (o.distance_m, o.pid, o.sku, o.store_id))


def _eligible(promo: Promotion, display: Display, tier: Tier | None,
              rfm_segment: str | None = None) -> bool:
    return (
        display.active
        and promotion_matches_display(promo, display)
        and tier_allows(tier, promo.min_tier)
        and (promo.segment_rfm is None or rfm_segment in promo.segment_rfm)
    )


def _make_offer(uid: str, promo: Promotion, display: Display, distance: float, ts: float,
                source: PositionSource | None) -> Offer:
    return Offer(
        offer_id=offer_id(uid, promo.pid, display.sku, ts, source),
        uid=uid,
        pid=promo.pid,
        sku=display.sku,
        segment=display.segment,
        variant=display.variant,
        store_id=display.store_id,
        discount_pct=promo.discount_pct,
        distance_m=distance,
        ts=ts,
        source=source,
    )


def record_offers(
    last_offered: Mapping[CooldownKey, float], offers: Iterable[Offer]
) -> dict[CooldownKey, float]:
    """New ``last_offered`` mapping including the given offers (keeps the later ts).

    Timestamps only: use :func:`record_windows` to keep the sources replays are told by.
    """
    updated = dict(last_offered)
    for offer in offers:
        previous = updated.get(offer.cooldown_key)
        if previous is None or offer.ts > previous:
            updated[offer.cooldown_key] = offer.ts
    return updated


def record_windows(
    last_offered: Mapping[CooldownKey, Cooldown], offers: Iterable[Offer]
) -> dict[CooldownKey, Window]:
    """New windows including those the given offers open (a window is replaced only by a later
    one: an offer re-emitted for a redelivered record leaves its own window as it was)."""
    updated = {key: as_window(value) for key, value in last_offered.items()}
    for offer in offers:
        previous = updated.get(offer.cooldown_key)
        if previous is None or offer.ts > previous.ts:
            updated[offer.cooldown_key] = offer.window
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


def prune_windows(
    windows: Mapping[CooldownKey, Window], now_ts: float, cooldown_s: float
) -> dict[CooldownKey, Window]:
    """:func:`prune_last_offered` for windows: keep those still blocking at ``now_ts``."""
    return {
        key: window
        for key, window in windows.items()
        if not cooldown_allows(window.ts, now_ts, cooldown_s)
    }


#: Separates pid and sku in the stored form of a cooldown key.
KEY_SEP = "\x1f"

#: A log: (topic, partition).
Log: TypeAlias = tuple[str, int]


@dataclass(frozen=True, slots=True)
class CooldownState:
    """A shopper's offer state: the open cooldown windows, and per log (topic, partition) the
    offset of the last record that changed them.

    A record at or before that offset is a redelivery: its effects are in the state already,
    so it is offered again only what it opened (even when :func:`prune_windows` has since
    dropped a window that blocked it). A record after it changed nothing when it was
    processed (state is written only with offers), so processing it again gives the same
    answer. Logs are ordered only within themselves: a shopper whose positions arrive both
    keyed and through the repartition topic is told apart per log.
    """

    windows: Mapping[CooldownKey, Window] = field(default_factory=dict)
    applied: Mapping[Log, int] = field(default_factory=dict)

    def redelivers(self, source: PositionSource) -> bool:
        """True when the record at ``source`` was processed into this state already."""
        return source.offset <= self.applied.get((source.topic, source.partition), -1)

    def after(self, offers: Sequence[Offer], source: PositionSource, ts: float,
              cooldown_s: float) -> CooldownState:
        """The state once the offers of the record at ``source`` (event time ``ts``) are
        recorded; windows no longer blocking at ``ts - cooldown_s`` are dropped. A redelivered
        record changes nothing: its effects are in the state already (pruning again with its
        older ``ts`` could drop windows that records after it opened)."""
        if self.redelivers(source):
            return self
        windows = prune_windows(record_windows(self.windows, offers), ts - cooldown_s,
                                cooldown_s)
        log = (source.topic, source.partition)
        applied = dict(self.applied)
        applied[log] = max(source.offset, applied.get(log, -1))
        return CooldownState(windows, applied)

    def to_json(self) -> dict[str, Any]:
        """The stored form: ``last_offered`` ``{"pid\\x1fsku": ts}`` (the form kept before
        sources were recorded), ``opened_by`` ``{"pid\\x1fsku": [topic, partition, offset]}``
        and ``applied`` ``[[topic, partition, offset], ...]``."""
        last: dict[str, float] = {}
        opened: dict[str, list[object]] = {}
        for (pid, sku), window in sorted(self.windows.items()):
            name = f"{pid}{KEY_SEP}{sku}"
            last[name] = window.ts
            if window.source is not None:
                where = window.source
                opened[name] = [where.topic, where.partition, where.offset]
        applied = [[topic, partition, offset]
                   for (topic, partition), offset in sorted(self.applied.items())]
        return {"last_offered": last, "opened_by": opened, "applied": applied}

    @classmethod
    def from_json(cls, record: Mapping[str, Any] | None) -> CooldownState:
        """Inverse of :meth:`to_json`; ``None`` is a new shopper, a record without sources
        (written before they were kept) has windows of unknown source."""
        if not record:
            return cls()
        opened: Mapping[str, Any] = record.get("opened_by") or {}
        windows: dict[CooldownKey, Window] = {}
        for name, ts in (record.get("last_offered") or {}).items():
            pid, _, sku = str(name).partition(KEY_SEP)
            where = opened.get(name)
            source = None if where is None else PositionSource(
                str(where[0]), int(where[1]), int(where[2]))
            windows[(pid, sku)] = Window(float(ts), source)
        applied = {(str(topic), int(partition)): int(offset)
                   for topic, partition, offset in record.get("applied") or ()}
        return cls(windows, applied)
