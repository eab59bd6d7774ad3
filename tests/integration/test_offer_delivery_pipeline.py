"""Offers pushed end to end: worker -> customers.promotions -> delivery agent -> Redis + Ably."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio as redis

from app.dev.devstack import DevStack
from tests.integration import store
from tests.integration.ably_stub import AblyStub
from tests.integration.harness import PATH_IDS, PATHS, Deployment, Worker, deployed, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(params=PATHS, ids=PATH_IDS)
def pushed(request: pytest.FixtureRequest, stack: DevStack, tmp_path: Path,
           ably: AblyStub) -> Iterator[Deployment]:
    """A deployment whose workers push offers to the session's redis and the Ably stub, once
    per processing path (the fast lane, and Faust's delivery agent with ``FAST_LANE=off``)."""
    with deployed(stack, tmp_path, extra_env={
        **ably.worker_env(),
        "FAST_LANE": request.param,
    }) as running:
        yield running


def stream_entries(redis_url: str, stream: str) -> list[dict[str, str]]:
    async def read() -> list[dict[str, str]]:
        client = redis.from_url(redis_url, decode_responses=True)
        try:
            return [fields for _, fields in await client.xrange(stream)]
        finally:
            await client.aclose()
    return asyncio.run(read())


def store_open(worker: Worker) -> None:
    """Wait until the worker's replicas hold every display and every promotion: a position
    matched before the promotions arrived would rightly yield no offer."""
    wait_for("the store", lambda: worker.metric("storestream_replica_keys", table="displays")
             == len(store.display_records()) and worker.metric(
                 "storestream_replica_keys", table="promotions")
             == len(store.promotion_records()), 30)


def ably_settled(worker: Worker, ably: AblyStub, topic: str, records: int) -> Counter[str | None]:
    """Publishes per message id, once the worker has read ``records`` offer records and every
    Ably publish it counted has reached the stub (and none more: nothing else is in flight)."""
    def settled() -> bool:
        published = worker.metric("storestream_offers_delivered_total", sink="ably",
                                  outcome="delivered")
        return (worker.metric("storestream_events_total", topic=topic) >= records
                and published == len(ably.published) > 0)
    wait_for(f"{records} offer records read and their Ably publishes received", settled, 30)
    return ably.publish_counts()


def test_each_offer_is_pushed_once_to_redis_and_ably(pushed: Deployment, ably: AblyStub) -> None:
    worker = pushed.start_worker("w1")
    worker.wait_ready()
    pushed.produce(store.display_records() + store.promotion_records())
    store_open(worker)
    pushed.produce([store.position("alice", store.D2, 100), store.position("bob", store.D2, 101)])
    offers = pushed.read_topic("customers.promotions", expect=2, timeout=30)
    assert len(offers) == 2
    first, second = (o["offer_id"] for o in offers)
    topic = pushed.topic("customers.promotions")
    prefix = pushed.settings.topics.prefix

    # Ably received each offer once, by its id. A Redis duplicate (the backstop reading an
    # offer whose direct push it had not yet seen confirmed, on a loaded host) is published
    # to Ably again under the same id, which Ably discards: the only repeat allowed.
    pushed_once = ably_settled(worker, ably, topic, 2)
    repeats = worker.metric("storestream_offers_delivered_total", sink="redis",
                            outcome="duplicate")
    if not pushed.settings.direct_push:
        assert repeats == 0  # one consumer delivers each record: nothing to race with
    assert set(pushed_once) == {first, second}, pushed_once
    assert sum(pushed_once.values()) == 2 + repeats, pushed_once
    if repeats == 0:
        assert pushed_once == Counter({first: 1, second: 1})

    # The same offer record again (a redelivery): pushed once to Redis; Ably sees the same id.
    again = {k: v for k, v in offers[0].items() if not k.startswith("_")}
    pushed.produce([("customers.promotions", again["uid"], again)])
    wait_for("three offer records read back", lambda: worker.metric(
        "storestream_events_total", topic=topic) >= 3, 30)

    entries = stream_entries(pushed.stack.redis_url, f"{prefix}offers")
    assert sorted(e["offer_id"] for e in entries) == sorted([first, second])
    assert worker.metric("storestream_offers_delivered_total", sink="redis",
                         outcome="delivered") == 2
    if pushed.settings.direct_push:
        # Pushed by the matcher, so the topic's consumer usually finds all three records
        # already pushed; on a loaded host it can read an offer before its push is confirmed
        # and deliver it itself. Either way Redis has each offer once (the stream above).
        outcomes = {outcome: worker.metric("storestream_events_total", topic=topic,
                                           outcome=outcome)
                    for outcome in ("pushed", "ok", "duplicate")}
        assert sum(outcomes.values()) == 3, outcomes
        assert outcomes["pushed"] >= 1, outcomes
    else:
        assert worker.metric("storestream_offers_delivered_total", sink="redis",
                             outcome="duplicate") == 1
    # Ably: the redelivered offer at most once more, under its own id (a Redis duplicate is
    # republished, a record found already pushed is not); the other offer not again.
    after = ably_settled(worker, ably, topic, 3)
    more = worker.metric("storestream_offers_delivered_total", sink="redis",
                         outcome="duplicate") - repeats
    assert after - pushed_once == (Counter({first: int(more)}) if more else Counter())
    if not pushed.settings.direct_push:
        assert after == Counter({first: 2, second: 1})
    by_id = {o["offer_id"]: o for o in offers}
    for message in ably.published:  # every publish: the offer itself, on its shopper's channel
        offer = by_id[message.id]
        assert message.channel == f"{prefix}offers:{offer['uid']}" and message.name == "offer"
        assert message.data == {k: v for k, v in offer.items() if not k.startswith("_")}


def test_permanent_push_failure_goes_to_dead_letters(pushed: Deployment, ably: AblyStub) -> None:
    worker = pushed.start_worker("w1")
    worker.wait_ready()
    ably.fail_next(1, 401, code=40101, message="invalid credentials")
    offer = {"offer_id": "o-1", "uid": "carol", "pid": "p", "sku": "1", "segment": None,
             "variant": None, "store_id": "s1", "discount_pct": 5, "distance_m": 0.1, "ts": 1.0}
    pushed.produce([("customers.promotions", "carol", offer),
                    ("customers.promotions", "carol", b"not an offer")])
    letters = pushed.read_topic("dead-letters", expect=2, timeout=30)
    assert len(letters) == 2
    reasons = sorted(d["error"] for d in letters)
    assert any("permanent" in r and "401" in r for r in reasons), reasons
    assert any("not valid JSON" in r for r in reasons), reasons
    assert orjson.loads(next(d for d in letters if "401" in d["error"])["raw"])["offer_id"] == "o-1"
    assert worker.process.poll() is None


def test_offer_is_pushed_without_waiting_for_its_topic(stack: DevStack, tmp_path: Path,
                                                        ably: AblyStub) -> None:
    """Direct push: the matcher's worker pushes the offer itself; the topic's consumer (here
    reading it once a minute) is only the backstop."""
    with deployed(stack, tmp_path, extra_env={
        **ably.worker_env(), "OFFER_BACKSTOP_MS": "60000",
    }) as running:
        worker = running.start_worker("w1")
        worker.wait_ready()
        running.produce(store.display_records() + store.promotion_records())
        store_open(worker)
        running.produce([store.position("dave", store.D2, 100)])
        (offer,) = running.read_topic("customers.promotions", expect=1, timeout=30)
        wait_for("the push", lambda: len(ably.unique_ids()) == 1, 10)
        topic = running.topic("customers.promotions")
        # Once by its id; a second publish under the same id (which Ably discards) only for a
        # Redis duplicate: the backstop's first read racing the push on a loaded host.
        wait_for("every Ably publish the worker counted at the stub", lambda: worker.metric(
            "storestream_offers_delivered_total", sink="ably", outcome="delivered")
            == len(ably.published) > 0, 10)
        published = ably.publish_counts()
        repeats = worker.metric("storestream_offers_delivered_total", sink="redis",
                                outcome="duplicate")
        assert published == Counter({offer["offer_id"]: 1 + int(repeats)}), (published, repeats)
        entries = stream_entries(running.stack.redis_url,
                                 f"{running.settings.topics.prefix}offers")
        assert [e["offer_id"] for e in entries] == [offer["offer_id"]]
        # The push did not wait for the topic: its consumer (reading it at start, then once
        # a minute) has not read the offer yet or, when its first read came late, found it
        # already pushed ("pushed") or already in Redis ("duplicate"), never delivered it
        # first ("ok").
        assert worker.metric("storestream_events_total", topic=topic, outcome="ok") == 0
