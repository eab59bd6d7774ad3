"""The loyalty rules written the plain way (settle, then price every pending purchase, each
step its own pass): the oracle that :mod:`core.loyalty`'s single-pass code must agree with."""

from __future__ import annotations

from core.campaigns import qualifying
from core.loyalty import (
    CAMPAIGN_QUALIFIED,
    FREE_COFFEE_READY,
    TIER_CHANGED,
    Basket,
    Catalogue,
    LoyaltyEvent,
    LoyaltyRules,
    Outcome,
    Pending,
    Purchase,
    Spend,
    Stamps,
)
from core.pricing import price_at
from core.stamps import stamp_status
from core.tiers import tier_for


def priced(spend: Spend, catalogue: Catalogue) -> tuple[int, int, dict[str, int]]:
    """Total, unpriced count and cents per product, every pending purchase priced now."""
    total, unpriced = spend.settled_cents, spend.settled_unpriced
    by_product = dict(spend.watched_cents)
    for item in spend.pending:
        cents = price_at(catalogue(item.product_id), item.ts)
        if cents is None:
            unpriced += 1
        else:
            total += cents
            by_product[item.product_id] = by_product.get(item.product_id, 0) + cents
    return total, unpriced, by_product


def apply(purchase: Purchase, offset: int, spend: Spend, stamps: Stamps, basket: Basket,
          catalogue: Catalogue, rules: LoyaltyRules) -> Outcome:
    """One purchase, as DESIGN section 3 states the rules."""
    events: list[LoyaltyEvent] = []
    new_spend = new_stamps = new_basket = None
    watched_now = None
    if offset > spend.last_offset:
        settled, unpriced = spend.settled_cents, spend.settled_unpriced
        watched = dict(spend.watched_cents)
        pending = list(spend.pending)
        if purchase.price_cents is None:
            pending = sorted([*pending, Pending(purchase.ts, purchase.product_id)])
        else:
            settled += purchase.price_cents
            if purchase.product_id in rules.watched:
                watched[purchase.product_id] = (
                    watched.get(purchase.product_id, 0) + purchase.price_cents)
        newest = max(spend.newest_ts, purchase.ts)
        keep = []
        for index, item in enumerate(pending):
            if item.ts >= newest - rules.lateness_s and index >= len(pending) - rules.max_pending:
                keep.append(item)
                continue
            cents = price_at(catalogue(item.product_id), item.ts)
            if cents is None:
                unpriced += 1
            else:
                settled += cents
                if item.product_id in rules.watched:
                    watched[item.product_id] = watched.get(item.product_id, 0) + cents
        draft = Spend(settled, unpriced, watched, tuple(keep), spend.purchases + 1, newest,
                      spend.tier, offset)
        total, _, watched_now = priced(draft, catalogue)
        tier = tier_for(total, rules.tiers)
        if tier != spend.tier:
            events.append(LoyaltyEvent(purchase.user_id, TIER_CHANGED, {
                "from": spend.tier, "to": tier, "total_cents": total}, purchase.ts))
        new_spend = draft._replace(tier=tier)
    if purchase.product_id == rules.stamps.product_id and offset > stamps.last_offset:
        new_stamps = Stamps(stamps.total + 1, offset)
        if stamp_status(new_stamps.total, rules.stamps).next_one_free:
            events.append(LoyaltyEvent(purchase.user_id, FREE_COFFEE_READY, {
                "product_id": purchase.product_id, "total": new_stamps.total}, purchase.ts))
    if purchase.product_id in rules.watched and offset > basket.last_offset:
        products = basket.products | {purchase.product_id}
        if watched_now is None:
            watched_now = priced(spend, catalogue)[2]
        met = qualifying(rules.campaigns, products, watched_now)
        for name in sorted(set(met) - basket.announced):
            events.append(LoyaltyEvent(purchase.user_id, CAMPAIGN_QUALIFIED, {
                "campaign": name, "products": met[name]}, purchase.ts))
        new_basket = Basket(frozenset(products), frozenset(met), offset)
    return Outcome(new_spend, new_stamps, new_basket, tuple(events))
