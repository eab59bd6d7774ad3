"""Declarative basket campaigns (the recipe's ``promotion_french_poodle`` / ``loose_leaf``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Campaign:
    """A watched product set, products required and excluded, and an optional minimum spend.

    ``min_spend_cents`` must be *exceeded* by the spend on watched products.
    """

    name: str
    watch: frozenset[str]
    require: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()
    min_spend_cents: int | None = None

    def __post_init__(self) -> None:
        if not self.watch:
            raise ValueError(f"campaign {self.name!r} watches no products")
        outside = (self.require | self.exclude) - self.watch
        if outside:
            raise ValueError(f"campaign {self.name!r}: {sorted(outside)} are not watched")
        if self.require & self.exclude:
            raise ValueError(f"campaign {self.name!r} requires and excludes the same product")


DEFAULT_CAMPAIGNS: tuple[Campaign, ...] = (
    Campaign(
        "french_poodle", watch=frozenset({"dog", "beret"}), require=frozenset({"dog", "beret"})
    ),
    Campaign(
        "loose_leaf",
        watch=frozenset({"coffee", "tea"}),
        require=frozenset({"coffee"}),
        exclude=frozenset({"tea"}),
        min_spend_cents=2_000,
    ),
)


def watched_products(campaigns: Iterable[Campaign]) -> frozenset[str]:
    """Every product any campaign watches."""
    out: set[str] = set()
    for campaign in campaigns:
        out |= campaign.watch
    return frozenset(out)


def qualifies(campaign: Campaign, bought: Iterable[str], spend_cents: Mapping[str, int]) -> bool:
    """Whether a basket (set of products bought, spend per product) meets a campaign."""
    basket = bought if isinstance(bought, set | frozenset) else set(bought)
    if not campaign.require <= basket or not campaign.exclude.isdisjoint(basket):
        return False
    if campaign.min_spend_cents is None:
        return True
    watched_spend = 0
    for product in campaign.watch:
        watched_spend += spend_cents.get(product, 0)
    return watched_spend > campaign.min_spend_cents


def qualifying(
    campaigns: Iterable[Campaign], bought: Iterable[str], spend_cents: Mapping[str, int]
) -> dict[str, list[str]]:
    """Campaigns met by a basket, each with the sorted watched products the customer bought."""
    basket = bought if isinstance(bought, set | frozenset) else set(bought)
    met: dict[str, list[str]] = {}
    for campaign in campaigns:
        if qualifies(campaign, basket, spend_cents):
            met[campaign.name] = sorted(campaign.watch.intersection(basket))
    return met
