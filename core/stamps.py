"""Coffee stamp card: buy ``cycle - 1``, the next one is free (the recipe's ``caffeine_index``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StampCard:
    """Which product earns stamps and how long a cycle is (default: five bought, sixth free)."""

    product_id: str = "coffee"
    cycle: int = 6

    def __post_init__(self) -> None:
        if self.cycle < 2:
            raise ValueError("a stamp cycle needs at least two purchases")


@dataclass(frozen=True, slots=True)
class StampStatus:
    """``total`` stamped purchases, position in the cycle, and whether the next one is free."""

    total: int
    sequence: int
    next_one_free: bool


def next_one_free(total: int, card: StampCard = StampCard()) -> bool:
    """Whether the purchase after ``total`` stamped ones is free."""
    return total % card.cycle == card.cycle - 1


def stamp_status(total: int, card: StampCard = StampCard()) -> StampStatus:
    """Status after ``total`` stamped purchases: ``sequence = total % cycle``."""
    return StampStatus(total=total, sequence=total % card.cycle,
                       next_one_free=next_one_free(total, card))
