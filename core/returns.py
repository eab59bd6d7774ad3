"""Returns: a purchase given back takes back its spend, its coffee stamp and its campaign part.

A customer's :class:`Ledger` remembers the purchases that carry a ``purchase_id`` (the only
ones a return can name) for ``rules.return_window_s`` of event time behind their newest
purchase, and how much of each was refunded. A return is reversed *at the price the purchase
was counted at*: its own price, or the catalogue price in force at the purchase's event time
(while the purchase is still pending, the purchase simply leaves the pending list, so a late
catalogue change can no longer matter to it). A partial return (``amount``) takes back that
much spend and leaves the item (stamp, basket) in place; the return that completes the amount,
or one without an amount, returns the item.

Exactly once: every record keeps the last ``returns`` offset it applied (``last_ret``), and the
ledger keeps, with each purchase, the offsets of the returns applied to it, so a redelivered
return has the effect it had the first time, on exactly the records that missed it.

A return whose purchase is not known yet is *held* when it is within ``rules.lateness_s`` of
the customer's newest purchase, and applied together with the purchase when it arrives (with
the purchase's offset: once); one held longer than that is given up (reported as expired, a
dead letter). A return of an unknown purchase older than that window, of a purchase already
returned, or of more than what is left of it, is rejected with the reason.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from core.ledger_rows import first_row, layers, plus_rows
from core.loyalty import (
    TIER_CHANGED,
    Basket,
    Catalogue,
    LoyaltyEvent,
    LoyaltyRules,
    Outcome,
    Pending,
    Purchase,
    Spend,
    SpendByProduct,
    Stamps,
    apply_purchase,
    tier_now,
    view_spend,
)
from core.pricing import price_at
from core.tiers import day_of, window_days

PURCHASE_RETURNED = "purchase_returned"
#: How many rejected return offsets a ledger remembers (so a redelivery is rejected alike).
REJECTED_KEPT = 32
#: How many held returns given up a ledger remembers (see :attr:`Ledger.given_up`).
GIVEN_UP_KEPT = 32


class Return(NamedTuple):
    """A validated ``returns`` event."""

    user_id: str
    purchase_id: str
    ts: float
    amount_cents: int | None = None


class Refund(NamedTuple):
    """A return applied to a purchase: its ``returns`` offset, cents taken back, whether it
    returned the item, and whether it was held until the purchase arrived."""

    offset: int
    cents: int
    full: bool
    held: bool = False


#: A refund as the ledger stores it: ``tuple(Refund)``.
RefundRow = tuple[int, int, bool, bool]
#: A returnable purchase as the ledger stores it: plain tuples, which ``orjson`` writes to the
#: changelog without a Python step per purchase (``Bought.row``/``Bought.of`` convert).
BoughtRow = tuple[float, str, int | None, tuple[RefundRow, ...]]
#: Purchases past the return window stay in the ledger up to this much longer (they are
#: already treated as absent): dropping them a day at a time, not one per purchase, keeps
#: a purchase's cost independent of how many purchases the window holds.
EXPIRY_SLACK_S = 86_400.0


class Bought(NamedTuple):
    """A returnable purchase: when, what, its own price (``None``: catalogue-priced)."""

    ts: float
    product_id: str
    price_cents: int | None
    refunds: tuple[Refund, ...] = ()

    @classmethod
    def of(cls, row: BoughtRow) -> Bought:
        """The purchase a ledger row holds."""
        ts, product, cents, refunds = row
        return cls(ts, product, cents, tuple(Refund(*r) for r in refunds))

    def row(self) -> BoughtRow:
        """The ledger row of this purchase."""
        return (self.ts, self.product_id, self.price_cents,
                tuple((r.offset, r.cents, r.full, r.held) for r in self.refunds))

    @property
    def returned(self) -> bool:
        return any(r.full for r in self.refunds)

    @property
    def refunded_cents(self) -> int:
        return sum(r.cents for r in self.refunds)


class Held(NamedTuple):
    """A return that arrived before its purchase, with where it came from."""

    purchase_id: str
    ts: float
    amount_cents: int | None
    offset: int
    partition: int
    raw: str


EMPTY_BOUGHT: Mapping[str, BoughtRow] = MappingProxyType({})


class Ledger(NamedTuple):
    """A customer's returnable purchases (rows by ``purchase_id``, in arrival order), held
    returns, and offsets applied."""

    bought: Mapping[str, BoughtRow] = EMPTY_BOUGHT
    held: tuple[Held, ...] = ()
    newest_ts: float = 0.0
    rejected: tuple[tuple[int, str], ...] = ()
    last_offset: int = -1
    last_rp: int = -1
    last_ret: int = -1
    #: The last offset applied from the returns' repartition topic.
    last_ret_rp: int = -1
    #: Held returns given up lately: (the purchase's offset that gave them up, ``-1 -
    #: offset`` from the purchases' repartition topic; the held return; the reason), so a
    #: redelivered purchase reports them again and their dead letters can be sent exactly
    #: once (the sender skips a letter already on the dead-letters topic).
    given_up: tuple[tuple[int, Held, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form for the changelog."""
        fields = self.head_json()
        bought = self.bought
        # never mutated once in a ledger: the value written shares the rows and the map
        fields["bought"] = bought if type(bought) is dict else dict(bought)
        return fields

    def head_json(self) -> dict[str, Any]:
        """:meth:`to_json` without the purchases (what a ledger stored by day keeps in its
        head record, core/ledger_days.py)."""
        fields = self.offsets_json()
        fields["newest_ts"] = self.newest_ts
        # what is empty is left out: most heads hold neither held returns nor rejections,
        # and the changelog gets a head per customer and batch
        if self.held:
            fields["held"] = [list(h) for h in self.held]
        if self.rejected:
            fields["rejected"] = [list(r) for r in self.rejected]
        if self.given_up:
            fields["given_up"] = [[m, list(h), r] for m, h, r in self.given_up]
        return fields

    def offsets_json(self) -> dict[str, Any]:
        """The last offset applied from each log, leaving out those still -1 (nothing
        applied), as :func:`core.changelog.record_offsets` reads them."""
        fields: dict[str, Any] = {"last_offset": self.last_offset}
        if self.last_rp >= 0:
            fields["last_rp"] = self.last_rp
        if self.last_ret >= 0:
            fields["last_ret"] = self.last_ret
        if self.last_ret_rp >= 0:
            fields["last_ret_rp"] = self.last_ret_rp
        return fields

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Ledger:
        """Inverse of :meth:`to_json`; ``None`` is a new customer."""
        if not raw:
            return cls()
        return cls(
            bought={str(pid): (float(ts), sys.intern(str(product)),
                               None if cents is None else int(cents),
                               tuple((int(o), int(c), bool(f), bool(h))
                                     for o, c, f, h in refunds))
                    for pid, (ts, product, cents, refunds) in raw["bought"].items()},
            held=tuple(Held(str(p), float(t), None if a is None else int(a), int(o), int(pa),
                            str(r)) for p, t, a, o, pa, r in raw.get("held", ())),
            newest_ts=float(raw["newest_ts"]),
            rejected=tuple((int(o), str(r)) for o, r in raw.get("rejected", ())),
            last_offset=int(raw["last_offset"]),
            last_rp=int(raw.get("last_rp", -1)),
            last_ret=int(raw.get("last_ret", -1)),
            last_ret_rp=int(raw.get("last_ret_rp", -1)),
            given_up=tuple((int(m), Held(str(h[0]), float(h[1]),
                                         None if h[2] is None else int(h[2]), int(h[3]),
                                         int(h[4]), str(h[5])), str(r))
                           for m, h, r in raw.get("given_up", ())),
        )


    def entry(self, purchase_id: str, rules: LoyaltyRules) -> Bought | None:
        """The purchase ``purchase_id`` while it can still be returned."""
        row = self.bought.get(purchase_id)
        if row is None or row[0] < self.newest_ts - rules.return_window_s:
            return None
        return Bought.of(row)


