"""The delivery agent: offers from ``customers.promotions`` to Redis and Ably.

With direct push (``OFFER_BACKSTOP_MS`` > 0, the default) the matcher hands its offers to
:data:`PUSHER`, which pushes them from its own task (:mod:`app.delivery.pusher`), and this
agent is the backstop: it reads the topic once per interval and delivers every offer the pusher
has not confirmed. Without it, this agent delivers every offer, reading the topic in every fetch.
Delivery is idempotent per offer_id (a Redis marker, Ably's message id), so a redelivered
offer is pushed once; transient failures are retried with backoff, and an offer that still
cannot be pushed (or never could: bad key, malformed offer) goes to ``dead-letters`` with
the reason.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

from faust.types import StreamT

from agents.common import DUPLICATE, OK, count_batch, count_lane, dead_letter_all, lane_clock
from app.delivery import pusher as direct_push
from app.delivery.sinks import DeliveryError, DeliveryOutcome, OfferDelivery, validate_offer
from app.faust_app import METRICS, app
from app.runtime import fastlane
from app.runtime.fastlane import Source
from app.settings import SETTINGS
from app.topics import offers_topic
from core.events import BadEvent, decode_object
from core.retry import RetryPolicy

log = logging.getLogger(__name__)

#: Outcome of an offer the pusher had already delivered when the backstop read it.
PUSHED = "pushed"


def _failure(exc: DeliveryError) -> str:
    kind = "permanent" if exc.permanent else "transient, retries exhausted"
    METRICS.inc("storestream_offer_delivery_failures_total", kind=kind.split(",")[0])
    return f"delivery failed ({kind}): {exc}"


def _delivered(outcome: DeliveryOutcome) -> str:
    METRICS.inc("storestream_offers_delivered_total", sink="redis", outcome=outcome.redis)
    if outcome.ably == "delivered":
        METRICS.inc("storestream_offers_delivered_total", sink="ably", outcome="delivered")
    return DUPLICATE if outcome.duplicate else OK


async def deliver_batch(delivery: OfferDelivery, batch: Sequence[Source]) -> None:
    """Deliver a batch of offer records (Redis pipelined); failures go to dead-letters."""
    offers: list[tuple[Source, dict[str, Any]]] = []
    failed: list[tuple[Source, str]] = []
    for source in batch:
        try:
            offer = decode_object(source.value)
            validate_offer(offer)
        except BadEvent as exc:
            failed.append((source, str(exc)))
            continue
        except DeliveryError as exc:
            failed.append((source, _failure(exc)))
            continue
        except Exception as exc:  # a bug checking one offer must not stop the others
            log.exception("delivery: failed to check %s[%s]@%s", source.topic,
                          source.partition, source.offset)
            failed.append((source, f"processing failed: {exc!r}"))
            continue
        offers.append((source, offer))
    outcomes: dict[str, int] = {}
    to_deliver = [(source, offer) for source, offer in offers
                  if not PUSHER.pushed(str(offer["offer_id"]))]
    if len(to_deliver) < len(offers):
        outcomes[PUSHED] = len(offers) - len(to_deliver)
        offers = to_deliver
    results = await delivery.deliver_many([offer for _, offer in offers])
    for (source, _), result in zip(offers, results, strict=True):
        if isinstance(result, DeliveryError):
            failed.append((source, _failure(result)))
        else:
            outcome = _delivered(result)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    count_batch("delivery", batch, outcomes)
    await dead_letter_all(failed)


def new_delivery() -> OfferDelivery:
    """A delivery client from this worker's settings (Redis, and Ably when configured)."""
    return OfferDelivery.from_settings(
        SETTINGS.redis_url, SETTINGS.ably_api_key, key_prefix=SETTINGS.topics.prefix,
        max_elapsed_s=30.0,
    )


#: The fast lane's client: created on first use, in the worker's loop, kept for its life.
_lane_delivery = functools.cache(new_delivery)


def _not_pushed(reason: str, count: int) -> None:
    METRICS.inc("storestream_offers_left_to_backstop_total", count, reason=reason)


#: Pushes the matcher's offers as they are emitted (one try each: the backstop retries).
PUSHER = direct_push.DirectPusher(
    lambda: OfferDelivery.from_settings(
        SETTINGS.redis_url, SETTINGS.ably_api_key, key_prefix=SETTINGS.topics.prefix,
        policy=RetryPolicy(attempts=1)),
    on_pushed=_delivered, on_not_pushed=_not_pushed,
)
direct_push.register(PUSHER)


async def push_offers() -> None:
    """Run the direct pusher in a worker with direct push on."""
    if SETTINGS.direct_push and not app.client_only:
        await PUSHER.run()


app.task(push_offers)


@fastlane.lane(offers_topic.get_topic_name())
async def delivery_lane(batch: Sequence[Source]) -> None:
    """The fast lane for ``customers.promotions``: a partition's offers per call."""
    started = lane_clock()
    await deliver_batch(_lane_delivery(), batch)
    count_lane(batch, started)


@app.agent(offers_topic, name="delivery")
async def deliver_offers(stream: StreamT[bytes]) -> None:
    """Push every offer to the shopper's channels (when the fast lane is off)."""
    delivery = new_delivery()
    try:
        async for event in stream.events():
            await deliver_batch(delivery, [fastlane.from_message(event.message)])
    finally:
        await delivery.close()

