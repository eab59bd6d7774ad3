"""Offers as Redis stream fields: numbers written exactly as JSON writes them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.delivery.sinks import DeliveryError, stream_fields


@given(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers()))
def test_numbers_are_written_as_json_writes_them(value: float | int) -> None:
    assert stream_fields({"n": value}) == {"n": json.dumps(value)}


def test_strings_nulls_booleans_and_nested_values() -> None:
    fields = stream_fields({"s": "é", "none": None, "yes": True, "list": [1, "a"]})
    assert fields == {"s": "é", "none": "", "yes": "true", "list": '[1,"a"]'}


def test_non_finite_numbers_are_a_malformed_offer() -> None:
    with pytest.raises(DeliveryError) as info:
        stream_fields({"n": float("nan")})
    assert info.value.permanent
