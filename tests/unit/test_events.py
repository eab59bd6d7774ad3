"""Decoding and validating input events (DESIGN section 2)."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.events import (
    BadEvent,
    decode_object,
    parse_display_event,
    parse_position,
    parse_product,
    parse_promotion_event,
    parse_purchase,
    parse_user,
)
from core.poison import poison_pills


def test_purchase_without_ts_uses_record_timestamp() -> None:
    p = parse_purchase(b'{"user_id": "kris", "product_id": "coffee"}', "kris", 123.5)
    assert (p.user_id, p.product_id, p.ts, p.price_cents) == ("kris", "coffee", 123.5, None)


def test_purchase_own_price_is_exact_cents() -> None:
    p = parse_purchase(b'{"user_id": "k", "product_id": "c", "price": 2.99, "ts": 5}', "k", 0)
    assert p.price_cents == 299 and p.ts == 5.0


def test_unknown_fields_are_ignored() -> None:
    p = parse_product(b'{"product_id": "tea", "price": "2.55", "colour": "green"}', "tea", 1.0)
    assert p.price_cents == 255 and p.category is None


def test_user_opt_out_defaults_to_false() -> None:
    assert parse_user(b'{"user_id": "u1"}', None).opt_out is False
    assert parse_user(b'{"user_id": "u1", "opt_out": true}', "u1").opt_out is True


@pytest.mark.parametrize("raw,reason", [
    (b"", "empty value"),
    (b"{nope", "not valid JSON"),
    (b"[1]", "expected a JSON object"),
    (b'{"product_id": "tea", "price": -1}', "must be >= 0"),
    (b'{"product_id": "tea", "price": NaN}', "not valid JSON"),
    (b'{"product_id": "tea", "price": "1e999"}', "below"),
    (b'{"product_id": "tea"}', "missing required field 'price'"),
    (b'{"product_id": 7, "price": 1}', "must be a string"),
    (b'{"product_id": "tea", "price": 1, "ts": -5}', "epoch seconds"),
])
def test_bad_products_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(BadEvent, match=reason):
        parse_product(raw, None, 0.0)


def test_event_keyed_by_someone_else_is_rejected() -> None:
    with pytest.raises(BadEvent, match="does not match user_id"):
        parse_purchase(b'{"user_id": "kris", "product_id": "tea"}', "dave", 0.0)


def test_every_poison_pill_is_rejected() -> None:
    parsers = {
        "purchases": lambda v, k: parse_purchase(v, k, 0.0),
        "products": lambda v, k: parse_product(v, k, 0.0),
        "users": parse_user,
        "customers.locations": lambda v, k: parse_position(v, k, 0.0),
        "products.promotions": lambda v, k: parse_promotion_event(v, k, 0.0),
        "stores.products": parse_display_event,
    }
    for pill in poison_pills():
        with pytest.raises((BadEvent, UnicodeDecodeError)):
            key = None if pill.key is None else pill.key.decode("utf-8")
            parsers[pill.topic](pill.value, key)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_bad_event(raw: bytes) -> None:
    with contextlib.suppress(BadEvent):
        parse_purchase(raw, None, 0.0)


@given(st.dictionaries(st.sampled_from(["user_id", "product_id", "price", "ts", "purchase_id"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                                 st.text(max_size=5), st.lists(st.integers(), max_size=2))))
def test_arbitrary_json_objects_are_parsed_or_rejected(event: dict[str, object]) -> None:
    try:
        raw = orjson.dumps(event)
    except TypeError:
        return
    try:
        purchase = parse_purchase(raw, None, 0.0)
    except BadEvent:
        return
    assert purchase.price_cents is None or purchase.price_cents >= 0


def test_decode_object_accepts_unicode() -> None:
    assert decode_object('{"name": "Åsa"}'.encode()) == {"name": "Åsa"}
