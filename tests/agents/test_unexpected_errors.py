"""An unexpected exception inside any agent (a bug, not bad input) dead-letters that event
with the reason and its source topic, partition and offset, and the agent goes on with the
next event (README "Bad input"; ``agents.common``).

Each test makes one rule function the agent calls raise ``RuntimeError`` for one event only,
then puts a good event, the failing one and another good one through the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
import pytest

import agents.delivery
import agents.loyalty
import agents.offers
from agents.delivery import deliver_offers
from agents.loyalty import process_products, process_purchases, process_users
from agents.offers import process_displays, process_locations, process_promotions
from app import topics
from app.delivery.sinks import DeliveryOutcome
from app.faust_app import METRICS
from core.events import parse_display_event, parse_promotion_event
from tables import loyalty as tables
from tables.offers import DISPLAY_INDEX, PROMOTION_INDEX, displays, promotions, shoppers
from tests.agents.conftest import Sent
from tests.integration import store

#: Long enough for a loaded 2-core machine; a crashed agent would hang a put, not fail it.
PUT_TIMEOUT_S = 20.0


class Bug(RuntimeError):
    """The unexpected exception injected."""


def js(value: object) -> bytes:
    return orjson.dumps(value)


def failing_when(monkeypatch: pytest.MonkeyPatch, module: Any, name: str,
                 fails: Callable[[tuple[Any, ...], Any], bool]) -> list[Any]:
    """Wrap ``module.name`` so that it raises :class:`Bug` when ``fails(args, result)``;
    return the list of results it produced (the calls that did not fail)."""
    real = getattr(module, name)
    results: list[Any] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if fails(args, result):
            raise Bug(f"injected into {name}")
        results.append(result)
        return result

    monkeypatch.setattr(module, name, wrapper)
    return results


async def put_all(agent: Any, events: Sequence[tuple[bytes, bytes]]) -> None:
    """Put ``(key, value)`` events through ``agent`` (offsets 0, 1, ...), each processed before
    the next is put."""
    async with agent.test_context() as context:
        for key, value in events:
            await asyncio.wait_for(context.put(value, key=key), PUT_TIMEOUT_S)


def dead_letters_total(topic: str) -> float:
    return METRICS.value("storestream_events_total", topic=topic, outcome="dead_letter")


def assert_dead_lettered(sent: Sent, agent: Any, key: bytes, value: bytes, offset: int,
                         name: str) -> None:
    """Exactly one dead letter: the event at ``offset`` (partition 0) of the agent's topic,
    keyed as it was, its raw value, and the reason naming the bug."""
    (letter_key, raw), = sent.by_topic("dead-letters")
    letter = orjson.loads(raw)
    assert letter_key == key
    assert (letter["topic"], letter["partition"], letter["offset"]) == (
        agent.channel.get_topic_name(), 0, offset)
    assert letter["error"] == f"processing failed: Bug('injected into {name}')"
    assert letter["raw"] == value.decode() and letter["raw_bytes"] == len(value)


# --- loyalty agents ----------------------------------------------------------------------

async def test_a_bug_pricing_a_product_dead_letters_it_and_the_next_price_is_kept(
        sent: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_when(monkeypatch, agents.loyalty, "with_price", lambda args, _: args[2] == 666)
    topic = process_products.channel.get_topic_name()
    before = dead_letters_total(topic)
    bad = js({"product_id": "tea", "price": 6.66, "ts": 2.0})
    await put_all(process_products, [
        (b"coffee", js({"product_id": "coffee", "price": 2.99, "ts": 1.0})),
        (b"tea", bad),
        (b"tea", js({"product_id": "tea", "price": 1.50, "ts": 3.0})),
    ])
    assert_dead_lettered(sent, process_products, b"tea", bad, 1, "with_price")
    assert dead_letters_total(topic) == before + 1
    assert tables.catalogue["coffee"]["history"] == [[1.0, 299]]
    assert tables.catalogue["tea"]["history"] == [[3.0, 150]]
    assert tables.catalogue["tea"]["last_offset"] == 2


async def test_a_bug_reading_a_profile_dead_letters_it_and_the_next_profile_is_kept(
        sent: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_when(monkeypatch, agents.loyalty, "parse_user",
                 lambda _, user: user.user_id == "mallory")
    bad = js({"user_id": "mallory", "opt_out": True})
    await put_all(process_users, [
        (b"rick", js({"user_id": "rick", "name": "Rick"})),
        (b"mallory", bad),
        (b"yeva", js({"user_id": "yeva", "opt_out": True})),
    ])
    assert_dead_lettered(sent, process_users, b"mallory", bad, 1, "parse_user")
    assert "mallory" not in tables.profiles
    assert tables.profiles["rick"]["name"] == "Rick"
    assert tables.profiles["yeva"]["opt_out"] is True
    assert tables.profiles["yeva"]["last_offset"] == 2


async def test_a_bug_applying_a_purchase_dead_letters_it_and_the_next_purchase_counts(
        sent: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_when(monkeypatch, agents.loyalty, "apply_purchase",
                 lambda args, _: args[0].purchase_id == "p-bug")
    topic = process_purchases.channel.get_topic_name()
    before = dead_letters_total(topic)
    bad = js({"user_id": "kris", "product_id": "coffee", "price": 3.05,
              "purchase_id": "p-bug", "ts": 2.0})
    await put_all(process_purchases, [
        (b"kris", js({"user_id": "kris", "product_id": "coffee", "price": 2.99,
                      "purchase_id": "p-1", "ts": 1.0})),
        (b"kris", bad),
        (b"kris", js({"user_id": "kris", "product_id": "coffee", "price": 3.00,
                      "purchase_id": "p-3", "ts": 3.0})),
    ])
    assert_dead_lettered(sent, process_purchases, b"kris", bad, 1, "apply_purchase")
    assert dead_letters_total(topic) == before + 1
    assert tables.stamps["kris"]["total"] == 2
    assert tables.spend["kris"]["settled_cents"] == 299 + 300
    assert tables.spend["kris"]["last_offset"] == 2


# --- offers agents -----------------------------------------------------------------------

async def test_a_bug_reading_a_display_dead_letters_it_and_the_next_display_is_kept(
        sent: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_when(monkeypatch, agents.offers, "parse_display_event",
                 lambda _, display: display.sku == "666")
    first, second, third = store.DISPLAYS
    bad = js({**second, "sku": 666})
    try:
        await put_all(process_displays, [
            (str(first["sku"]).encode(), js(first)),
            (b"666", bad),
            (str(third["sku"]).encode(), js(third)),
        ])
        assert_dead_lettered(sent, process_displays, b"666", bad, 1, "parse_display_event")
        skus = {record["sku"] for record in displays.values()}
        assert skus == {"1001", "3003"}
    finally:
        displays.data.clear()


async def test_a_bug_reading_a_promotion_dead_letters_it_and_the_next_promotion_is_kept(
        sent: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_when(monkeypatch, agents.offers, "parse_promotion_event",
                 lambda _, promotion: promotion.pid == "p-bug")
    first, second, *_ = store.PROMOTIONS
    bad = js({"pid": "p-bug", "segment": "tea", "discount_pct": 5, "ts": 1.0})
    try:
        await put_all(process_promotions, [
            (b"p-sku", js(first)), (b"p-bug", bad), (b"p-seg", js(second)),
        ])
        assert_dead_lettered(sent, process_promotions, b"p-bug", bad, 1,
                             "parse_promotion_event")
        assert set(promotions.keys()) == {"p-sku", "p-seg"}
    finally:
        promotions.data.clear()


@contextlib.contextmanager
def promoted_display() -> Iterator[None]:
    """Display 2002 at ``store.D2`` on promotion ``p-sku``, in the worker's indexes (filled by
    the replicas in a worker; here by hand, and emptied again)."""
    display = parse_display_event(js(store.DISPLAYS[1]), "2002")
    promotion = parse_promotion_event(js(store.PROMOTIONS[0]), "p-sku", 1.0)
    DISPLAY_INDEX.upsert(display)
    PROMOTION_INDEX.upsert(promotion)
    try:
        yield
    finally:
        DISPLAY_INDEX.remove(display.store_id, display.sku)
        PROMOTION_INDEX.remove(promotion.pid)


async def test_a_bug_matching_a_position_dead_letters_it_and_the_next_shopper_gets_an_offer(
        sent: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_when(monkeypatch, agents.offers, "decide_offers",
                 lambda args, _: args[0] == "mallory")
    shopper = [store.position(uid, store.D2, 5000.0) for uid in ("amy", "mallory", "bob")]
    events = [(uid.encode(), js(value)) for _, uid, value in shopper]
    topic = process_locations.channel.get_topic_name()
    before = dead_letters_total(topic)
    try:
        with promoted_display():
            await put_all(process_locations, events)
        assert_dead_lettered(sent, process_locations, b"mallory", events[1][1], 1,
                             "decide_offers")
        assert dead_letters_total(topic) == before + 1
        offers = sent.by_topic(topics.offers_topic.get_topic_name())
        assert [(key, orjson.loads(value)["pid"]) for key, value in offers] == [
            (b"amy", "p-sku"), (b"bob", "p-sku")]
    finally:
        for uid in ("amy", "mallory", "bob"):
            shoppers.data.pop(uid, None)


# --- the delivery agent ------------------------------------------------------------------

class RecordingDelivery:
    """Stands in for Redis and Ably: delivers every offer it is given, once."""

    def __init__(self) -> None:
        self.delivered: list[str] = []

    async def deliver_many(self, offers: Sequence[dict[str, Any]], *,
                           halt_on_transient: bool = False) -> list[DeliveryOutcome]:
        self.delivered.extend(str(offer["offer_id"]) for offer in offers)
        return [DeliveryOutcome(str(offer["offer_id"]), "delivered", "skipped")
                for offer in offers]

    async def close(self) -> None:
        pass


async def test_a_bug_checking_an_offer_dead_letters_it_and_the_next_offer_is_delivered(
        sent: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_when(monkeypatch, agents.delivery, "validate_offer",
                 lambda args, _: args[0].get("offer_id") == "o-bug")
    delivery = RecordingDelivery()
    monkeypatch.setattr(agents.delivery, "new_delivery", lambda: delivery)
    offer = {"uid": "amy", "pid": "p-sku", "sku": "2002", "ts": 5000.0}
    bad = js({**offer, "offer_id": "o-bug"})
    await put_all(deliver_offers, [
        (b"amy", js({**offer, "offer_id": "o-1"})),
        (b"amy", bad),
        (b"amy", js({**offer, "offer_id": "o-3"})),
    ])
    assert_dead_lettered(sent, deliver_offers, b"amy", bad, 1, "validate_offer")
    assert delivery.delivered == ["o-1", "o-3"]
