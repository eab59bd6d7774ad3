"""Reward tiers from total spend (the recipe's ``sales_totals.reward_level``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from core.day_buckets import EMPTY_DAYS, DayBuckets


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


#: Tier name -> rank (a dict: the enum's own lookups cost microseconds per purchase).
_RANKS: dict[str | None, int] = {tier.name: tier.value for tier in Tier}


def tier_rank(tier: str | None) -> int:
    """Rank of a tier name (unknown or ``None`` ranks lowest, as CLIMBING)."""
    return _RANKS.get(tier, Tier.CLIMBING.value)


DAY_S = 86_400.0


def day_of(ts: float) -> int:
    """The day (of event time, UTC) a timestamp falls on: the rolling window's bucket."""
    return int(ts // DAY_S)


def window_days(days: Mapping[int, int] | None, today: int, window: int) -> DayBuckets:
    """Daily buckets kept for a window of ``window`` days ending ``today`` (older ones and
    empty ones go), packed."""
    if not days:
        return EMPTY_DAYS
    first = today - window + 1
    return DayBuckets.of([(day, cents) for day, cents in days.items() if day >= first])


def with_grace(held: str, below_since: float, computed: str, now: float,
               grace_s: float) -> tuple[str, float]:
    """The tier in effect and since when the spend has been below it (``-1``: it is not).

    An upgrade takes effect at once; a downgrade only once the spend has stayed below the
    held tier for ``grace_s`` of event time (then straight to the tier the spend gives)."""
    if computed == held or tier_rank(computed) >= tier_rank(held):
        return computed, -1.0
    since = below_since if below_since >= 0 else now
    if now - since >= grace_s:
        return computed, -1.0
    return held, since
