"""Attribution end to end on the real broker: purchases after offers become redemptions."""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path

import pytest

from app.dev.devstack import DevStack
from tests.integration import store
from tests.integration.harness import Deployment, deployed, wait_for

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


def held_out_at(uid: str, pct: float) -> bool:
    """The control group as the README defines it: SHA-256 of the uid, 0.01 % buckets."""
    digest = hashlib.sha256(b"storestream-control\x00" + uid.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < pct * 100


def test_two_workers_serve_every_promotions_figures_combined_with_the_control_group(
    stack: DevStack, tmp_path: Path,
) -> None:
    shoppers = [f"shopper-{n:02d}" for n in range(16)]
    buyers = set(shoppers[::2])
    control = {uid for uid in shoppers if held_out_at(uid, 50)}
    assert control and control != set(shoppers)
    with deployed(stack, tmp_path, token="it-token-21",
                  extra_env={"CONTROL_GROUP_PCT": "50"}) as deployment:
        workers = [deployment.start_worker("w1"), deployment.start_worker("w2")]
        for worker in workers:
            worker.wait_ready()
        deployment.produce(store.display_records() + store.promotion_records())
        for worker in workers:
            wait_for("displays and promotions on the worker", lambda w=worker: w.metric(
                "storestream_replica_keys", table="displays") == 3 and w.metric(
                "storestream_replica_applied_total", table="promotions") >= 4, 30)
        deployment.produce([store.position(uid, store.D2, 1000) for uid in shoppers])
        sent = deployment.read_topic("customers.promotions", expect=16 - len(control))
        held = deployment.read_topic("offers.held_out", expect=len(control))
        assert {o["uid"] for o in sent} == set(shoppers) - control
        assert {o["uid"] for o in held} == control and all(o["held_out"] for o in held)
        deployment.produce([("purchases", uid, {"user_id": uid, "product_id": "2002",
                                                "price": 2, "ts": 1500}) for uid in buyers])
        wait_for("the purchases counted", lambda: sum(w.metric(
            "storestream_events_total", topic=deployment.topic("purchases"), outcome="ok")
            for w in workers) >= len(buyers), 30)
        deployment.produce([store.position(uid, store.D2, 2000, north_m=50)
                            for uid in shoppers])
        deployment.read_topic("offers.redemptions", expect=len(buyers))

        def expected(group: set[str]) -> dict[str, object]:
            redeemed = len(group & buyers)
            return {"offers": len(group), "redeemed": redeemed, "redemptions": redeemed,
                    "conversion": round(redeemed / len(group), 4),
                    "revenue_cents": 200 * redeemed}

        for worker in workers:
            wait_for("every worker's figures", lambda w=worker: w.get("/promotions/p-sku/")[1]
                     .get("sent", {}).get("redemptions") == len(buyers - control) and w.get(
                         "/promotions/p-sku/")[1]["held_out"]["redemptions"] == len(
                         buyers & control), 30)
            status, figures = worker.get("/promotions/p-sku/")
            assert status == 200
            assert figures["sent"] == expected(set(shoppers) - control)
            assert figures["held_out"] == expected(control)
            status, every = worker.get("/promotions/")
            assert status == 200 and [p["pid"] for p in every["promotions"]] == ["p-sku"]
            assert worker.get("/promotions/p-none/")[0] == 404
            assert worker.get("/promotions/", token=None)[0] == 401
            assert worker.get("/promotions/p-sku/", token=None)[0] == 401


def test_a_worker_killed_before_its_commit_emits_no_redemption_twice(
    deployment: Deployment,
) -> None:
    first = deployment.start_worker("w1")
    first.wait_ready()
    deployment.produce(store.display_records() + store.promotion_records())
    wait_for("displays and promotions on the worker", lambda: first.metric(
        "storestream_replica_keys", table="displays") == 3 and first.metric(
        "storestream_replica_applied_total", table="promotions") >= 4, 30)
    shoppers = [f"s{n:02d}" for n in range(20)]
    deployment.produce([store.position(uid, store.D2, 1000) for uid in shoppers])
    deployment.read_topic("customers.promotions", expect=len(shoppers), timeout=30)
    deployment.produce(
        [("purchases", uid, {"user_id": uid, "product_id": "2002", "price": 1,
                             "purchase_id": f"till-{uid}", "ts": 1100}) for uid in shoppers]
        + [store.position(uid, store.D2, 1200, north_m=50) for uid in shoppers])
    deployment.read_topic("offers.redemptions", expect=len(shoppers), timeout=30)
    first.stop(signal.SIGKILL)  # within the commit interval: records are delivered again
    second = deployment.start_worker("w2")
    second.wait_ready()
    deployment.produce([store.position("late", store.D1, 5000)])  # a marker: all caught up
    wait_for("the second worker caught up", lambda: second.metric(
        "storestream_events_total", topic=deployment.topic("customers.locations")) >= 1, 60)
    time.sleep(3)
    # One more than expected: the read waits out its timeout and returns every record there.
    redeemed = deployment.read_topic("offers.redemptions", expect=len(shoppers) + 1,
                                     timeout=10)
    assert sorted(r["purchase_id"] for r in redeemed) == sorted(f"till-{u}" for u in shoppers)
