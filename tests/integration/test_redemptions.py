"""Attribution end to end on the real broker: purchases after offers become redemptions."""

from __future__ import annotations

import pytest

from tests.integration import store
from tests.integration.harness import Deployment, wait_for

pytestmark = [pytest.mark.integration]


def test_purchases_of_offered_skus_are_redeemed_once_to_the_latest_qualifying_offer(
    each_path: Deployment,
) -> None:
    deployment = each_path
    worker = deployment.start_worker("w1")
    worker.wait_ready()
    deployment.produce(store.display_records() + store.promotion_records())
    wait_for("displays and promotions on the worker", lambda: worker.metric(
        "storestream_replica_keys", table="displays") == 3 and worker.metric(
        "storestream_replica_applied_total", table="promotions") >= 4, 30)
    deployment.produce([
        store.position("alice", store.D2, 1000),   # p-sku (2002)
        store.position("alice", store.D1, 1020),   # p-seg (tea) and p-off (1001)
    ])
    offers = deployment.read_topic("customers.promotions", expect=3, timeout=30)
    by_pid = {o["pid"]: o for o in offers}
    deployment.produce([
        ("purchases", "alice", {"user_id": "alice", "product_id": "2002", "price": 3.5,
                                "purchase_id": "till-1", "ts": 1500}),
        ("purchases", "alice", {"user_id": "alice", "product_id": "3003", "price": 2.25,
                                "purchase_id": "till-2", "ts": 1600}),
        ("purchases", "alice", {"user_id": "alice", "product_id": "9999", "price": 1,
                                "purchase_id": "till-3", "ts": 1650}),
        ("purchases", "bob", {"user_id": "bob", "product_id": "2002", "price": 3.5,
                              "purchase_id": "till-4", "ts": 1700}),
    ])
    wait_for("the purchases counted", lambda: worker.metric(
        "storestream_events_total", topic=deployment.topic("purchases"), outcome="ok") >= 4, 30)
    # alice walks on, away from every display: her positions pass the purchases.
    deployment.produce([store.position("alice", store.D1, 2000, north_m=50)])
    redeemed = deployment.read_topic("offers.redemptions", expect=2, timeout=30)
    got = sorted((r["purchase_id"], r["offer_id"], r["pid"], r["sku"], r["revenue_cents"],
                  r["seconds_after_offer"]) for r in redeemed)
    assert got == [
        ("till-1", by_pid["p-sku"]["offer_id"], "p-sku", "2002", 350, 500.0),
        ("till-2", by_pid["p-seg"]["offer_id"], "p-seg", "3003", 225, 580.0),
    ]
    assert all(r["_key"] == "alice" and r["uid"] == "alice" for r in redeemed)
    assert worker.metric("storestream_redemptions_total") == 2
    assert worker.metric("storestream_dead_letters_total") == 0
