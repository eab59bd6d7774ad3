"""Store associates: ``associates.alerts`` to the store's channel on Redis and Ably.

Each alert (a shopper of ``ASSOCIATE_TIERS`` arriving, :mod:`core.associates`; never a
position) is published to ``associates:{store_id}`` on Redis once per ``alert_id`` (a marker
key set in the same script) and, with ``ABLY_API_KEY``, on Ably with message id ``alert_id``
(Ably's idempotency key). A failure dead-letters the alert with the reason (no retries yet).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from ably.types.message import Message
from faust.types import StreamT

from agents.common import DUPLICATE, OK, handle
from app.delivery.sinks import OfferDelivery
from app.faust_app import METRICS, app
from app.settings import SETTINGS
from app.topics import associates_topic
from core.events import BadEvent, decode_object, required_str

#: Marker TTL: a redelivered alert within a day is published once.
MARKER_TTL_MS = 24 * 3600 * 1000

_PUBLISH_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""


def channel(store_id: str) -> str:
    """The store's associates channel, ``{TOPIC_PREFIX}associates:{store_id}``."""
    return f"{SETTINGS.topics.prefix}associates:{store_id}"


@functools.cache
def _clients() -> OfferDelivery:
    return OfferDelivery.from_settings(SETTINGS.redis_url, SETTINGS.ably_api_key,
                                       key_prefix=SETTINGS.topics.prefix)


async def deliver_alert(message: Any) -> str:
    """Publish one alert to the store's channel (once per alert_id)."""
    alert = decode_object(message.value)
    alert_id = required_str(alert, "alert_id")
    store_id = required_str(alert, "store_id")
    if "lat" in alert or "lon" in alert:
        raise BadEvent("an associates alert must not carry a position")
    clients = _clients()
    redis_sink: Any = clients.redis_sink
    client = redis_sink.client
    body = json.dumps(alert, separators=(",", ":"))
    marker = f"{SETTINGS.topics.prefix}associate:delivered:{alert_id}"
    published = await client.eval(_PUBLISH_ONCE, 1, marker, MARKER_TTL_MS, channel(store_id),
                                  body)
    if clients.ably_sink is not None:
        channels = clients.ably_sink.client.channels  # type: ignore[attr-defined]
        name = channel(store_id)
        try:
            await channels.get(name).publish(Message(name="arrival", data=alert, id=alert_id))
        finally:
            channels.release(name)
    METRICS.inc("storestream_associate_alerts_delivered_total",
                outcome="delivered" if published else "duplicate")
    return OK if published else DUPLICATE


@app.agent(associates_topic, name="associates")
async def process_associates(stream: StreamT[bytes]) -> None:
    """Arrivals of watched shoppers to their store's associates."""
    async for event in stream.events():
        await handle("associates", event.message, deliver_alert)
