"""The delivery agent: offers from ``customers.promotions`` to Redis and Ably.

A separate agent on its own topic, so a slow push never delays matching. Delivery is
idempotent per offer_id (a Redis marker, Ably's message id), so a redelivered offer is pushed
once; transient failures are retried with backoff, and an offer that still cannot be pushed
(or never could: bad key, malformed offer) goes to ``dead-letters`` with the reason.
"""

from __future__ import annotations

from typing import Any

from faust.types import StreamT

from agents.common import DUPLICATE, OK, handle
from app.delivery import DeliveryError, OfferDelivery
from app.faust_app import METRICS, app
from app.settings import SETTINGS
from app.topics import offers_topic
from core.events import BadEvent, decode_object


async def push(delivery: OfferDelivery, message: Any) -> str:
    """Deliver one offer record."""
    offer = decode_object(message.value)
    try:
        outcome = await delivery.deliver(offer)
    except DeliveryError as exc:
        kind = "permanent" if exc.permanent else "transient, retries exhausted"
        METRICS.inc("storestream_offer_delivery_failures_total", kind=kind.split(",")[0])
        raise BadEvent(f"delivery failed ({kind}): {exc}") from exc
    METRICS.inc("storestream_offers_delivered_total", sink="redis", outcome=outcome.redis)
    if outcome.ably == "delivered":
        METRICS.inc("storestream_offers_delivered_total", sink="ably", outcome="delivered")
    return DUPLICATE if outcome.duplicate else OK


@app.agent(offers_topic, name="delivery")
async def deliver_offers(stream: StreamT[bytes]) -> None:
    """Push every offer to the shopper's channels."""
    delivery = OfferDelivery.from_settings(
        SETTINGS.redis_url, SETTINGS.ably_api_key, key_prefix=SETTINGS.topics.prefix,
        max_elapsed_s=30.0,
    )
    try:
        async for event in stream.events():
            await handle("delivery", event.message, lambda m: push(delivery, m))
    finally:
        await delivery.close()
