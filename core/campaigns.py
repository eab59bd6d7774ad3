"""Declarative basket campaigns (the recipe's ``promotion_french_poodle`` / ``loose_leaf``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple


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
    return products_pass(campaign, basket) and (
        campaign.min_spend_cents is None or spend_passes(campaign, spend_cents))


def products_pass(campaign: Campaign, basket: set[str] | frozenset[str]) -> bool:
    """Whether a basket holds every product the campaign requires and none it excludes."""
    return campaign.require <= basket and campaign.exclude.isdisjoint(basket)


def spend_passes(campaign: Campaign, spend_cents: Mapping[str, int]) -> bool:
    """Whether the spend on the campaign's watched products exceeds its minimum (none: yes)."""
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


class _Decided(NamedTuple):
    """What a set of products bought decides: campaigns met whatever the spend, and those
    whose spend threshold decides (their required and excluded products pass)."""

    met: frozenset[str]
    by_spend: tuple[Campaign, ...]


#: How many baskets a :class:`CampaignPlan` remembers (past it, it starts over).
PLAN_KEPT = 4_096


class CampaignPlan:
    """The names of the campaigns a basket meets, as :func:`qualifying` finds them, for a
    caller checking the same few baskets again and again (a customer's basket rarely gains
    a product; its spend changes with every purchase).

    What the products decide is worked out once per set of products and remembered;
    only a spend threshold is checked each time, and only for a campaign whose products
    pass."""

    __slots__ = ("_campaigns", "_decided")

    def __init__(self, campaigns: Iterable[Campaign]) -> None:
        self._campaigns = tuple(campaigns)
        self._decided: dict[frozenset[str], _Decided] = {}

    def met_names(self, bought: frozenset[str], spend_cents: Mapping[str, int]) -> frozenset[str]:
        """The names of the campaigns met: ``frozenset(qualifying(...))``."""
        decided = self._decided.get(bought)
        if decided is None:
            decided = self._decide(bought)
        if not decided.by_spend:
            return decided.met
        over = [campaign.name for campaign in decided.by_spend
                if spend_passes(campaign, spend_cents)]
        return decided.met.union(over) if over else decided.met

    def _decide(self, bought: frozenset[str]) -> _Decided:
        met: set[str] = set()
        by_spend: list[Campaign] = []
        for campaign in self._campaigns:
            if not products_pass(campaign, bought):
                continue
            if campaign.min_spend_cents is None:
                met.add(campaign.name)
            else:
                by_spend.append(campaign)
        if len(self._decided) >= PLAN_KEPT:
            self._decided.clear()
        decided = self._decided[bought] = _Decided(frozenset(met), tuple(by_spend))
        return decided