class ReturnOutcome(NamedTuple):
    """Records after a return or a purchase (``None``: unchanged), events, and what failed:
    ``rejected`` (this return's reason) and ``expired`` (held returns given up, each with the
    reason: to dead-letter). ``pending_cents`` is :attr:`core.loyalty.Outcome.pending_cents`'s
    counterpart: never known here (the pending purchases are priced again next time)."""

    spend: Spend | None
    stamps: Stamps | None
    basket: Basket | None
    ledger: Ledger | None
    events: tuple[LoyaltyEvent, ...]
    rejected: str | None = None
    expired: tuple[tuple[Held, str], ...] = ()
    pending_cents: int | None = None


def counted_cents(bought: Bought, catalogue: Catalogue) -> int | None:
    """What the purchase was counted at (``None``: a never-priced product, counted as 0)."""
    if bought.price_cents is not None:
        return bought.price_cents
    return price_at(catalogue(bought.product_id), bought.ts)


def _reverse_spend(spend: Spend, bought: Bought, refund: Refund, refunded_before: int,
                   catalogue: Catalogue, rules: LoyaltyRules) -> Spend:
    """``spend`` with ``refund`` of ``bought`` taken back (offsets left to the caller)."""
    product = bought.product_id
    watched = product in rules.watched
    settled, unpriced = spend.settled_cents, spend.settled_unpriced
    watched_cents = spend.watched_cents
    pending = spend.pending
    purchases = spend.purchases
    delta = -refund.cents  # change of settled cents (and of the watched product's cents)
    if refund.full:
        purchases -= 1
        item: Pending = (bought.ts, product)
        if bought.price_cents is None and item in pending:
            at = pending.index(item)
            pending = pending[:at] + pending[at + 1:]
            # the purchase leaves pending: earlier partial refunds are given back to settled
            delta = refunded_before
        elif bought.price_cents is None and price_at(catalogue(product), bought.ts) is None:
            unpriced = max(unpriced - 1, 0)
            delta = 0
        else:
            delta = -(counted_cents(bought, catalogue) or 0) + refunded_before
    settled += delta
    if watched and delta:
        watched_cents = {**watched_cents, product: watched_cents.get(product, 0) + delta}
    days = spend.days
    day = day_of(bought.ts)
    if rules.tier_window_days > 0 and delta and day in days:
        buckets = days.to_dict()
        buckets[day] += delta
        days = window_days(buckets, day_of(spend.newest_ts), rules.tier_window_days)
    return spend._replace(settled_cents=settled, settled_unpriced=unpriced,
                          watched_cents=watched_cents, pending=pending, purchases=purchases,
                          days=days)


