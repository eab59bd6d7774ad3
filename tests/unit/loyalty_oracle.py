"""The loyalty rules written again, the plain way, from DESIGN section 3 and the README: the
oracle that :mod:`core.loyalty`'s single-pass code must agree with.

Nothing here comes from ``core/`` (nor ``app/``, ``tables/``, ``agents/``): a rule copied into
both sides would agree with itself whatever it says. ``test_loyalty_oracle.py`` checks that
this module imports only the standard library.

The model differs from core's on purpose. Core keeps running sums (settled cents, spend per
watched product) and a sorted tuple of pending purchases; this oracle keeps *every* purchase
applied, each either priced for good (its own price, or settled from the catalogue once it
fell out of the lateness window or over the pending cap) or pending (priced from the
catalogue whenever a total is read), and adds everything up again on each read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

TIER_CHANGED = "tier_changed"
FREE_COFFEE_READY = "free_coffee_ready"
CAMPAIGN_QUALIFIED = "campaign_qualified"
CLIMBING, BRONZE, SILVER, GOLD = "CLIMBING", "BRONZE", "SILVER", "GOLD"


@dataclass(frozen=True)
class CampaignRule:
    """A watched product set, products all required, products excluded, and a spend over the
    watched products that must be *exceeded* (``None``: no minimum)."""

    name: str
    watch: frozenset[str]
    require: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()
    min_spend_cents: int | None = None


#: The recipe's campaigns, as DESIGN section 3 states them.
RECIPE_CAMPAIGNS = (
    CampaignRule("french_poodle", frozenset({"dog", "beret"}), frozenset({"dog", "beret"})),
    CampaignRule("loose_leaf", frozenset({"coffee", "tea"}), frozenset({"coffee"}),
                 frozenset({"tea"}), 2_000),
)


@dataclass(frozen=True)
class Rules:
    """The programme: tier thresholds in cents (> 400 GOLD, > 300 SILVER, > 200 BRONZE),
    the stamp card (five coffees bought, the sixth free), campaigns, the price lateness
    window (``price_lateness_s``, one day) and the cap on pending purchases."""

    gold_cents: int = 40_000
    silver_cents: int = 30_000
    bronze_cents: int = 20_000
    stamp_product: str = "coffee"
    stamp_cycle: int = 6
    campaigns: tuple[CampaignRule, ...] = RECIPE_CAMPAIGNS
    lateness_s: float = 86_400.0
    max_pending: int = 1_000

    def watched(self) -> set[str]:
        return {product for campaign in self.campaigns for product in campaign.watch}


def tier_for(total_cents: int, rules: Rules = Rules()) -> str:
    """Each threshold must be exceeded, not just reached."""
    if total_cents > rules.gold_cents:
        return GOLD
    if total_cents > rules.silver_cents:
        return SILVER
    if total_cents > rules.bronze_cents:
        return BRONZE
    return CLIMBING


def stamp_status(total: int, rules: Rules = Rules()) -> tuple[int, int, bool]:
    """``(total, sequence, next_one_free)``: ``sequence = total % cycle``, and the next one is
    free when ``cycle - 1`` were bought in the current cycle."""
    sequence = total % rules.stamp_cycle
    return total, sequence, sequence == rules.stamp_cycle - 1


def qualifying(campaigns: Iterable[CampaignRule], bought: Iterable[str],
               spend_cents: Mapping[str, int]) -> dict[str, list[str]]:
    """Campaigns met, each with the sorted watched products bought."""
    basket = set(bought)
    met = {}
    for campaign in campaigns:
        if not campaign.require <= basket or campaign.exclude & basket:
            continue
        if campaign.min_spend_cents is not None:
            spent = sum(spend_cents.get(product, 0) for product in campaign.watch)
            if not spent > campaign.min_spend_cents:
                continue
        met[campaign.name] = sorted(campaign.watch & basket)
    return met


class Catalogue:
    """Every price event received, per product, in arrival order."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[float, int]]] = {}

    def add(self, product_id: str, ts: float, cents: int) -> None:
        self.events.setdefault(product_id, []).append((ts, cents))

    def price_at(self, product_id: str, ts: float) -> int | None:
        """The price in force at ``ts``: of the events at or before ``ts``, the one with the
        latest time (two events for the same time: the one received last); before the first
        known price, the earliest known one; ``None`` for a product never priced."""
        events = self.events.get(product_id, [])
        if not events:
            return None
        known = [e for e in events if e[0] <= ts] or [
            e for e in events if e[0] == min(t for t, _ in events)]
        latest = max(t for t, _ in known)
        return [cents for t, cents in known if t == latest][-1]


