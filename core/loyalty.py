"""Per-customer loyalty state and how one purchase changes it.

State is split the way the recipe splits its tables: :class:`Spend` (``sales_totals``),
:class:`Stamps` (``caffeine_index``) and :class:`Basket` (the campaign tables). Each record
remembers the last source offset it applied, so a replayed event changes nothing
(exactly-once effects on top of at-least-once delivery).

Purchases priced from the catalogue stay *pending* while a late catalogue change could still
apply to them (``lateness_s`` of event time behind the customer's newest purchase); they are
priced as of their own event time whenever a total is read, and settled into exact cents once
outside that window. The result does not depend on the order in which the ``products`` and
``purchases`` topics are consumed, as long as a price change is not later than that window.
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from core.campaigns import (
    DEFAULT_CAMPAIGNS,
    Campaign,
    CampaignPlan,
    qualifying,
    watched_products,
)
from core.day_buckets import EMPTY_DAYS, DayBuckets
from core.money import cents_to_number
from core.pricing import PriceHistory, price_at
from core.rfm import RfmBoundaries, rfm_of
from core.stamps import StampCard, StampStatus, next_one_free, stamp_status
from core.tiers import CLIMBING, DAY_S, TierThresholds, day_of, tier_for, with_grace

#: A new customer's spend per watched product (read-only: records are values).
EMPTY_CENTS: Mapping[str, int] = MappingProxyType({})

#: Looks up a product's price history (empty when the product was never seen).
Catalogue = Callable[[str], PriceHistory]

TIER_CHANGED = "tier_changed"
FREE_COFFEE_READY = "free_coffee_ready"
CAMPAIGN_QUALIFIED = "campaign_qualified"
FREE_COFFEE_REDEEMED = "free_coffee_redeemed"
#: How many offsets of free purchases a stamps record remembers (to replay them alike).
FREE_KEPT = 8


@dataclass(frozen=True, slots=True)
class LoyaltyRules:
    """Everything configurable about the loyalty programme."""

    tiers: TierThresholds = TierThresholds()
    stamps: StampCard = StampCard()
    campaigns: tuple[Campaign, ...] = DEFAULT_CAMPAIGNS
    lateness_s: float = 86_400.0
    max_pending: int = 1_000
    #: How long (event time, behind the customer's newest purchase) a purchase can be returned.
    return_window_s: float = 30 * 86_400.0
    #: The stamp product bought when ``next_one_free`` is true is free (priced 0, announced
    #: as ``free_coffee_redeemed``); off: the recipe (the card only counts).
    free_coffee: bool = False
    #: The tier follows spend within the last N days of event time (0: lifetime, the recipe).
    tier_window_days: int = 0
    #: A downgrade takes effect only after the spend stayed below the tier this long.
    tier_grace_days: float = 0.0
    #: RFM scores and segment (``RFM``): ``None`` is off; else the configured boundaries
    #: (the worker may replace them with learnt ones: ``rfm_learn``).
    rfm: RfmBoundaries | None = None
    rfm_learn: bool = False
    rfm_refresh_s: float = 3_600.0
    #: Products whose spend campaigns need (derived from ``campaigns``).
    watched: frozenset[str] = field(init=False, repr=False, compare=False)
    #: Which campaigns a basket meets, remembered per set of products (``campaigns``).
    plan: CampaignPlan = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "watched", watched_products(self.campaigns))
        object.__setattr__(self, "plan", CampaignPlan(self.campaigns))


class Purchase(NamedTuple):
    """A validated purchase event."""

    user_id: str
    product_id: str
    ts: float
    price_cents: int | None = None
    purchase_id: str | None = None


#: A catalogue-priced purchase whose price may still be revised by a late price change:
#: ``(ts, product_id)``. A plain tuple, not a named one: the decoded record and the table's
#: JSON value share the same tuples, and the garbage collector stops tracking a plain tuple
#: of a float and a string at its first pass (a named tuple it traverses for as long as the
#: purchase is pending, in every collection of its generation).
Pending = tuple[float, str]


class Spend(NamedTuple):
    """Settled spend, pending purchases, and the tier last announced."""

    settled_cents: int = 0
    settled_unpriced: int = 0
    watched_cents: Mapping[str, int] = EMPTY_CENTS
    pending: tuple[Pending, ...] = ()
    purchases: int = 0
    newest_ts: float = 0.0
    tier: str = CLIMBING
    last_offset: int = -1
    #: The last offset applied from the topic's repartition topic (another offset space).
    last_rp: int = -1
    #: The last offset applied from the ``returns`` topic (a third offset space).
    last_ret: int = -1
    #: Settled cents per day of event time within the tier window (``TIER_WINDOW_DAYS``),
    #: packed (:mod:`core.day_buckets`).
    days: DayBuckets = EMPTY_DAYS
    #: Since when (event time) spend has been below the tier held in grace; -1: it is not.
    below_since: float = -1.0
    #: The last offset applied from the ``returns`` topic's repartition topic (a fourth).
    last_ret_rp: int = -1

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form for the changelog."""
        return {
            **({"last_ret": self.last_ret} if self.last_ret >= 0 else {}),
            **({"day_cents": self.days.packed} if self.days else {}),
            **({"below_since": self.below_since} if self.below_since >= 0 else {}),
            **({"last_ret_rp": self.last_ret_rp} if self.last_ret_rp >= 0 else {}),
            "settled_cents": self.settled_cents,
            "settled_unpriced": self.settled_unpriced,
            "watched_cents": dict(self.watched_cents),
            # the decoded record's own tuples (see Pending), written as JSON arrays
            "pending": self.pending,
            "purchases": self.purchases,
            "newest_ts": self.newest_ts,
            "tier": self.tier,
            "last_offset": self.last_offset,
            **({"last_rp": self.last_rp} if self.last_rp >= 0 else {}),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Spend:
        """Inverse of :meth:`to_json`; ``None`` is a new customer."""
        if not raw:
            return cls()
        return cls(
            settled_cents=int(raw["settled_cents"]),
            settled_unpriced=int(raw["settled_unpriced"]),
            watched_cents={str(k): int(v) for k, v in raw["watched_cents"].items()},
            pending=tuple((float(ts), sys.intern(str(pid))) for ts, pid in raw["pending"]),
            purchases=int(raw["purchases"]),
            newest_ts=float(raw["newest_ts"]),
            tier=str(raw["tier"]),
            last_offset=int(raw["last_offset"]),
            last_rp=int(raw.get("last_rp", -1)),
            last_ret=int(raw.get("last_ret", -1)),
            days=_days_from_json(raw),
            below_since=float(raw.get("below_since", -1.0)),
            last_ret_rp=int(raw.get("last_ret_rp", -1)),
        )


def _days_from_json(raw: Mapping[str, Any]) -> DayBuckets:
    """The buckets of a spend record: packed (``day_cents``, written since the packing) or
    a ``{"day": cents}`` object (``days``, as written before): both are read."""
    packed = raw.get("day_cents")
    if packed is not None:
        return DayBuckets(str(packed))
    old = raw.get("days")
    return DayBuckets.of([(int(d), int(c)) for d, c in old.items()]) if old else EMPTY_DAYS


class Stamps(NamedTuple):
    """Stamped purchases so far."""

    total: int = 0
    last_offset: int = -1
    last_rp: int = -1
    last_ret: int = -1
    #: Offsets (``-1 - offset`` for the repartition topic's) of the latest free purchases.
    free: tuple[int, ...] = ()
    #: Free purchases redeemed so far.
    redeemed: int = 0
    last_ret_rp: int = -1

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form for the changelog."""
        return {"total": self.total, "last_offset": self.last_offset,
                **({"last_rp": self.last_rp} if self.last_rp >= 0 else {}),
                **({"last_ret": self.last_ret} if self.last_ret >= 0 else {}),
                **({"last_ret_rp": self.last_ret_rp} if self.last_ret_rp >= 0 else {}),
                **({"free": list(self.free), "redeemed": self.redeemed} if self.redeemed
                   else {})}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Stamps:
        """Inverse of :meth:`to_json`; ``None`` is a new customer."""
        if not raw:
            return cls()
        return cls(total=int(raw["total"]), last_offset=int(raw["last_offset"]),
                   last_rp=int(raw.get("last_rp", -1)), last_ret=int(raw.get("last_ret", -1)),
                   free=tuple(int(o) for o in raw.get("free", ())),
                   redeemed=int(raw.get("redeemed", 0)),
                   last_ret_rp=int(raw.get("last_ret_rp", -1)))


class Basket(NamedTuple):
    """Watched products bought, and campaigns already announced as qualified."""

    products: frozenset[str] = frozenset()
    announced: frozenset[str] = frozenset()
    last_offset: int = -1
    last_rp: int = -1
    last_ret: int = -1
    #: Purchases per watched product beyond the first (a return takes the product out of the
    #: basket only when none is left; kept sparse so the record is as small as before).
    extra: Mapping[str, int] = EMPTY_CENTS
    last_ret_rp: int = -1

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form for the changelog."""
        return {
            "products": tuple(sorted(self.products)),  # tuples: see Spend.to_json
            "announced": tuple(sorted(self.announced)),
            "last_offset": self.last_offset,
            **({"last_rp": self.last_rp} if self.last_rp >= 0 else {}),
            **({"last_ret": self.last_ret} if self.last_ret >= 0 else {}),
            **({"last_ret_rp": self.last_ret_rp} if self.last_ret_rp >= 0 else {}),
            **({"extra": dict(self.extra)} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Basket:
        """Inverse of :meth:`to_json`; ``None`` is a new customer."""
        if not raw:
            return cls()
        return cls(
            products=frozenset(raw["products"]),
            announced=frozenset(raw["announced"]),
            last_offset=int(raw["last_offset"]),
            last_rp=int(raw.get("last_rp", -1)),
            last_ret=int(raw.get("last_ret", -1)),
            extra={str(k): int(v) for k, v in raw.get("extra", {}).items()},
            last_ret_rp=int(raw.get("last_ret_rp", -1)),
        )


class LoyaltyEvent(NamedTuple):
    """A change that matters to the customer (goes to ``loyalty.events``)."""

    user_id: str
    type: str
    details: Mapping[str, Any]
    ts: float


class SpendView(NamedTuple):
    """Spend as of now: settled plus pending purchases priced at their event time."""

    total_cents: int
    unpriced: int
    by_product_cents: Mapping[str, int]
    tier: str


class Outcome(NamedTuple):
    """The records after one purchase (``None`` where a record did not change) and events."""

    spend: Spend | None
    stamps: Stamps | None
    basket: Basket | None
    events: tuple[LoyaltyEvent, ...]
    #: The purchase was a free coffee (counted at 0 cents).
    free: bool = False
    #: What the new spend record's pending purchases come to, priced now (``None``: spend
    #: unchanged), for the caller to pass with the customer's next purchase while the
    #: catalogue has not changed (``pending_cents`` of :func:`apply_purchase`).
    pending_cents: int | None = None


def is_free(purchase: Purchase, offset: int, stamps: Stamps, rules: LoyaltyRules,
            repartitioned: bool = False) -> bool:
    """Whether this purchase is a free coffee: ``next_one_free`` was true before it. Decided
    from the stamps record as it was before the purchase, or, when that record already holds
    the purchase (a replay), from the free offsets it remembers."""
    if not rules.free_coffee or purchase.product_id != rules.stamps.product_id:
        return False
    mark = -1 - offset if repartitioned else offset
    seen = stamps.last_rp if repartitioned else stamps.last_offset
    if offset <= seen:
        return mark in stamps.free
    return next_one_free(stamps.total, rules.stamps)


def _price_pending(
    pending: Sequence[Pending], catalogue: Catalogue, watched: frozenset[str] = frozenset(),
    by_product: dict[str, int] | None = None, by_day: dict[int, int] | None = None,
) -> tuple[int, int]:
    """Cents and unpriced count of ``pending`` priced now; ``watched`` products' cents are
    added to ``by_product`` and each item's cents to its day in ``by_day``, when given."""
    cents_total = 0
    unpriced = 0
    for ts, product_id in pending:
        cents = price_at(catalogue(product_id), ts)
        if cents is None:
            unpriced += 1
            continue
        cents_total += cents
        if by_product is not None and product_id in watched:
            by_product[product_id] = by_product.get(product_id, 0) + cents
        if by_day is not None:
            day = int(ts // DAY_S)
            by_day[day] = by_day.get(day, 0) + cents
    return cents_total, unpriced


def window_cents(days: DayBuckets, pending: Sequence[Pending], newest_ts: float,
                 catalogue: Catalogue, rules: LoyaltyRules) -> int:
    """Spend within the tier window ending on the day of ``newest_ts``: the daily buckets of
    settled spend and the pending purchases priced now."""
    first = day_of(newest_ts) - rules.tier_window_days + 1
    cents = days.since(first)
    for ts, product_id in pending:
        if day_of(ts) >= first:
            cents += price_at(catalogue(product_id), ts) or 0
    return cents


def tier_now(spend: Spend, total_cents: int, catalogue: Catalogue,
             rules: LoyaltyRules) -> tuple[str, float]:
    """The tier in effect for ``spend`` (whose lifetime total is ``total_cents``) and since
    when spend has been below it in grace (-1: not in grace). Lifetime (the recipe): the
    tier of the total. With ``tier_window_days``: the tier of the window's spend, a downgrade
    held for ``tier_grace_days`` (:func:`core.tiers.with_grace`)."""
    if rules.tier_window_days <= 0:
        return tier_for(total_cents, rules.tiers), -1.0
    computed = tier_for(window_cents(spend.days, spend.pending, spend.newest_ts, catalogue,
                                     rules), rules.tiers)
    return with_grace(spend.tier, spend.below_since, computed, spend.newest_ts,
                      rules.tier_grace_days * DAY_S)


def view_spend(spend: Spend, catalogue: Catalogue, rules: LoyaltyRules) -> SpendView:
    """Total, unpriced count, spend on watched products and tier, pricing pending purchases now."""
    by_product = dict(spend.watched_cents)
    cents, unpriced = _price_pending(spend.pending, catalogue, rules.watched, by_product)
    total = spend.settled_cents + cents
    tier = (tier_for(total, rules.tiers) if rules.tier_window_days <= 0
            else tier_now(spend, total, catalogue, rules)[0])
    return SpendView(total, spend.settled_unpriced + unpriced, by_product, tier)


class SpendByProduct(Mapping[str, int]):
    """Spend per watched product, settled and pending (priced now), as :func:`view_spend`
    reports it, worked out when first read: most campaign checks never read it (no spend
    threshold, or a required or excluded product decides), and pricing every pending purchase
    for each purchase of a watched product was most of what such a purchase cost."""

    __slots__ = ("_catalogue", "_cents", "_spend", "_watched")

    def __init__(self, spend: Spend, catalogue: Catalogue, watched: frozenset[str]) -> None:
        self._spend = spend
        self._catalogue = catalogue
        self._watched = watched
        self._cents: dict[str, int] | None = None

    def _priced(self) -> dict[str, int]:
        if self._cents is None:
            cents = dict(self._spend.watched_cents)
            _price_pending(self._spend.pending, self._catalogue, self._watched, cents)
            self._cents = cents
        return self._cents

    def __getitem__(self, product_id: str) -> int:
        return self._priced()[product_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._priced())

    def __len__(self) -> int:
        return len(self._priced())


def _settled_count(pending: Sequence[Pending], horizon: float, max_pending: int) -> int:
    """How many of the oldest pending purchases are settled: those before ``horizon`` and
    those over the cap (``pending`` is sorted by time, so both are a prefix)."""
    cut = max(len(pending) - max_pending, 0)
    while cut < len(pending) and pending[cut][0] < horizon:
        cut += 1
    return cut


def _with_pending(pending: tuple[Pending, ...], item: Pending) -> tuple[Pending, ...]:
    """``pending`` with ``item`` inserted in (time, product) order."""
    if not pending or pending[-1] <= item:
        return (*pending, item)  # the usual case: purchases arrive roughly in time order
    ordered = list(pending)
    bisect.insort(ordered, item)
    return tuple(ordered)


def _next_spend(
    spend: Spend, purchase: Purchase, offset: int, catalogue: Catalogue, rules: LoyaltyRules,
    repartitioned: bool = False,
    pending_cents: int | None = None,
) -> tuple[Spend, int, int]:
    """``spend`` after ``purchase`` with purchases out of the lateness window (or over the cap)
    settled, the new total spend with pending purchases priced now, and what the pending
    purchases come to.

    Each pending purchase is priced once. With ``pending_cents`` (what ``spend.pending`` comes
    to, priced now) only the purchase and those it settles are priced: a customer's purchases
    within the lateness window are no longer all priced again for each new one.
    """
    watched = rules.watched
    settled = spend.settled_cents
    settled_unpriced = spend.settled_unpriced
    watched_cents = spend.watched_cents
    pending = spend.pending
    if purchase.price_cents is None:
        pending = _with_pending(pending, (purchase.ts, purchase.product_id))
        if pending_cents is not None:
            pending_cents += price_at(catalogue(purchase.product_id), purchase.ts) or 0
    else:
        settled += purchase.price_cents
        if purchase.product_id in watched:
            watched_cents = dict(watched_cents)
            watched_cents[purchase.product_id] = (
                watched_cents.get(purchase.product_id, 0) + purchase.price_cents
            )
    newest = max(spend.newest_ts, purchase.ts)
    cut = _settled_count(pending, newest - rules.lateness_s, rules.max_pending)
    days = spend.days
    added: dict[int, int] | None = None
    if rules.tier_window_days > 0:
        added = {}
        if purchase.price_cents is not None:
            added[int(purchase.ts // DAY_S)] = purchase.price_cents
    if cut:
        settling = dict(watched_cents)
        cents, unpriced = _price_pending(pending[:cut], catalogue, watched, settling, added)
        watched_cents = settling
        if pending_cents is not None:
            pending_cents -= cents
        settled += cents
        settled_unpriced += unpriced
        pending = pending[cut:]
    first = 0
    if added is not None:
        first = int(newest // DAY_S) - rules.tier_window_days + 1
        days = days.merged(added, first)
    if pending_cents is None:
        cents, _ = _price_pending(pending, catalogue)
    else:
        cents = pending_cents
    total = settled + cents
    last_offset, last_rp = (spend.last_offset, offset) if repartitioned else (offset,
                                                                             spend.last_rp)
    if rules.tier_window_days <= 0:
        return Spend(settled, settled_unpriced, watched_cents, pending, spend.purchases + 1,
                     newest, tier_for(total, rules.tiers), last_offset, last_rp,
                     spend.last_ret, days, spend.below_since, spend.last_ret_rp), total, cents
    in_window = (days.since(first) + cents if not pending or pending[0][0] // DAY_S >= first
                 else window_cents(days, pending, newest, catalogue, rules))  # all pending in
    computed = tier_for(in_window, rules.tiers)
    tier, below_since = with_grace(spend.tier, spend.below_since, computed, newest,
                                   rules.tier_grace_days * DAY_S)
    return Spend(settled, settled_unpriced, watched_cents, pending, spend.purchases + 1, newest,
                 tier, last_offset, last_rp, spend.last_ret, days, below_since,
                 spend.last_ret_rp), total, cents


def apply_purchase(
    purchase: Purchase,
    offset: int,
    spend: Spend,
    stamps: Stamps,
    basket: Basket,
    catalogue: Catalogue,
    rules: LoyaltyRules = LoyaltyRules(),
    *,
    repartitioned: bool = False,
    pending_cents: int | None = None,
) -> Outcome:
    """Apply one purchase at source ``offset`` to a customer's records.

    A record whose ``last_offset`` is at or past ``offset`` already holds this purchase and is
    left alone, so replays after a crash never count twice. A purchase read from the
    repartition topic (``repartitioned``) has an offset of that topic: it is compared with
    and stored as ``last_rp`` instead, the two topics' offsets being unrelated.

    ``pending_cents``: what ``spend.pending`` comes to with ``catalogue`` as it is now (the
    ``pending_cents`` of the outcome of the customer's previous purchase, while no price
    changed since), so those purchases are not priced again; ``None``: they are.
    """
    return _apply_purchase(purchase, offset, spend, stamps, basket, catalogue, rules,
                           repartitioned, pending_cents)


def _apply_purchase(
    purchase: Purchase,
    offset: int,
    spend: Spend,
    stamps: Stamps,
    basket: Basket,
    catalogue: Catalogue,
    rules: LoyaltyRules,
    repartitioned: bool,
    pending_cents: int | None = None,
) -> Outcome:
    # Which offset stream this record belongs to: the input topic's (last_offset) or the
    # repartition topic's (last_rp); the other one is carried over unchanged.
    if repartitioned:
        seen_spend, seen_stamps, seen_basket = spend.last_rp, stamps.last_rp, basket.last_rp
    else:
        seen_spend, seen_stamps, seen_basket = (spend.last_offset, stamps.last_offset,
                                                basket.last_offset)
    events: list[LoyaltyEvent] = []
    new_spend: Spend | None = None
    new_stamps: Stamps | None = None
    new_basket: Basket | None = None
    product_id = purchase.product_id
    free = is_free(purchase, offset, stamps, rules, repartitioned)
    if free:
        purchase = purchase._replace(price_cents=0)
    is_watched = product_id in rules.watched and offset > seen_basket

    if offset > seen_spend:
        new_spend, total, pending_cents = _next_spend(
            spend, purchase, offset, catalogue, rules, repartitioned, pending_cents)
        if new_spend.tier != spend.tier:
            events.append(LoyaltyEvent(purchase.user_id, TIER_CHANGED, {
                "from": spend.tier, "to": new_spend.tier, "total_cents": total,
            }, purchase.ts))

    if product_id == rules.stamps.product_id and offset > seen_stamps:
        new_stamps = (Stamps(stamps.total + 1, stamps.last_offset, offset, stamps.last_ret,
                             stamps.free, stamps.redeemed, stamps.last_ret_rp)
                      if repartitioned
                      else Stamps(stamps.total + 1, offset, stamps.last_rp, stamps.last_ret,
                                  stamps.free, stamps.redeemed, stamps.last_ret_rp))
        if free:
            new_stamps = new_stamps._replace(
                free=(*stamps.free, -1 - offset if repartitioned else offset)[-FREE_KEPT:],
                redeemed=stamps.redeemed + 1)
            events.append(LoyaltyEvent(purchase.user_id, FREE_COFFEE_REDEEMED, {
                "product_id": product_id, "total": new_stamps.total,
                "purchase_id": purchase.purchase_id,
            }, purchase.ts))
        if next_one_free(new_stamps.total, rules.stamps):
            events.append(LoyaltyEvent(purchase.user_id, FREE_COFFEE_READY, {
                "product_id": product_id, "total": new_stamps.total,
            }, purchase.ts))

    if is_watched:
        products = basket.products
        extra = basket.extra
        if product_id not in products:
            products = products | {product_id}
        else:
            extra = {**extra, product_id: extra.get(product_id, 0) + 1}
        spent = SpendByProduct(spend if new_spend is None else new_spend, catalogue,
                               rules.watched)
        announced = rules.plan.met_names(products, spent)
        if not announced <= basket.announced:  # rare: each campaign is announced once
            met = qualifying(rules.campaigns, products, spent)
            for name in sorted(announced - basket.announced):
                events.append(LoyaltyEvent(purchase.user_id, CAMPAIGN_QUALIFIED, {
                    "campaign": name, "products": met[name],
                }, purchase.ts))
        new_basket = (Basket(products, announced, basket.last_offset, offset, basket.last_ret,
                             extra, basket.last_ret_rp) if repartitioned
                      else Basket(products, announced, offset, basket.last_rp, basket.last_ret,
                                  extra, basket.last_ret_rp))

    return Outcome(new_spend, new_stamps, new_basket, tuple(events), free,
                   pending_cents if new_spend is not None else None)


def coffee_status(stamps: Stamps, rules: LoyaltyRules) -> StampStatus:
    """The stamp card as the recipe's ``caffeine_index`` shows it."""
    return stamp_status(stamps.total, rules.stamps)


def campaigns_met(
    basket: Basket, spend: Spend, catalogue: Catalogue, rules: LoyaltyRules
) -> dict[str, list[str]]:
    """Campaigns the customer meets now, each with the sorted watched products bought."""
    return qualifying(rules.campaigns, basket.products,
                      SpendByProduct(spend, catalogue, rules.watched))


def replay(
    purchases: Iterable[Purchase], catalogue: Catalogue, rules: LoyaltyRules = LoyaltyRules()
) -> tuple[Spend, Stamps, Basket, list[LoyaltyEvent]]:
    """Apply purchases of one customer in order (offsets 0, 1, ...): a reference model."""
    spend, stamps, basket = Spend(), Stamps(), Basket()
    events: list[LoyaltyEvent] = []
    for offset, purchase in enumerate(purchases):
        out = apply_purchase(purchase, offset, spend, stamps, basket, catalogue, rules)
        spend = out.spend or spend
        stamps = out.stamps or stamps
        basket = out.basket or basket
        events.extend(out.events)
    return spend, stamps, basket, events


def customer_document(
    user_id: str, spend: Spend, stamps: Stamps, basket: Basket, catalogue: Catalogue,
    rules: LoyaltyRules, *, now: float | None = None, rfm_cuts: RfmBoundaries | None = None,
) -> dict[str, Any]:
    """The web view's answer for a customer (DESIGN section 5), from their records; with RFM
    on, also ``rfm`` at ``now`` (default: the customer's newest purchase), scored with
    ``rfm_cuts`` (default: the configured boundaries)."""
    view = view_spend(spend, catalogue, rules)
    status = coffee_status(stamps, rules)
    extra: dict[str, Any] = {}
    if rules.rfm is not None:
        scores = rfm_of(spend.newest_ts, spend.purchases, view.total_cents,
                        spend.newest_ts if now is None else now, rfm_cuts or rules.rfm)
        extra["rfm"] = scores._asdict()
    return {
        "user_id": user_id,
        "total": cents_to_number(view.total_cents),
        "reward_level": view.tier,
        "unpriced_purchases": view.unpriced,
        "coffee": {
            "total": status.total,
            "sequence": status.sequence,
            "next_one_free": status.next_one_free,
        },
        "promotions": campaigns_met(basket, spend, catalogue, rules),
        **extra,
    }


def reference_documents(
    purchases: Iterable[Purchase], catalogue: Catalogue, rules: LoyaltyRules = LoyaltyRules()
) -> dict[str, dict[str, Any]]:
    """Every customer's expected document, from the input log (each customer's purchases in
    log order, the final catalogue): the reference that tests and fault runs compare with."""
    by_user: dict[str, list[Purchase]] = {}
    for purchase in purchases:
        by_user.setdefault(purchase.user_id, []).append(purchase)
    documents = {}
    for user_id, own in by_user.items():
        spend, stamps, basket, _ = replay(own, catalogue, rules)
        documents[user_id] = customer_document(user_id, spend, stamps, basket, catalogue, rules)
    return documents