def _reverse(
    user_id: str, ts: float, bought: Bought, refund: Refund, refunded_before: int,
    spend: Spend | None, stamps: Stamps | None, basket: Basket | None,
    catalogue: Catalogue, rules: LoyaltyRules,
) -> tuple[Spend | None, Stamps | None, Basket | None, list[LoyaltyEvent]]:
    """Take ``refund`` back from the records given (``None``: not to be changed)."""
    events: list[LoyaltyEvent] = []
    product = bought.product_id
    if spend is not None:
        before_tier = spend.tier
        spend = _reverse_spend(spend, bought, refund, refunded_before, catalogue, rules)
        view = view_spend(spend, catalogue, rules)
        tier, below_since = tier_now(spend, view.total_cents, catalogue, rules)
        spend = spend._replace(tier=tier, below_since=below_since)
        if tier != before_tier:
            events.append(LoyaltyEvent(user_id, TIER_CHANGED, {
                "from": before_tier, "to": tier, "total_cents": view.total_cents,
            }, ts))
    if stamps is not None and refund.full and product == rules.stamps.product_id:
        stamps = stamps._replace(total=max(stamps.total - 1, 0))
    if basket is not None and refund.full and product in rules.watched:
        extra = dict(basket.extra)
        products = basket.products
        if extra.get(product, 0) > 0:
            extra[product] -= 1
            if not extra[product]:
                del extra[product]
        else:
            products = products - {product}
        basket = basket._replace(products=products, extra=extra)
    return spend, stamps, basket, events


