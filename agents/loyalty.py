"""Agents for ``products``, ``users`` and ``purchases``."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from faust.types import StreamT

from app.deadletters import decode_key, send_dead_letter
from app.faust_app import METRICS, app
from app.settings import SETTINGS
from app.topics import loyalty_events_topic, products_topic, purchases_topic, users_topic
from core.events import BadEvent, parse_product, parse_purchase, parse_user
from core.loyalty import Basket, LoyaltyEvent, Spend, Stamps, apply_purchase
from core.pricing import history_from_json, history_to_json, with_price
from tables.loyalty import baskets, catalogue, price_history, profiles, spend, stamps

log = logging.getLogger(__name__)
RULES = SETTINGS.loyalty


def _observe(agent: str, message: Any, outcome: str) -> None:
    METRICS.inc("storestream_events_total", topic=message.topic, outcome=outcome)
    if message.timestamp:
        METRICS.observe("storestream_agent_latency_seconds",
                        max(0.0, time.time() - message.timestamp), agent=agent)


async def _reject(agent: str, message: Any, reason: str) -> None:
    await send_dead_letter(message, reason)
    _observe(agent, message, "dead_letter")


@app.agent(products_topic, name="products")
async def process_products(stream: StreamT[bytes]) -> None:
    """Record each catalogue price in the product's price history."""
    async for event in stream.events():
        message = event.message
        try:
            price = parse_product(message.value, decode_key(message.key), message.timestamp)
            record = catalogue.get(price.product_id) or {}
            if record.get("last_offset", -1) >= message.offset:
                continue  # already applied before a restart
            history = with_price(history_from_json(record.get("history")), price.ts,
                                 price.price_cents)
            catalogue[price.product_id] = {
                "category": price.category or record.get("category"),
                "history": history_to_json(history),
                "last_offset": message.offset,
            }
        except (BadEvent, UnicodeDecodeError) as exc:
            await _reject("products", message, str(exc))
            continue
        except Exception as exc:  # a bug must not stop the stream either
            log.exception("products: failed to process %s", message.offset)
            await _reject("products", message, f"processing failed: {exc!r}")
            continue
        _observe("products", message, "ok")


@app.agent(users_topic, name="users")
async def process_users(stream: StreamT[bytes]) -> None:
    """Keep each customer's profile and consent (opt-out)."""
    async for event in stream.events():
        message = event.message
        try:
            user = parse_user(message.value, decode_key(message.key))
            record = profiles.get(user.user_id) or {}
            if record.get("last_offset", -1) >= message.offset:
                continue
            profiles[user.user_id] = {
                "name": user.name, "opt_out": user.opt_out, "last_offset": message.offset,
            }
        except (BadEvent, UnicodeDecodeError) as exc:
            await _reject("users", message, str(exc))
            continue
        except Exception as exc:
            log.exception("users: failed to process %s", message.offset)
            await _reject("users", message, f"processing failed: {exc!r}")
            continue
        _observe("users", message, "ok")


def loyalty_event_value(event: LoyaltyEvent) -> bytes:
    """A ``loyalty.events`` record value."""
    return orjson.dumps({
        "user_id": event.user_id, "type": event.type, "details": dict(event.details),
        "ts": event.ts,
    })


@app.agent(purchases_topic, name="purchases")
async def process_purchases(stream: StreamT[bytes]) -> None:
    """Price each purchase as of its event time and update spend, stamps and basket."""
    async for event in stream.events():
        message = event.message
        try:
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
            if outcome.spend is not None:
                spend[user] = outcome.spend.to_json()
            if outcome.stamps is not None:
                stamps[user] = outcome.stamps.to_json()
            if outcome.basket is not None:
                baskets[user] = outcome.basket.to_json()
            for change in outcome.events:
                await loyalty_events_topic.send(key=user.encode(),
                                                value=loyalty_event_value(change))
        except (BadEvent, UnicodeDecodeError) as exc:
            await _reject("purchases", message, str(exc))
            continue
        except Exception as exc:
            log.exception("purchases: failed to process %s", message.offset)
            await _reject("purchases", message, f"processing failed: {exc!r}")
            continue
        _observe("purchases", message, "ok")
