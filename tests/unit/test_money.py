"""Exact money: every float price converts to the cents its decimal text says."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

from hypothesis import given
from hypothesis import strategies as st

from core.money import CENT, MoneyError, to_cents


def decimal_cents(value: float) -> int:
    return int(Decimal(repr(value)).quantize(CENT, rounding=ROUND_HALF_EVEN) * 100)


@given(st.floats(min_value=0, max_value=999_999_999_999.99, allow_nan=False))
def test_float_price_is_exactly_its_decimal_text_in_cents(value: float) -> None:
    assert to_cents(value) == decimal_cents(value)


@given(st.integers(0, 10**13))
def test_two_decimal_prices_are_whole_cents(cents: int) -> None:
    value = cents / 100
    if value >= 10**12:
        try:
            to_cents(value)
        except MoneyError:
            return
        raise AssertionError("amounts of a trillion or more are not prices")
    assert to_cents(value) == decimal_cents(value) == cents


def test_three_decimals_round_half_to_even() -> None:
    assert to_cents(2.675) == 268
    assert to_cents(2.665) == 266
    assert to_cents(0.005) == 0
    assert to_cents(1e-9) == 0