@dataclass
class Line:
    """One purchase applied: ``final`` once its price is fixed (``cents`` ``None``: unpriced)."""

    ts: float
    product_id: str
    cents: int | None
    final: bool


@dataclass
class Customer:
    """Everything one customer bought, and the offsets last applied to each record."""

    user_id: str
    lines: list[Line] = field(default_factory=list)
    newest_ts: float = 0.0
    tier: str = CLIMBING
    spend_offset: int = -1
    coffees: int = 0
    stamps_offset: int = -1
    bought: set[str] = field(default_factory=set)
    announced: set[str] = field(default_factory=set)
    basket_offset: int = -1

    def pending(self) -> list[Line]:
        return sorted((line for line in self.lines if not line.final),
                      key=lambda line: (line.ts, line.product_id))

    def priced(self, catalogue: Catalogue, rules: Rules) -> tuple[int, int, dict[str, int]]:
        """Total cents, unpriced purchases and cents per watched product, pending purchases
        priced as of their own time with the catalogue as it is now."""
        total, unpriced = 0, 0
        by_product: dict[str, int] = {}
        watched = rules.watched()
        for line in self.lines:
            cents = line.cents if line.final else catalogue.price_at(line.product_id, line.ts)
            if cents is None:
                unpriced += 1
                continue
            total += cents
            if line.product_id in watched:
                by_product[line.product_id] = by_product.get(line.product_id, 0) + cents
        return total, unpriced, by_product

    def settle(self, catalogue: Catalogue, rules: Rules) -> None:
        """Fix the price of pending purchases older than the window behind the newest purchase,
        and of the oldest ones beyond the cap."""
        pending = self.pending()
        for index, line in enumerate(pending):
            if (line.ts < self.newest_ts - rules.lateness_s
                    or index < len(pending) - rules.max_pending):
                line.cents = catalogue.price_at(line.product_id, line.ts)
                line.final = True

    def apply(self, product_id: str, ts: float, price_cents: int | None, offset: int,
              catalogue: Catalogue, rules: Rules) -> tuple[tuple[bool, bool, bool], list[Any]]:
        """One purchase at source ``offset``: which records (spend, stamps, basket) it changed,
        and the loyalty events ``(user_id, type, details, ts)`` it emits. A record that already
        applied ``offset`` (a replay) is left alone."""
        events: list[Any] = []
        changed = [False, False, False]
        if offset > self.spend_offset:
            changed[0] = True
            self.lines.append(Line(ts, product_id, price_cents, price_cents is not None))
            self.newest_ts = max(self.newest_ts, ts)
            self.spend_offset = offset
            self.settle(catalogue, rules)
            total = self.priced(catalogue, rules)[0]
            tier = tier_for(total, rules)
            if tier != self.tier:
                events.append((self.user_id, TIER_CHANGED,
                               {"from": self.tier, "to": tier, "total_cents": total}, ts))
                self.tier = tier
        if product_id == rules.stamp_product and offset > self.stamps_offset:
            changed[1] = True
            self.coffees += 1
            self.stamps_offset = offset
            if stamp_status(self.coffees, rules)[2]:
                events.append((self.user_id, FREE_COFFEE_READY,
                               {"product_id": product_id, "total": self.coffees}, ts))
        if product_id in rules.watched() and offset > self.basket_offset:
            changed[2] = True
            self.bought.add(product_id)
            self.basket_offset = offset
            met = qualifying(rules.campaigns, self.bought, self.priced(catalogue, rules)[2])
            for name in sorted(set(met) - self.announced):
                events.append((self.user_id, CAMPAIGN_QUALIFIED,
                               {"campaign": name, "products": met[name]}, ts))
            self.announced = set(met)  # the campaigns met now (one unmet again may return)
        return (changed[0], changed[1], changed[2]), events

    def spend_record(self, rules: Rules) -> tuple[Any, ...]:
        """The spend record core keeps: settled cents, settled unpriced, settled cents per
        watched product, pending ``(ts, product)`` in order, purchases, newest time, tier
        announced and last offset."""
        settled = [line for line in self.lines if line.final]
        watched: dict[str, int] = {}
        for line in settled:
            if line.cents is not None and line.product_id in rules.watched():
                watched[line.product_id] = watched.get(line.product_id, 0) + line.cents
        return (sum(line.cents for line in settled if line.cents is not None),
                sum(1 for line in settled if line.cents is None), watched,
                tuple((line.ts, line.product_id) for line in self.pending()),
                len(self.lines), self.newest_ts, self.tier, self.spend_offset)

    def stamps_record(self) -> tuple[int, int]:
        return self.coffees, self.stamps_offset

    def basket_record(self) -> tuple[set[str], set[str], int]:
        return self.bought, self.announced, self.basket_offset
