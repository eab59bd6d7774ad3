"""Malformed events of every kind the loyalty agents must dead-letter (test and fault data)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Poison:
    """One bad record: unprefixed topic, raw key and value, and what is wrong with it."""

    kind: str
    topic: str
    key: bytes | None
    value: bytes


def poison_pills(n: int = 0) -> Iterator[Poison]:
    """One of each kind (``n`` varies ids so repeated pills are distinct records)."""
    user = f"poison-{n}".encode()
    yield Poison("not_json", "purchases", user, b"{this is not json")
    yield Poison("invalid_utf8", "purchases", user, b'{"user_id": "\xff\xfe"}')
    yield Poison("empty", "purchases", user, b"")
    yield Poison("json_array", "purchases", user, b'[{"user_id": "x", "product_id": "y"}]')
    yield Poison("json_scalar", "users", user, b"42")
    yield Poison("missing_product_id", "purchases", user, b'{"user_id": "' + user + b'"}')
    yield Poison("missing_user_id", "purchases", user, b'{"product_id": "coffee"}')
    yield Poison("wrong_type_product_id", "purchases", user,
                 b'{"user_id": "' + user + b'", "product_id": 12}')
    yield Poison("negative_price", "products", b"coffee",
                 b'{"product_id": "coffee", "price": -3.05}')
    yield Poison("nan_price", "products", b"coffee", b'{"product_id": "coffee", "price": NaN}')
    yield Poison("string_price", "purchases", user,
                 b'{"user_id": "' + user + b'", "product_id": "tea", "price": "cheap"}')
    yield Poison("bool_price", "products", b"tea", b'{"product_id": "tea", "price": true}')
    yield Poison("missing_price", "products", b"tea", b'{"product_id": "tea"}')
    yield Poison("bad_ts", "purchases", user,
                 b'{"user_id": "' + user + b'", "product_id": "tea", "ts": "yesterday"}')
    yield Poison("key_mismatch", "purchases", b"somebody-else",
                 b'{"user_id": "' + user + b'", "product_id": "tea"}')
    yield Poison("invalid_utf8_key", "purchases", b"\xff\xfe",
                 b'{"user_id": "x", "product_id": "tea"}')
    yield Poison("opt_out_not_bool", "users", user,
                 b'{"user_id": "' + user + b'", "opt_out": "yes"}')
    yield Poison("latitude_out_of_range", "customers.locations", user,
                 b'{"uid": "' + user + b'", "lat": 91.5, "lon": 0.0}')
    yield Poison("longitude_out_of_range", "customers.locations", user,
                 b'{"uid": "' + user + b'", "lat": 0.0, "lon": 181}')
    yield Poison("promotion_without_sku_or_segment", "products.promotions", b"p-none",
                 b'{"pid": "p-none", "discount_pct": 10}')
    yield Poison("display_without_position", "stores.products", b"77", b'{"sku": 77}')
    yield Poison("huge_value", "purchases", user,
                 b'{"user_id": "' + user + b'", "product_id": "' + b"x" * (1024 * 1024) + b'"}')


KINDS: tuple[str, ...] = tuple(p.kind for p in poison_pills())