def _requalify(basket: Basket, spend: Spend, catalogue: Catalogue,
               rules: LoyaltyRules) -> Basket:
    """Campaigns announced = those met now (a return can take a customer out of one; meeting
    it again is announced again)."""
    return basket._replace(announced=rules.plan.met_names(
        basket.products, SpendByProduct(spend, catalogue, rules.watched)))


def _expire(ledger: Ledger, rules: LoyaltyRules) -> tuple[Ledger, tuple[tuple[Held, str], ...]]:
    """Drop purchases past the return window and held returns past the lateness window."""
    horizon = ledger.newest_ts - rules.lateness_s
    expired = () if not ledger.held else tuple(
        (h, f"unknown purchase {h.purchase_id!r} (held {rules.lateness_s:g} s of event time, "
            f"it never arrived)")
        for h in ledger.held if h.ts < horizon)
    keep_from = ledger.newest_ts - rules.return_window_s
    bought = ledger.bought
    # Purchases are remembered roughly in event-time order: the first one tells whether any
    # may be due (one arriving late and old is dropped with the next due one: still bounded).
    # Rows past the window are already absent to returns (Ledger.entry); they are dropped
    # once the first is a slack past it, so at most once a day of event time per customer.
    oldest = first_row(bought)
    if oldest is not None and oldest[0] < keep_from - EXPIRY_SLACK_S:
        bought = {pid: b for pid, b in bought.items() if b[0] >= keep_from}
    if expired:
        ledger = ledger._replace(held=tuple(h for h in ledger.held if h.ts >= horizon))
    return (ledger if bought is ledger.bought else ledger._replace(bought=bought)), expired


def _decide(ret: Return, offset: int, mark: int, ledger: Ledger, newest_ts: float,
            catalogue: Catalogue, rules: LoyaltyRules, partition: int,
            raw: str) -> tuple[Ledger, str | None]:
    """The ledger after a new return, or the reason it is rejected (``mark``: the return's
    offset as refunds, held returns and rejections remember it, see :func:`return_mark`)."""
    ledger = (ledger._replace(last_ret_rp=offset) if mark < 0
              else ledger._replace(last_ret=offset))
    bought = ledger.entry(ret.purchase_id, rules)
    reason: str | None = None
    if bought is None:
        if ret.ts < newest_ts - rules.lateness_s:
            reason = f"unknown purchase {ret.purchase_id!r}"
        else:
            held = Held(ret.purchase_id, ret.ts, ret.amount_cents, mark, partition, raw)
            return ledger._replace(held=(*ledger.held, held)), None
    elif bought.returned:
        reason = f"purchase {ret.purchase_id!r} already returned"
    else:
        refund, reason = _refund_for(bought, ret.amount_cents, mark, False, catalogue)
        if refund is not None:
            return ledger._replace(bought={
                **ledger.bought,
                ret.purchase_id: bought._replace(refunds=(*bought.refunds, refund)).row(),
            }), None
    assert reason is not None
    rejected = ((*ledger.rejected, (mark, reason)))[-REJECTED_KEPT:]
    return ledger._replace(rejected=rejected), reason


def _refund_for(bought: Bought, amount: int | None, offset: int, held: bool,
                catalogue: Catalogue) -> tuple[Refund | None, str | None]:
    counted = counted_cents(bought, catalogue) or 0
    left = counted - bought.refunded_cents
    if amount is None or amount >= left:
        if amount is not None and amount > left:
            return None, (f"return amount {amount} cents exceeds the {left} cents left of "
                          f"the purchase")
        return Refund(offset, max(left, 0), True, held), None
    return Refund(offset, amount, False, held), None


def return_mark(offset: int, repartitioned: bool) -> int:
    """A return's offset as refunds, held returns and rejections remember it: the
    ``returns`` offset, or ``-1 - offset`` for the returns' repartition topic (another
    offset space, as :attr:`core.loyalty.Stamps.free` tells purchases apart)."""
    return -1 - offset if repartitioned else offset


