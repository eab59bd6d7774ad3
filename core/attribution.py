"""Attribution: which purchases redeemed which offers (``offers.redemptions``).

No I/O and no framework imports. Times are event-time seconds (the ``ts`` of the position
that produced an offer and of the purchase), never the wall clock.

Rule
    A purchase by a shopper of sku ``s`` at ``t`` redeems an offer made to that shopper at
    ``o`` when ``o <= t <= o + window_s`` and the offer names ``s`` (its display's sku, or
    the promotion's sku) or the promotion's segment holds ``s``. Of all qualifying offers
    the latest wins (ties: the larger ``offer_id``). One redemption per purchase at most.

Order of the two topics
    Offers come from ``customers.locations`` and purchases from ``purchases``; both are keyed
    by customer, so one worker sees both, but in any interleaving. A purchase is therefore
    held *pending* until the shopper's positions have passed it (a position with
    ``ts > t`` was processed: every offer at or before ``t`` is known, a shopper's positions
    being in event-time order) or until the window has closed behind it (a purchase of the
    same shopper later than ``t + window_s``). It is then attributed, once, to the latest
    qualifying offer known. Within the window the result does not depend on which topic was
    consumed first (``tests/unit/test_attribution.py``).

Replays
    The state keeps, per log (topic, partition), the offset of the last record that changed
    it. A record at or before it is a redelivery: it changes nothing and emits nothing, so
    each redemption is emitted once across crashes and replays.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from types import MappingProxyType
from typing import Any, NamedTuple, TypeAlias

from core.offers import Promotion

DEFAULT_WINDOW_S = 7200.0
#: At most this many offers and pending purchases are kept per shopper (the oldest go first).
MAX_OFFERS = 64
MAX_PENDING = 256

#: A log: (topic, partition).
Log: TypeAlias = tuple[str, int]


class Where(NamedTuple):
    """Where a record was read: its identity in the log (a redelivery has the same one)."""

    topic: str
    partition: int
    offset: int

    @property
    def log(self) -> Log:
        return (self.topic, self.partition)


class OfferMark(NamedTuple):
    """An offer as attribution needs it.

    A named tuple, not a dataclass: a shopper's state holds up to :data:`MAX_OFFERS` of them
    and is rebuilt and stored with each position that brings an offer; its stored form is
    the plain tuple of its fields (:meth:`to_json`)."""

    offer_id: str
    pid: str
    sku: str
    ts: float
    #: The promotion's sku (a purchase of it qualifies), if the promotion names one.
    promo_sku: str | None = None
    #: The promotion's segment (a purchase of any sku in it qualifies), if it names one.
    segment: str | None = None
    #: Held out (control group): recorded, never sent.
    held_out: bool = False
    #: Redeemed at least once already.
    redeemed: bool = False

    def names(self, sku: str, segments: Iterable[str]) -> bool:
        """Whether a purchase of ``sku`` (displayed in ``segments``) is of this offer."""
        if sku == self.sku or sku == self.promo_sku:
            return True
        return self.segment is not None and self.segment in segments

    def to_json(self) -> tuple[Any, ...]:
        """The stored form: the fields in order."""
        return tuple(self)

    @classmethod
    def from_json(cls, raw: Sequence[Any]) -> OfferMark:
        """Inverse of :meth:`to_json` (flags stored as 0/1 before are read too)."""
        return cls(str(raw[0]), str(raw[1]), str(raw[2]), float(raw[3]),
                   None if raw[4] is None else str(raw[4]),
                   None if raw[5] is None else str(raw[5]),
                   bool(raw[6]) if len(raw) > 6 else False,
                   bool(raw[7]) if len(raw) > 7 else False)


@dataclass(frozen=True, slots=True)
class PurchaseMark:
    """A purchase as attribution needs it: its reference, sku, segments, time and revenue."""

    ref: str
    sku: str
    ts: float
    revenue_cents: int
    segments: tuple[str, ...] = ()

    def to_json(self) -> list[Any]:
        return [self.ref, self.sku, self.ts, self.revenue_cents, list(self.segments)]

    @classmethod
    def from_json(cls, raw: Sequence[Any]) -> PurchaseMark:
        return cls(str(raw[0]), str(raw[1]), float(raw[2]), int(raw[3]),
                   tuple(str(s) for s in raw[4]))


@dataclass(frozen=True, slots=True)
class Redemption:
    """A purchase attributed to an offer (an ``offers.redemptions`` record)."""

    offer_id: str
    uid: str
    pid: str
    sku: str
    purchase_id: str
    revenue_cents: int
    seconds_after_offer: float
    ts: float
    #: The offer was held out (control group): the record says ``"held_out": true``.
    held_out: bool = False
    #: The offer's first redemption (conversion counts offers, not purchases).
    first: bool = True

    def to_record(self) -> dict[str, object]:
        record: dict[str, object] = {
            "offer_id": self.offer_id, "uid": self.uid, "pid": self.pid, "sku": self.sku,
            "purchase_id": self.purchase_id, "revenue_cents": self.revenue_cents,
            "seconds_after_offer": self.seconds_after_offer, "ts": self.ts}
        if self.held_out:
            record["held_out"] = True
        return record


def qualifies(offer: OfferMark, purchase: PurchaseMark, window_s: float) -> bool:
    """The purchase is of the offer and within ``window_s`` after it (never before it)."""
    return (offer.ts <= purchase.ts <= offer.ts + window_s
            and offer.names(purchase.sku, purchase.segments))


def attribute(offers: Iterable[OfferMark], purchase: PurchaseMark,
              window_s: float) -> OfferMark | None:
    """The latest offer the purchase qualifies for (ties: the larger ``offer_id``)."""
    best: OfferMark | None = None
    for offer in offers:
        if qualifies(offer, purchase, window_s) and (
                best is None or (offer.ts, offer.offer_id) > (best.ts, best.offer_id)):
            best = offer
    return best


def redemption(uid: str, offer: OfferMark, purchase: PurchaseMark,
               first: bool = True) -> Redemption:
    """The record of ``purchase`` redeeming ``offer``."""
    return Redemption(offer.offer_id, uid, offer.pid, purchase.sku, purchase.ref,
                      purchase.revenue_cents, round(purchase.ts - offer.ts, 3), purchase.ts,
                      offer.held_out, first)


NEVER = float("-inf")


#: No log applied yet (shared: an applied map is never changed, :func:`_applied` copies it).
NO_LOGS: Mapping[Log, int] = MappingProxyType({})


class AttributionState(NamedTuple):
    """A shopper's recent offers, purchases waiting to be attributed, how far the shopper's
    positions and purchases have gone in event time, and per log the last offset applied.

    ``offers`` are kept in (``ts``, ``offer_id``) order, so a position adds its offer at the
    end and pruning cuts a prefix: a position's cost does not grow with the offers held."""

    offers: tuple[OfferMark, ...] = ()
    pending: tuple[PurchaseMark, ...] = ()
    #: The latest position ``ts`` that changed this state (``NEVER``: none yet).
    positions_ts: float = NEVER
    #: The latest purchase ``ts`` seen.
    purchases_ts: float = NEVER
    applied: Mapping[Log, int] = NO_LOGS

    def redelivers(self, where: Where) -> bool:
        """True when the record at ``where`` was applied to this state already."""
        return where.offset <= self.applied.get(where.log, -1)

    def with_position(self, uid: str, ts: float, offers: Sequence[OfferMark], where: Where,
                      window_s: float) -> tuple[AttributionState, list[Redemption]]:
        """The state after a position at ``ts`` that produced ``offers`` (maybe none), and the
        redemptions of the pending purchases it settles. A redelivered record, or one that
        neither brings offers, settles a purchase nor moves the clock of a shopper with an
        offer still redeemable, returns this very state."""
        if self.redelivers(where):
            return self, []
        every = self.offers
        for offer in offers:
            if not _holds(every, offer):
                every = _inserted(every, offer)
        pending = self.pending
        settled = tuple(p for p in pending if p.ts < ts) if pending else ()
        # The clock moves while an offer can still be redeemed (the newest is last): a
        # purchase consumed after the position is then attributed at once instead of
        # waiting for the next position.
        advances = ts > self.positions_ts and bool(every) and every[-1].ts + window_s >= ts
        if every is self.offers and not settled and not advances:
            return self, []
        every, emitted = _settle(uid, every, settled, window_s)
        state = AttributionState(
            every, tuple(p for p in pending if p.ts >= ts) if settled else pending,
            max(self.positions_ts, ts), self.purchases_ts, _applied(self.applied, where))
        return state._pruned(window_s), emitted

    def with_purchase(self, uid: str, purchase: PurchaseMark, where: Where,
                      window_s: float) -> tuple[AttributionState, list[Redemption]]:
        """The state after a purchase and the redemptions settled by it: the purchase's own
        when the shopper's positions have passed it already, and those of pending purchases
        whose window it closed. A redelivered record returns this very state."""
        if self.redelivers(where):
            return self, []
        newest = max(self.purchases_ts, purchase.ts)
        waiting = self.pending if purchase.ts < self.positions_ts else (
            *self.pending, purchase)
        now = (purchase,) if purchase.ts < self.positions_ts else ()
        closed = tuple(p for p in waiting if p.ts + window_s < newest)
        if len(waiting) - len(closed) > MAX_PENDING:
            keep = sorted((p for p in waiting if p not in closed), key=_purchase_order)
            closed += tuple(keep[:len(keep) - MAX_PENDING])
        offers, emitted = _settle(uid, self.offers, now + closed, window_s)
        state = AttributionState(
            offers, tuple(p for p in waiting if p not in closed), self.positions_ts,
            newest, _applied(self.applied, where))
        return state._pruned(window_s), emitted

    def _pruned(self, window_s: float) -> AttributionState:
        """Offers no purchase can redeem any more are dropped: older than two windows behind
        the newest event (a purchase consumed a window later than its shopper's positions
        is outside the window), or beyond :data:`MAX_OFFERS` (the oldest)."""
        offers = self.offers
        if not offers:
            return self
        horizon = max(self.positions_ts, self.purchases_ts) - 2 * window_s
        cut = bisect.bisect_left(offers, horizon, key=_offer_ts) if offers[0].ts < horizon else 0
        cut = max(cut, len(offers) - MAX_OFFERS)
        if not cut:
            return self
        return AttributionState(offers[cut:], self.pending, self.positions_ts,
                                self.purchases_ts, self.applied)

    def to_json(self) -> dict[str, Any]:
        """The stored form: JSON's types, except that the offers are the state's own named
        tuples, which a JSON writer writes as arrays of their fields (the table writer, as
        Faust's serializer does). Not copied into plain tuples: the state is written for
        each position that brings an offer, and up to :data:`MAX_OFFERS` new tuples per
        write, kept in the table until the shopper's next one, were most of what the
        collector traversed on the offer path."""
        return {
            "offers": list(self.offers),
            "pending": [purchase.to_json() for purchase in self.pending],
            "positions_ts": None if self.positions_ts == NEVER else self.positions_ts,
            "purchases_ts": None if self.purchases_ts == NEVER else self.purchases_ts,
            "applied": [[topic, partition, offset]
                        for (topic, partition), offset in sorted(self.applied.items())],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> AttributionState:
        """Inverse of :meth:`to_json`; ``None`` is a shopper with no state yet (offers stored
        in another order before are put in order)."""
        if not raw:
            return cls()
        positions_ts = raw.get("positions_ts")
        purchases_ts = raw.get("purchases_ts")
        return cls(
            tuple(sorted((OfferMark.from_json(o) for o in raw.get("offers") or ()),
                         key=_offer_order)),
            tuple(PurchaseMark.from_json(p) for p in raw.get("pending") or ()),
            NEVER if positions_ts is None else float(positions_ts),
            NEVER if purchases_ts is None else float(purchases_ts),
            {(str(t), int(p)): int(o) for t, p, o in raw.get("applied") or ()},
        )


def _holds(offers: tuple[OfferMark, ...], offer: OfferMark) -> bool:
    """Whether ``offers`` (in (``ts``, ``offer_id``) order) hold ``offer``: found where it
    would go, not by reading them all (an offer id hashes the offer's time,
    :func:`core.offers.offer_id`: one id is never held at two times)."""
    at = bisect.bisect_left(offers, (offer.ts, offer.offer_id), key=_offer_order)
    return at < len(offers) and offers[at].offer_id == offer.offer_id


def _inserted(offers: tuple[OfferMark, ...], offer: OfferMark) -> tuple[OfferMark, ...]:
    """``offers`` with ``offer`` in its place (usually the end: positions come in order)."""
    if not offers:
        return (offer,)
    last = offers[-1]
    if last.ts < offer.ts or (last.ts == offer.ts and last.offer_id <= offer.offer_id):
        return (*offers, offer)
    ordered = list(offers)
    bisect.insort(ordered, offer, key=_offer_order)
    return tuple(ordered)


def _settle(uid: str, offers: tuple[OfferMark, ...], purchases: Iterable[PurchaseMark],
            window_s: float) -> tuple[tuple[OfferMark, ...], list[Redemption]]:
    """Attribute ``purchases``; the offers (those redeemed for the first time marked) and the
    redemptions."""
    emitted = []
    redeemed: set[str] = set()
    for purchase in sorted(purchases, key=_purchase_order):
        offer = attribute(offers, purchase, window_s)
        if offer is not None:
            first = not offer.redeemed and offer.offer_id not in redeemed
            redeemed.add(offer.offer_id)
            emitted.append(redemption(uid, offer, purchase, first))
    if not redeemed:
        return offers, emitted
    return tuple(o._replace(redeemed=True) if o.offer_id in redeemed else o
                 for o in offers), emitted


def _applied(applied: Mapping[Log, int], where: Where) -> dict[Log, int]:
    updated = dict(applied)
    updated[where.log] = max(where.offset, updated.get(where.log, -1))
    return updated


#: Purchases and offers in event-time order (ties: reference, offer id).
_purchase_order: Callable[[PurchaseMark], tuple[float, str]] = attrgetter("ts", "ref")
_offer_order: Callable[[OfferMark], tuple[float, str]] = attrgetter("ts", "offer_id")
_offer_ts: Callable[[OfferMark], float] = attrgetter("ts")


def mark(offer_id: str, pid: str, sku: str, ts: float, promotion: Promotion | None,
         held_out: bool = False) -> OfferMark:
    """An offer of ``promotion`` (``None``: ended since: its sku alone qualifies)."""
    if promotion is None:
        return OfferMark(offer_id, pid, sku, ts, sku, None, held_out)
    return OfferMark(offer_id, pid, sku, ts, promotion.sku, promotion.segment, held_out)
