"""Exact money: integer cents in, integer cents out, never float sums."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

CENT = Decimal("0.01")
#: No single price reaches a trillion; anything that does is a bad event, not a purchase.
MAX_AMOUNT = Decimal(10) ** 12
_MAX_FLOAT = float(MAX_AMOUNT)


class MoneyError(ValueError):
    """A value that cannot be a price (negative, non-finite, not a number)."""


def to_cents(value: object) -> int:
    """Convert a JSON price (int, float or decimal string, currency units) to integer cents.

    Floats are read through their shortest repr (``2.99`` is exactly 299 cents); amounts
    with more than two decimals are rounded half-to-even, as a till would.
    """
    if isinstance(value, bool):
        raise MoneyError(f"price must be a number, got {value!r}")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise MoneyError(f"price must be finite, got {value!r}")
        cents = _whole_cents(value)
        if cents is not None:
            return cents
        amount = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation as exc:
            raise MoneyError(f"price is not a number: {value!r}") from exc
        if not amount.is_finite():
            raise MoneyError(f"price must be finite, got {value!r}")
    else:
        raise MoneyError(f"price must be a number, got {type(value).__name__}")
    if amount < 0:
        raise MoneyError(f"price must be >= 0, got {value!r}")
    if amount >= MAX_AMOUNT:
        raise MoneyError(f"price must be below {MAX_AMOUNT}, got {value!r}")
    return int(amount.quantize(CENT, rounding=ROUND_HALF_EVEN) * 100)


def _whole_cents(value: float) -> int | None:
    """``value`` in cents when its shortest repr has at most two decimals (the usual price),
    without going through ``Decimal``; ``None`` otherwise.

    ``cents / 100 == value`` holds exactly when the decimal ``cents / 100`` reads back as
    ``value``, i.e. when ``repr(value)`` is that decimal: the same answer as the exact path.
    """
    if not 0 <= value < _MAX_FLOAT:
        return None  # negative or too large: the exact path raises the right error
    cents = round(value * 100)
    return cents if cents / 100 == value else None


def cents_to_decimal(cents: int) -> Decimal:
    """Cents as an exact ``Decimal`` in currency units (``7428`` -> ``Decimal('74.28')``)."""
    return (Decimal(cents) / 100).quantize(CENT)


def cents_to_number(cents: int) -> float:
    """Cents as the JSON number a client expects (rounded to cents, e.g. ``74.28``)."""
    return float(cents_to_decimal(cents))


def format_cents(cents: int) -> str:
    """Cents as a display string with two decimals (``'74.28'``)."""
    return str(cents_to_decimal(cents))