def apply_return(
    ret: Return, offset: int, spend: Spend, stamps: Stamps, basket: Basket, ledger: Ledger,
    catalogue: Catalogue, rules: LoyaltyRules = LoyaltyRules(), *, partition: int = 0,
    raw: str = "", repartitioned: bool = False,
) -> ReturnOutcome:
    """Apply one ``returns`` event at ``offset``; a redelivered one has the effect it had.
    A return read from the returns' repartition topic (``repartitioned``: a keyless or
    misplaced return re-keyed by its customer) has an offset of that topic: compared with
    and stored as ``last_ret_rp`` instead."""
    rp = repartitioned
    mark = return_mark(offset, rp)
    new_ledger: Ledger | None = None
    if offset > (ledger.last_ret_rp if rp else ledger.last_ret):
        new_ledger, reason = _decide(ret, offset, mark, ledger,
                                     max(ledger.newest_ts, spend.newest_ts),
                                     catalogue, rules, partition, raw)
        if reason is not None:
            return ReturnOutcome(None, None, None, new_ledger, (), reason)
        ledger = new_ledger
    else:
        for seen, reason in ledger.rejected:
            if seen == mark:
                return ReturnOutcome(None, None, None, None, (), reason)
    bought = ledger.entry(ret.purchase_id, rules)
    refund = None if bought is None else next(
        (r for r in bought.refunds if r.offset == mark and not r.held), None)
    if bought is None or refund is None:  # held (or a replay of a held one): nothing yet
        return ReturnOutcome(None, None, None, new_ledger, ())
    before = sum(r.cents for r in bought.refunds[:bought.refunds.index(refund)])
    new_spend, new_stamps, new_basket, events = _reverse(
        ret.user_id, ret.ts, bought, refund, before,
        spend if offset > (spend.last_ret_rp if rp else spend.last_ret) else None,
        stamps if offset > (stamps.last_ret_rp if rp else stamps.last_ret) else None,
        basket if offset > (basket.last_ret_rp if rp else basket.last_ret) else None,
        catalogue, rules)
    if new_spend is not None:
        new_spend = (new_spend._replace(last_ret_rp=offset) if rp
                     else new_spend._replace(last_ret=offset))
    if new_stamps is not None:
        new_stamps = None if new_stamps == stamps else (
            new_stamps._replace(last_ret_rp=offset) if rp
            else new_stamps._replace(last_ret=offset))
    if new_basket is not None:
        if new_basket == basket:
            new_basket = None
        else:
            new_basket = _requalify(new_basket, new_spend or spend, catalogue, rules)
            new_basket = (new_basket._replace(last_ret_rp=offset) if rp
                          else new_basket._replace(last_ret=offset))
    if new_spend is not None:
        events.insert(0, LoyaltyEvent(ret.user_id, PURCHASE_RETURNED, {
            "purchase_id": ret.purchase_id, "product_id": bought.product_id,
            "refund_cents": refund.cents, "full": refund.full,
        }, ret.ts))
    return ReturnOutcome(new_spend, new_stamps, new_basket, new_ledger, tuple(events))


def apply_purchase_returnable(
    purchase: Purchase, offset: int, spend: Spend, stamps: Stamps, basket: Basket,
    ledger: Ledger, catalogue: Catalogue, rules: LoyaltyRules = LoyaltyRules(), *,
    repartitioned: bool = False,
) -> ReturnOutcome:
    """:func:`core.loyalty.apply_purchase`, remembering a purchase with a ``purchase_id`` in
    the ledger and applying, with it, the returns held for it."""
    out = apply_purchase(purchase, offset, spend, stamps, basket, catalogue, rules,
                         repartitioned=repartitioned)
    return remember_purchase(purchase, offset, out, spend, ledger, catalogue, rules,
                             repartitioned=repartitioned)


def _seen(ledger: Ledger, offset: int, newest_ts: float, repartitioned: bool) -> Ledger:
    """``ledger`` having seen the purchase at ``offset`` (of the repartition topic when
    ``repartitioned``) of event time up to ``newest_ts``."""
    if repartitioned:
        return ledger._replace(newest_ts=newest_ts, last_rp=offset)
    return ledger._replace(newest_ts=newest_ts, last_offset=offset)


