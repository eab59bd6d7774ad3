"""Accuracy, dwell, enter/exit events, frequency caps and quiet hours on the real broker."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
import redis

from app.dev.devstack import DevStack
from tests.integration import store
from tests.integration.ably_stub import AblyStub
from tests.integration.harness import deployed, wait_for

pytestmark = [pytest.mark.integration]


def test_accuracy_dwell_presence_and_a_visit_cap_on_one_worker(
    stack: DevStack, tmp_path: Path,
) -> None:
    env = {"MAX_ACCURACY_M": "5", "MAX_OFFERS_PER_VISIT": "2", "VISIT_GAP_S": "600"}
    with deployed(stack, tmp_path, extra_env=env) as deployment:
        worker = deployment.start_worker("w1")
        worker.wait_ready()
        deployment.produce(store.display_records() + store.promotion_records() + [
            ("products.promotions", "p-dwell", {"pid": "p-dwell", "sku": "2002",
                                                "discount_pct": 5, "dwell_s": 30, "ts": 1.0}),
        ])
        wait_for("displays and promotions on the worker", lambda: worker.metric(
            "storestream_replica_keys", table="displays") == 3 and worker.metric(
            "storestream_replica_applied_total", table="promotions") >= 5, 30)
        sloppy = store.position("alice", store.D2, 990)
        sloppy[2]["accuracy_m"] = 12.0
        deployment.produce([
            sloppy,                                      # too inaccurate: nothing at all
            store.position("alice", store.D2, 1000),    # enters 2002: p-sku, not p-dwell yet
            store.position("alice", store.D2, 1031),    # stayed 31 s: p-dwell
            store.position("alice", store.D1, 1040),    # exits 2002, enters 1001: capped
            store.position("alice", store.D1, 1700),    # a new visit: p-seg and p-off
        ])
        offers = deployment.read_topic("customers.promotions", expect=4, timeout=30)
        assert [(o["pid"], o["ts"]) for o in offers] == [
            ("p-sku", 1000), ("p-dwell", 1031), ("p-off", 1700), ("p-seg", 1700)]
        presence = deployment.read_topic("displays.presence", expect=3, timeout=30)
        assert [(p["event"], p["sku"], p["ts"], p.get("dwell_s")) for p in presence] == [
            ("enter", "2002", 1000, None), ("exit", "2002", 1040, 40.0),
            ("enter", "1001", 1040, None)]
        assert worker.metric("storestream_positions_inaccurate_total") == 1
        assert worker.metric("storestream_offers_withheld_total", reason="visit_cap") == 2
        assert worker.metric("storestream_dead_letters_total") == 0


def test_a_gold_shoppers_arrival_reaches_the_stores_associates_once_per_visit_without_position(
    stack: DevStack, tmp_path: Path, ably: AblyStub,
) -> None:
    """On Redis and on Ably (the real SDK against the local stub, whose first two publishes
    fail with 503: retried as offers are), once per visit, never with the position."""
    env = {**ably.worker_env(), "VISIT_GAP_S": "600"}
    with deployed(stack, tmp_path, extra_env=env) as deployment:
        worker = deployment.start_worker("w1")
        worker.wait_ready()
        deployment.produce([("purchases", "goldie", {"user_id": "goldie", "product_id": "tv",
                                                     "price": 500})])
        wait_for("goldie is GOLD", lambda: worker.get("/customers/goldie/")[1].get(
            "reward_level") == "GOLD", 30)
        channel = f"{deployment.settings.topics.prefix}associates:s1"
        client = redis.Redis.from_url(stack.redis_url)
        pubsub = client.pubsub()
        pubsub.subscribe(channel)
        assert pubsub.get_message(timeout=2.0) is not None  # the subscription's confirmation
        ably.fail_next(2, 503)
        deployment.produce([store.position("goldie", store.D1, 1000),
                            store.position("goldie", store.D2, 1010),   # the same visit
                            store.position("alice", store.D1, 1020),    # CLIMBING: not heard
                            store.position("goldie", store.D1, 1700)])  # a new visit
        alerts = deployment.read_topic("associates.alerts", expect=2, timeout=30)
        assert [(a["uid"], a["store_id"], a["tier"], a["ts"]) for a in alerts] == [
            ("goldie", "s1", "GOLD", 1000), ("goldie", "s1", "GOLD", 1700)]
        heard = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(heard) < 2:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                heard.append(orjson.loads(message["data"]))
        assert [(h["uid"], h["tier"], h["event"], h["ts"]) for h in heard] == [
            ("goldie", "GOLD", "arrived", 1000), ("goldie", "GOLD", "arrived", 1700)]
        wait_for("both alerts on Ably", lambda: len(ably.on_channel(channel)) == 2, 30)
        published = ably.on_channel(channel)
        assert [m.id for m in published] == [a["alert_id"] for a in alerts]
        assert [m.name for m in published] == ["arrival", "arrival"]
        assert ably.publish_attempts == 4  # two 503s retried, then one publish per alert
        position = {"lat", "lon", "latitude", "longitude", "accuracy_m", "distance_m"}
        for body in [*heard, *(m.data for m in published)]:
            assert not position & set(body), body
        assert worker.metric("storestream_associate_alerts_delivered_total", sink="ably") == 2
        assert worker.metric("storestream_dead_letters_total") == 0
        pubsub.close()
        client.close()
