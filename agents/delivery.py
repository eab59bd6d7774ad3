"""The delivery agent: offers from ``customers.promotions`` to Redis and Ably.

With direct push (``OFFER_BACKSTOP_MS`` > 0, the default) the matcher hands its offers to
:data:`PUSHER`, which pushes them from its own task (:mod:`app.delivery.pusher`), and this
agent is the backstop: it reads the topic once per interval and delivers every offer the pusher
has not confirmed. Without it, this agent delivers every offer, reading the topic in every fetch.
Delivery is idempotent per offer_id (a Redis marker, Ably's message id), so a redelivered
offer is pushed once. An offer that cannot be pushed for now (Redis or Ably down) is parked
and retried for as long as it takes, its partition paused and its offset not committed
(:mod:`app.delivery.parking`; with the fast lane off, the agent retries it in place); one that
never could (bad key, malformed offer) goes to ``dead-letters`` with the reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from typing import Any, cast

from faust.types import TP, StreamT

from agents.common import (
    DUPLICATE,
    OK,
    count_batch,
    count_lane,
    dead_letter_all,
    lane_clock,
    withhold_if_held,
)
from app.delivery import parking
from app.delivery import pusher as direct_push
from app.delivery.parking import ConsumerHooks, Parked, Parking, Partition, Status
from app.delivery.sinks import DeliveryError, DeliveryOutcome, OfferDelivery, validate_offer
from app.faust_app import METRICS, app
from app.runtime import fastlane
from app.runtime.fastlane import Source
from app.settings import SETTINGS
from app.topics import offers_topic
from core.events import BadEvent, decode_object
from core.retry import RetryPolicy, delay

log = logging.getLogger(__name__)

#: Outcome of an offer the pusher had already delivered when the backstop read it.
PUSHED = "pushed"
#: Outcome of an offer parked for a later try (Redis or Ably down): delivered later.
PARKED = "parked"


def _failure(exc: DeliveryError) -> str:
    kind = "permanent" if exc.permanent else "transient, retries exhausted"
    METRICS.inc("storestream_offer_delivery_failures_total", kind=kind.split(",")[0])
    return f"delivery failed ({kind}): {exc}"


def _delivered(outcome: DeliveryOutcome) -> str:
    METRICS.inc("storestream_offers_delivered_total", sink="redis", outcome=outcome.redis)
    if outcome.ably == "delivered":
        METRICS.inc("storestream_offers_delivered_total", sink="ably", outcome="delivered")
    return DUPLICATE if outcome.duplicate else OK


async def deliver_batch(delivery: OfferDelivery, batch: Sequence[Source],
                        parked: Parking | None = None) -> None:
    """Deliver a batch of offer records (Redis pipelined); permanent failures go to
    dead-letters. Transient ones are parked in ``parked`` (their offsets held back from the
    batch's acknowledgement), or retried here until delivered when it is None."""
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
    waiting: list[tuple[Source, dict[str, Any]]] = []
    reason = ""
    if parked is not None and parked.active:
        waiting, offers = offers, []  # an outage: no try until the parked ones got through
    results = await delivery.deliver_many([offer for _, offer in offers],
                                          halt_on_transient=True) if offers else []
    for (source, offer), result in zip(offers, results, strict=True):
        if isinstance(result, DeliveryError):
            if result.permanent:
                failed.append((source, _failure(result)))
            else:
                waiting.append((source, offer))
                reason = str(result)
        else:
            outcome = _delivered(result)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    if waiting and parked is not None:
        for source, _ in waiting:
            fastlane.hold(source)
        parked.park([Parked(source, offer) for source, offer in waiting], reason)
        outcomes[PARKED] = len(waiting)
    elif waiting:
        failed += await _deliver_patiently(delivery, waiting, outcomes)
    count_batch("delivery", batch, outcomes)
    await dead_letter_all(failed)


async def _deliver_patiently(delivery: OfferDelivery,
                             waiting: list[tuple[Source, dict[str, Any]]],
                             outcomes: dict[str, int]) -> list[tuple[Source, str]]:
    """Retry offers with backoff until each is delivered or fails for good (the agent path:
    its stream waits; the records' acknowledgements wait with it). The permanent failures."""
    failed: list[tuple[Source, str]] = []
    retries = 0
    while waiting:
        parking.note_stalled("offers", len(waiting))
        await asyncio.sleep(delay(parking.BACKOFF, retries))
        retries += 1
        results = await delivery.deliver_many([offer for _, offer in waiting],
                                              halt_on_transient=True)
        still: list[tuple[Source, dict[str, Any]]] = []
        for (source, offer), result in zip(waiting, results, strict=True):
            if isinstance(result, DeliveryOutcome):
                outcome = _delivered(result)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            elif result.permanent:
                failed.append((source, _failure(result)))
            else:
                still.append((source, offer))
        waiting = still
    parking.note_stalled("offers", 0)
    return failed


def new_delivery(policy: RetryPolicy | None = None,
                 max_elapsed_s: float | None = 30.0) -> OfferDelivery:
    """A delivery client from this worker's settings (Redis, and Ably when configured)."""
    return OfferDelivery.from_settings(
        SETTINGS.redis_url, SETTINGS.ably_api_key, key_prefix=SETTINGS.topics.prefix,
        policy=policy, max_elapsed_s=max_elapsed_s,
    )


#: The fast lane's client: created on first use, in the worker's loop, kept for its life.
#: One try per sink: what fails for now is parked and retried beside the lane, which meanwhile
#: goes on with the other topics.
_lane_delivery = functools.cache(lambda: new_delivery(RetryPolicy(attempts=1), None))


def _pause(partition: Partition) -> None:
    app.consumer.pause_partitions({TP(*partition)})


def _resume(partition: Partition) -> None:
    app.consumer.resume_partitions({TP(*partition)})


async def _settle(partition: Partition, generation: int, offsets: list[int],
                  failed: list[tuple[Any, str]]) -> bool:
    """Acknowledge delivered parked offers, dead-lettering the failed ones first."""
    async def dead() -> None:
        await dead_letter_all(failed)
    consumer = cast(Any, app.consumer)
    return cast(bool, await consumer.settle_held(
        TP(*partition), generation, offsets, (failed[0][0], dead) if failed else None))


def _parking_changed(status: Status) -> None:
    METRICS.set("storestream_delivery_stalled", 1.0 if status.stalled else 0.0, kind="offers")
    METRICS.set("storestream_delivery_parked", float(status.offers))
    METRICS.set("storestream_delivery_parked_partitions", float(status.partitions))
    parking.note_stalled("offers", status.offers)


#: Offers that could not be delivered for now, retried beside the fast lane.
PARKING = Parking(
    lambda: new_delivery(RetryPolicy(attempts=1), None),
    ConsumerHooks(generation=lambda: int(app.consumer_generation_id), pause=_pause,
                  resume=_resume, settle=_settle),
    on_delivered=_delivered, on_change=_parking_changed,
)


async def retry_parked() -> None:
    """Retry parked offers (in a worker)."""
    if not app.client_only:
        await PARKING.run()


app.task(retry_parked)


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
    await deliver_batch(_lane_delivery(), batch, PARKING)
    count_lane(batch, started)


@app.agent(offers_topic, name="delivery")
async def deliver_offers(stream: StreamT[bytes]) -> None:
    """Push every offer to the shopper's channels (when the fast lane is off)."""
    delivery = new_delivery()
    try:
        async for event in stream.events():
            fastlane.take_held()
            await deliver_batch(delivery, [fastlane.from_message(event.message)])
            withhold_if_held(event.message)  # a dead letter held back (app.outcomes)
    finally:
        await delivery.close()