def remember_purchases(
    ledger: Ledger, purchases: Sequence[tuple[int, Purchase, bool]],
    rules: LoyaltyRules = LoyaltyRules(), *, repartitioned: bool = False,
) -> Ledger:
    """``ledger`` after remembering ``purchases`` (``(offset, purchase, free)`` in offset
    order, each with a ``purchase_id``) in one step, for a ledger holding no return
    (``ledger.held`` empty: only a return adds one). What a return can see is what
    :func:`remember_purchase` one at a time leaves; only rows already past the window may
    be dropped at other moments."""
    return remember_batch(ledger, purchases, rules, repartitioned=repartitioned)[0]


class LedgerBatch:
    """A batch's purchases being remembered in a ledger holding no return, one at a time as
    they are applied: :func:`remember_batch` in steps, keeping only the rows it writes (not
    the purchases, which would otherwise live, and be traversed by the garbage collector,
    until the batch ends)."""

    __slots__ = ("_fresh", "_last", "_ledger", "_newer", "_newest_ts", "_older",
                 "_repartitioned", "_rules", "_seen", "_window")

    def __init__(self, ledger: Ledger, rules: LoyaltyRules, *,
                 repartitioned: bool = False) -> None:
        assert not ledger.held, "held returns: remember_purchase, one at a time"
        self._ledger = ledger
        self._newer, self._older = layers(ledger.bought)
        self._repartitioned = repartitioned
        self._seen = self._last = ledger.last_rp if repartitioned else ledger.last_offset
        self._newest_ts = ledger.newest_ts
        self._rules = rules
        self._window = rules.return_window_s  # read for each purchase: kept at hand
        #: joined to the rows in one step at the end: no copy per insert
        self._fresh: dict[str, BoughtRow] = {}

    def add(self, offset: int, purchase: Purchase, free: bool) -> bool:
        """Remember ``purchase`` (at ``offset``, with a ``purchase_id``; ``free``: a free
        coffee, counted at 0); whether the ledger had not seen it yet."""
        if offset <= self._seen:
            return False
        pid = purchase.purchase_id
        assert pid is not None
        row = self._fresh.get(pid)
        if row is None:
            row = self._newer.get(pid)
            if row is None:
                row = self._older.get(pid)
        if row is None or row[0] < self._newest_ts - self._window:
            self._fresh[pid] = (purchase.ts, sys.intern(purchase.product_id),
                                0 if free else purchase.price_cents, ())
        if purchase.ts > self._newest_ts:
            self._newest_ts = purchase.ts
        self._last = offset
        return True

    def finish(self) -> tuple[Ledger, Mapping[str, BoughtRow]]:
        """The ledger after the purchases added, and the rows they wrote (by purchase id)."""
        ledger, last, fresh = self._ledger, self._last, self._fresh
        if last == self._seen:
            return ledger, fresh
        repartitioned = self._repartitioned
        updated, expired = _expire(Ledger(
            plus_rows(ledger.bought, fresh),  # shares the rows it can: no copy per batch
            (), self._newest_ts, ledger.rejected,
            ledger.last_offset if repartitioned else last,
            last if repartitioned else ledger.last_rp, ledger.last_ret, ledger.last_ret_rp,
            ledger.given_up), self._rules)
        assert not expired
        return updated, fresh


def remember_batch(
    ledger: Ledger, purchases: Sequence[tuple[int, Purchase, bool]],
    rules: LoyaltyRules = LoyaltyRules(), *, repartitioned: bool = False,
) -> tuple[Ledger, Mapping[str, BoughtRow]]:
    """:func:`remember_purchases`, and the rows it wrote (by purchase id): what a writer
    storing the ledger by day has to add, unless rows were also dropped."""
    batch = LedgerBatch(ledger, rules, repartitioned=repartitioned)
    for offset, purchase, free in purchases:
        batch.add(offset, purchase, free)
    return batch.finish()


