"""REPARTITION's pure parts: modes, decisions, owner fields, origin marks, settings."""

from __future__ import annotations

import pytest

from core.config import ConfigError, load_settings, repartition_mode
from core.repartition import (
    FORWARD,
    PROCESS,
    Mark,
    NoOwner,
    decide,
    is_forwarded_again,
    next_mark,
    origin_header,
    owner,
    read_origin,
)


@pytest.mark.parametrize(("mode", "key", "placed", "expected"), [
    ("off", None, True, PROCESS), ("off", b"k", False, PROCESS),
    ("keyless", None, True, FORWARD), ("keyless", b"", True, FORWARD),
    ("keyless", b"k", False, PROCESS), ("keyless", b"k", True, PROCESS),
    ("all", None, True, FORWARD), ("all", b"k", False, FORWARD), ("all", b"k", True, PROCESS),
])
def test_decide(mode: str, key: bytes | None, placed: bool, expected: str) -> None:
    assert decide(mode, key, placed) == expected


def test_owner_fields_of_the_confluent_demo_shapes() -> None:
    position = b'{"latitude": 51.5, "longitude": -0.1, "uid": "kris", "country": "UK"}'
    assert owner(position, "uid") == "kris"
    assert owner(b'{"sku": 1234567, "lat": 1, "lon": 2}', "sku") == "1234567"
    assert owner(b'{"sku": 12.0}', "sku") == "12"
    assert owner(b'{"pid": "p1", "segment": "dairy"}', "pid") == "p1"
    assert owner(b'{"user_id": "alex", "product_id": "coffee"}', "user_id") == "alex"
    assert owner(b'{"product_id": "coffee"}', "user_id", b"kim") == "kim"  # keyed: its key


@pytest.mark.parametrize("value", [b'{"segment": "dairy"}', b"not json", b"[1]", None,
                                   b'{"uid": ""}', b'{"uid": true}'])
def test_no_owner(value: bytes | None) -> None:
    with pytest.raises(NoOwner):
        owner(value, "uid")


def test_origin_header_round_trip() -> None:
    name, value = origin_header(3, 1234)
    assert read_origin([(name, value)]) == (3, 1234)
    assert read_origin({name: value}) == (3, 1234)
    assert read_origin(None) is None and read_origin([("other", b"x")]) is None


def test_marks_skip_a_second_forward_but_not_a_redelivery() -> None:
    mark = next_mark(None, origin_offset=10, offset=100)
    assert not is_forwarded_again(None, 10, 100)
    assert is_forwarded_again(mark, 10, 105)       # forwarded again: new offset, same origin
    assert is_forwarded_again(mark, 7, 106)
    assert not is_forwarded_again(mark, 10, 100)   # the same record delivered again
    assert not is_forwarded_again(mark, 11, 107)   # a new origin record
    assert next_mark(mark, 11, 107) == Mark(11, 107)
    assert Mark.from_json(mark.to_json()) == mark


def test_settings() -> None:
    settings = load_settings({"REPARTITION": "all", "REPARTITION_PURCHASES": "Off"})
    assert repartition_mode(settings, "purchases") == "off"
    assert repartition_mode(settings, "customers.locations") == "all"
    default = load_settings({})
    assert all(repartition_mode(default, b) == "keyless"
               for b in ("products", "users", "purchases", "stores.products",
                         "products.promotions", "customers.locations"))
    with pytest.raises(ConfigError, match="REPARTITION_DISPLAYS must be one of"):
        load_settings({"REPARTITION_DISPLAYS": "sometimes"})
    with pytest.raises(ConfigError, match="REPARTITION must be one of"):
        load_settings({"REPARTITION": "yes"})


def test_offsets_of_the_input_and_the_repartition_topic_are_kept_apart() -> None:
    from core.loyalty import Basket, Purchase, Spend, Stamps, apply_purchase

    def buy(spend: Spend, offset: int, rp: bool) -> Spend:
        out = apply_purchase(Purchase("kris", "tea", 1.0, 100), offset, spend, Stamps(),
                             Basket(), lambda _: (), repartitioned=rp)
        return spend if out.spend is None else out.spend

    spend = buy(Spend(), 100, False)          # keyed, in place
    spend = buy(spend, 5, True)               # keyless, from the repartition topic
    spend = buy(spend, 101, False)
    assert (spend.purchases, spend.last_offset, spend.last_rp) == (3, 101, 5)
    assert buy(spend, 5, True) == spend and buy(spend, 101, False) == spend  # redeliveries
    assert Spend.from_json(spend.to_json()) == spend
    assert "last_rp" not in Spend().to_json()


def test_stamps_and_basket_keep_both_offset_streams_apart() -> None:
    from core.campaigns import DEFAULT_CAMPAIGNS
    from core.loyalty import Basket, LoyaltyRules, Purchase, Spend, Stamps, apply_purchase

    rules = LoyaltyRules()
    watched = sorted(rules.watched)[0] if rules.watched else None
    stamps, basket = Stamps(), Basket()
    for offset, rp in ((10, False), (3, True), (11, False), (4, True)):
        out = apply_purchase(Purchase("kris", rules.stamps.product_id, 1.0, 100), offset,
                             Spend(), stamps, Basket(), lambda _: (), rules, repartitioned=rp)
        assert out.stamps is not None
        stamps = out.stamps
    assert (stamps.total, stamps.last_offset, stamps.last_rp) == (4, 11, 4)
    replay = apply_purchase(Purchase("kris", rules.stamps.product_id, 1.0, 100), 4, Spend(),
                            stamps, Basket(), lambda _: (), rules, repartitioned=True)
    assert replay.stamps is None  # a redelivery from the repartition topic
    assert DEFAULT_CAMPAIGNS and watched is not None
    for offset, rp in ((7, False), (2, True)):
        out = apply_purchase(Purchase("kris", watched, 1.0, 100), offset, Spend(), Stamps(),
                             basket, lambda _: (), rules, repartitioned=rp)
        assert out.basket is not None
        basket = out.basket
    assert (basket.last_offset, basket.last_rp) == (7, 2)
    assert watched in basket.products
