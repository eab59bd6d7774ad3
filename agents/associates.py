"""Store associates: ``associates.alerts`` to the store's channel on Redis and Ably.

Each alert (a shopper of ``ASSOCIATE_TIERS`` arriving, :mod:`core.associates`, once per
visit; never a position) is published to ``associates:{store_id}`` on Redis once per
``alert_id`` and, with ``ABLY_API_KEY``, on Ably with message id ``alert_id`` (Ably's
idempotency key), by :class:`app.delivery.alerts.AlertDelivery`: transient failures are
retried with the offers' backoff, then, while Redis or Ably stays down, every few seconds for
as long as it takes (the agent's stream waits, and its commits with it; ``/health`` and
``storestream_delivery_stalled{kind="alerts"}`` say so). An alert that can never be published
(malformed, refused) goes to ``dead-letters`` with the reason.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from faust.types import StreamT

from agents.common import DUPLICATE, OK, handle
from app.delivery import parking
from app.delivery.alerts import AlertDelivery, alert_channel
from app.delivery.sinks import DeliveryError, OfferDelivery
from app.faust_app import METRICS, app
from app.settings import SETTINGS
from app.topics import associates_topic
from core.events import BadEvent, decode_object
from core.retry import delay


def channel(store_id: str) -> str:
    """The store's associates channel, ``{TOPIC_PREFIX}associates:{store_id}``."""
    return alert_channel(store_id, SETTINGS.topics.prefix)


@functools.cache
def _delivery() -> AlertDelivery:
    clients = OfferDelivery.from_settings(SETTINGS.redis_url, SETTINGS.ably_api_key,
                                          key_prefix=SETTINGS.topics.prefix)
    return AlertDelivery(clients, SETTINGS.topics.prefix, max_elapsed_s=30.0)


async def deliver_alert(message: Any) -> str:
    """Publish one alert to the store's channel (once per alert_id, retried)."""
    alert = decode_object(message.value)
    retries = 0
    while True:
        try:
            fresh, ably = await _delivery().deliver(alert)
            break
        except DeliveryError as exc:
            kind = "permanent" if exc.permanent else "transient"
            METRICS.inc("storestream_associate_alert_failures_total", kind=kind)
            if exc.permanent:
                raise BadEvent(f"delivery failed (permanent): {exc}") from exc
        _stalled(1.0)
        await asyncio.sleep(delay(parking.BACKOFF, retries))
        retries += 1
    if retries:
        _stalled(0.0)
    METRICS.inc("storestream_associate_alerts_delivered_total", sink="redis",
                outcome="delivered" if fresh else "duplicate")
    if ably:
        METRICS.inc("storestream_associate_alerts_delivered_total", sink="ably",
                    outcome="delivered")
    return OK if fresh else DUPLICATE


def _stalled(waiting: float) -> None:
    """Say whether an alert waits for Redis or Ably to come back (metrics, ``/health``)."""
    METRICS.set("storestream_delivery_stalled", waiting, kind="alerts")
    parking.note_stalled("alerts", int(waiting))


@app.agent(associates_topic, name="associates")
async def process_associates(stream: StreamT[bytes]) -> None:
    """Arrivals of watched shoppers to their store's associates."""
    async for event in stream.events():
        await handle("associates", event.message, deliver_alert)
