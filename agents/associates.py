"""Store associates: ``associates.alerts`` to the store's channel on Redis and Ably.

Each alert (a shopper of ``ASSOCIATE_TIERS`` arriving, :mod:`core.associates`, once per
visit; never a position) is published to ``associates:{store_id}`` on Redis once per
``alert_id`` and, with ``ABLY_API_KEY``, on Ably with message id ``alert_id`` (Ably's
idempotency key), by :class:`app.delivery.alerts.AlertDelivery`: transient failures are
retried with the offers' backoff (at most 30 s per alert), and an alert that still cannot be
published goes to ``dead-letters`` with the reason.
"""

from __future__ import annotations

import functools
from typing import Any

from faust.types import StreamT

from agents.common import DUPLICATE, OK, handle
from app.delivery.alerts import AlertDelivery, alert_channel
from app.delivery.sinks import DeliveryError, OfferDelivery
from app.faust_app import METRICS, app
from app.settings import SETTINGS
from app.topics import associates_topic
from core.events import BadEvent, decode_object


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
    try:
        fresh, ably = await _delivery().deliver(alert)
    except DeliveryError as exc:
        kind = "permanent" if exc.permanent else "transient"
        METRICS.inc("storestream_associate_alert_failures_total", kind=kind)
        raise BadEvent(f"delivery failed ({kind}"
                       f"{'' if exc.permanent else ', retries exhausted'}): {exc}") from exc
    METRICS.inc("storestream_associate_alerts_delivered_total", sink="redis",
                outcome="delivered" if fresh else "duplicate")
    if ably:
        METRICS.inc("storestream_associate_alerts_delivered_total", sink="ably",
                    outcome="delivered")
    return OK if fresh else DUPLICATE


@app.agent(associates_topic, name="associates")
async def process_associates(stream: StreamT[bytes]) -> None:
    """Arrivals of watched shoppers to their store's associates."""
    async for event in stream.events():
        await handle("associates", event.message, deliver_alert)
