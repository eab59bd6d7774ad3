"""Store associates' alerts to Redis and Ably, retried as offers are (issue 21, criterion 5).

An alert (:class:`core.associates.Arrival` as a record: a shopper of a watched tier entering
a store) goes to the store's channel ``{prefix}associates:{store_id}``:

Redis
    One Lua script: if the marker ``{prefix}associate:delivered:{alert_id}`` does not exist,
    set it (a day) and ``PUBLISH`` the alert; a repeat (a retry after a lost answer, a Kafka
    redelivery) publishes nothing.
Ably (only when an API key is configured)
    ``publish(Message(name="arrival", data=<alert>, id=alert_id))`` through the ``ably``
    SDK: Ably takes the message id as an idempotency key, so it is published on every
    delivery, repeats included (an earlier try may have reached Redis and not Ably).

Each sink is tried with :func:`app.delivery.sinks.deliver_with_retry`, the offers' backoff
and classification: transient failures (connection errors, timeouts, Ably 5xx/429, Redis
``LOADING``...) are retried, a permanent one (Ably 4xx, a Redis auth error) is not, and the
caller dead-letters what still failed. Only the alert's own fields are published, never a
position: a record carrying one is refused.

No faust import.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from ably.types.message import Message

from app.delivery.sinks import (
    DeliveryError,
    OfferDelivery,
    classify_ably_error,
    classify_redis_error,
    deliver_with_retry,
)
from core.retry import RetryPolicy

#: What an alert publishes (anything else in the record is left out).
ALERT_FIELDS: Final = ("alert_id", "store_id", "uid", "tier", "event", "ts")
#: Fields that would place the shopper: an alert carrying one is refused.
POSITION_FIELDS: Final = frozenset({"lat", "lon", "latitude", "longitude", "accuracy_m",
                                    "distance_m"})
#: Marker TTL: a redelivered alert within a day is published once.
MARKER_TTL_MS: Final = 24 * 3600 * 1000
#: Ably message name.
ABLY_ALERT_NAME: Final = "arrival"

_PUBLISH_ONCE: Final = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""


def alert_channel(store_id: str, prefix: str = "") -> str:
    """The store's associates channel (Redis and Ably), ``{prefix}associates:{store_id}``."""
    return f"{prefix}associates:{store_id}"


def alert_body(alert: Mapping[str, Any]) -> dict[str, Any]:
    """What is published of an alert record: its own fields, checked; :class:`DeliveryError`
    (permanent) for a record without ``alert_id``/``store_id`` or with a position."""
    placed = POSITION_FIELDS & set(alert)
    if placed:
        raise DeliveryError(f"an associates alert must not carry a position "
                            f"({', '.join(sorted(placed))})", permanent=True)
    for name in ("alert_id", "store_id"):
        if not isinstance(alert.get(name), str) or not alert[name]:
            raise DeliveryError(f"an associates alert needs a non-empty string {name!r}",
                                permanent=True)
    return {name: alert[name] for name in ALERT_FIELDS if name in alert}


class RedisAlertSink:
    """Publishes an alert on Redis once per ``alert_id`` (see the module's docstring)."""

    name = "redis"

    def __init__(self, client: Any, prefix: str = "") -> None:
        self.client = client
        self.prefix = prefix

    async def deliver(self, alert: Mapping[str, Any]) -> bool:
        """True when published now, False when the marker says it was before."""
        marker = f"{self.prefix}associate:delivered:{alert['alert_id']}"
        body = json.dumps(alert, separators=(",", ":"))
        try:
            published = await self.client.eval(
                _PUBLISH_ONCE, 1, marker, MARKER_TTL_MS,
                alert_channel(str(alert["store_id"]), self.prefix), body)
        except Exception as exc:
            raise classify_redis_error(exc) from exc
        return bool(published)

    async def close(self) -> None:
        """The client belongs to the offers' delivery: nothing to close here."""


class AblyAlertSink:
    """Publishes an alert on Ably with message id ``alert_id``."""

    name = "ably"

    def __init__(self, client: Any, prefix: str = "") -> None:
        self.client = client
        self.prefix = prefix

    async def deliver(self, alert: Mapping[str, Any]) -> bool:
        """Publish (always True: Ably keeps one message per id)."""
        name = alert_channel(str(alert["store_id"]), self.prefix)
        channels = self.client.channels
        try:
            await channels.get(name).publish(
                Message(name=ABLY_ALERT_NAME, data=dict(alert), id=alert["alert_id"]))
        except Exception as exc:
            raise classify_ably_error(exc) from exc
        finally:
            channels.release(name)  # the SDK caches channel objects: one per store
        return True

    async def close(self) -> None:
        """The client belongs to the offers' delivery: nothing to close here."""


class AlertDelivery:
    """Redis, then Ably when configured, each with the offers' retries."""

    def __init__(self, clients: OfferDelivery, prefix: str = "",
                 policy: RetryPolicy | None = None, max_elapsed_s: float | None = 30.0) -> None:
        redis_sink: Any = clients.redis_sink
        self.redis = RedisAlertSink(redis_sink.client, prefix)
        ably_sink: Any = clients.ably_sink
        self.ably = None if ably_sink is None else AblyAlertSink(ably_sink.client, prefix)
        self.policy = policy if policy is not None else RetryPolicy()
        self.max_elapsed_s = max_elapsed_s

    async def deliver(self, alert: Mapping[str, Any]) -> tuple[bool, bool]:
        """Deliver one alert: (published on Redis now, published on Ably). Raises
        :class:`DeliveryError` when a sink failed for good (see
        :func:`app.delivery.sinks.deliver_with_retry`)."""
        body = alert_body(alert)
        fresh = await deliver_with_retry(self.redis, body, self.policy,
                                         max_elapsed_s=self.max_elapsed_s)
        if self.ably is None:
            return fresh, False
        try:
            await deliver_with_retry(self.ably, body, self.policy,
                                     max_elapsed_s=self.max_elapsed_s)
        except DeliveryError as exc:
            exc.reason = f"{exc.reason} (redis: {'delivered' if fresh else 'duplicate'})"
            raise
        return fresh, True