def remember_purchase(
    purchase: Purchase, offset: int, out: Outcome, spend: Spend, ledger: Ledger,
    catalogue: Catalogue, rules: LoyaltyRules = LoyaltyRules(), *,
    repartitioned: bool = False,
) -> ReturnOutcome:
    """The second half of :func:`apply_purchase_returnable`: ``out`` is what
    :func:`core.loyalty.apply_purchase` made of the purchase (``spend``: the record before)."""
    pid = purchase.purchase_id
    if pid is None:
        return ReturnOutcome(out.spend, out.stamps, out.basket, None, out.events)
    seen = ledger.last_rp if repartitioned else ledger.last_offset
    new_ledger: Ledger | None = None
    expired: tuple[tuple[Held, str], ...] = ()
    refused: list[tuple[Held, str]] = []
    if offset > seen:
        newest_ts = max(ledger.newest_ts, purchase.ts)
        row = ledger.bought.get(pid)
        if row is not None and row[0] >= ledger.newest_ts - rules.return_window_s:
            bought = Bought.of(row)  # a purchase_id seen before: kept as it is
        elif not ledger.held:  # the usual case: a new purchase, no return waiting for it
            remembered = dict(ledger.bought)
            remembered[pid] = (purchase.ts, sys.intern(purchase.product_id),
                               0 if out.free else purchase.price_cents, ())
            new_ledger, expired = _expire(Ledger(
                remembered, (), newest_ts, ledger.rejected,
                ledger.last_offset if repartitioned else offset,
                offset if repartitioned else ledger.last_rp, ledger.last_ret,
                ledger.last_ret_rp, ledger.given_up), rules)
            return ReturnOutcome(out.spend, out.stamps, out.basket, new_ledger, out.events,
                                 None, expired)
        else:
            bought = Bought(purchase.ts, purchase.product_id,
                            0 if out.free else purchase.price_cents)
        for held in sorted((h for h in ledger.held if h.purchase_id == pid),
                           key=lambda h: h.offset) if ledger.held else ():
            if bought.returned:
                refused.append((held, f"purchase {pid!r} already returned"))
                continue
            refund, reason = _refund_for(bought, held.amount_cents, held.offset, True,
                                         catalogue)
            if refund is None:
                refused.append((held, reason or "refused"))
            else:
                bought = bought._replace(refunds=(*bought.refunds, refund))
        remembered = dict(ledger.bought)
        remembered[pid] = bought.row()
        new_ledger = _seen(ledger, offset, newest_ts, repartitioned)._replace(
            bought=remembered, held=tuple(h for h in ledger.held if h.purchase_id != pid))
        new_ledger, expired = _expire(new_ledger, rules)
        if refused:
            expired = (*refused, *expired)
        if expired:
            mark = -1 - offset if repartitioned else offset
            new_ledger = new_ledger._replace(given_up=(
                *new_ledger.given_up, *((mark, h, r) for h, r in expired))[-GIVEN_UP_KEPT:])
        ledger = new_ledger
    elif ledger.given_up:  # a redelivered purchase: the held returns it gave up, again
        mark = -1 - offset if repartitioned else offset
        expired = tuple((h, r) for m, h, r in ledger.given_up if m == mark)
    row = ledger.bought.get(pid)
    entry = None if row is None else Bought.of(row)
    if entry is None or not entry.refunds:  # the usual case: nothing held for it
        return ReturnOutcome(out.spend, out.stamps, out.basket, new_ledger, out.events,
                             None, expired)
    new_spend, new_stamps, new_basket = out.spend, out.stamps, out.basket
    events = list(out.events)
    if entry is not None:
        for refund in (r for r in entry.refunds if r.held):
            before = sum(r.cents for r in entry.refunds[:entry.refunds.index(refund)])
            new_spend, new_stamps, new_basket, more = _reverse(
                purchase.user_id, purchase.ts, entry, refund, before, new_spend, new_stamps,
                new_basket, catalogue, rules)
            if new_basket is not None:
                new_basket = _requalify(new_basket, new_spend or spend, catalogue, rules)
            events.extend(more)
    return ReturnOutcome(new_spend, new_stamps, new_basket, new_ledger, tuple(events),
                         None, expired)
