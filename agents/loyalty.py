"""Agents for ``products``, ``users`` and ``purchases``."""

from __future__ import annotations

from typing import Any

import orjson
from faust.types import StreamT

from agents.common import DUPLICATE, OK, handle
from app.deadletters import decode_key
from app.faust_app import app
from app.settings import SETTINGS
from app.topics import loyalty_events_topic, products_topic, purchases_topic, users_topic
from core.events import parse_product, parse_purchase, parse_user
from core.loyalty import Basket, LoyaltyEvent, Spend, Stamps, apply_purchase
from core.pricing import history_from_json, history_to_json, with_price
from tables.loyalty import baskets, catalogue, price_history, profiles, spend, stamps

RULES = SETTINGS.loyalty


async def apply_product(message: Any) -> str:
    """Record a catalogue price in the product's price history."""
    price = parse_product(message.value, decode_key(message.key), message.timestamp)
    record = catalogue.get(price.product_id) or {}
    if record.get("last_offset", -1) >= message.offset:
        return DUPLICATE
    history = with_price(history_from_json(record.get("history")), price.ts, price.price_cents)
    catalogue[price.product_id] = {
        "category": price.category or record.get("category"),
        "history": history_to_json(history),
        "last_offset": message.offset,
    }
    return OK


async def apply_user(message: Any) -> str:
    """Keep a customer's profile and consent (opt-out)."""
    user = parse_user(message.value, decode_key(message.key))
    record = profiles.get(user.user_id) or {}
    if record.get("last_offset", -1) >= message.offset:
        return DUPLICATE
    profiles[user.user_id] = {
        "name": user.name, "opt_out": user.opt_out, "last_offset": message.offset,
    }
    return OK


def loyalty_event_value(event: LoyaltyEvent) -> bytes:
    """A ``loyalty.events`` record value."""
    return orjson.dumps({
        "user_id": event.user_id, "type": event.type, "details": dict(event.details),
        "ts": event.ts,
    })


async def apply_purchase_event(message: Any) -> str:
    """Price a purchase as of its event time; update spend, stamps and basket."""
    purchase = parse_purchase(message.value, decode_key(message.key), message.timestamp)
    user = purchase.user_id
    outcome = apply_purchase(
        purchase,
        message.offset,
        Spend.from_json(spend.get(user)),
        Stamps.from_json(stamps.get(user)),
        Basket.from_json(baskets.get(user)),
        price_history,
        RULES,
    )
    if outcome.spend is None and outcome.stamps is None and outcome.basket is None:
        return DUPLICATE
    if outcome.spend is not None:
        spend[user] = outcome.spend.to_json()
    if outcome.stamps is not None:
        stamps[user] = outcome.stamps.to_json()
    if outcome.basket is not None:
        baskets[user] = outcome.basket.to_json()
    for change in outcome.events:
        await loyalty_events_topic.send(key=user.encode(), value=loyalty_event_value(change))
    return OK


@app.agent(products_topic, name="products")
async def process_products(stream: StreamT[bytes]) -> None:
    """The catalogue: each product's price history."""
    async for event in stream.events():
        await handle("products", event.message, apply_product)


@app.agent(users_topic, name="users")
async def process_users(stream: StreamT[bytes]) -> None:
    """Customer profiles and consent."""
    async for event in stream.events():
        await handle("users", event.message, apply_user)


@app.agent(purchases_topic, name="purchases")
async def process_purchases(stream: StreamT[bytes]) -> None:
    """Spend and tier, coffee stamps, basket campaigns."""
    async for event in stream.events():
        await handle("purchases", event.message, apply_purchase_event)
