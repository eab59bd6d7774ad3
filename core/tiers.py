"""Reward tiers from total spend (the recipe's ``sales_totals.reward_level``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Tier(IntEnum):
    """Reward tiers, lowest first (so tiers compare by rank)."""

    CLIMBING = 0
    BRONZE = 1
    SILVER = 2
    GOLD = 3


GOLD = "GOLD"
SILVER = "SILVER"
BRONZE = "BRONZE"
CLIMBING = "CLIMBING"

#: Lowest to highest.
TIER_ORDER: tuple[str, ...] = tuple(tier.name for tier in Tier)


@dataclass(frozen=True, slots=True)
class TierThresholds:
    """Spend (in cents) that must be *exceeded* to reach each tier."""

    gold_cents: int = 40_000
    silver_cents: int = 30_000
    bronze_cents: int = 20_000

    def __post_init__(self) -> None:
        if not 0 <= self.bronze_cents <= self.silver_cents <= self.gold_cents:
            raise ValueError("tier thresholds must satisfy 0 <= bronze <= silver <= gold")


def tier_for(total_cents: int, thresholds: TierThresholds = TierThresholds()) -> str:
    """The reward tier for a total spend: > gold GOLD, > silver SILVER, > bronze BRONZE."""
    if total_cents > thresholds.gold_cents:
        return GOLD
    if total_cents > thresholds.silver_cents:
        return SILVER
    if total_cents > thresholds.bronze_cents:
        return BRONZE
    return CLIMBING


def tier_rank(tier: str | None) -> int:
    """Rank of a tier name (unknown or ``None`` ranks lowest, as CLIMBING)."""
    if tier is None or tier not in Tier.__members__:
        return Tier.CLIMBING
    return Tier[tier].value
