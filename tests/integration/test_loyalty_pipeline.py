"""The loyalty half end to end on the real embedded broker: seed 003 replayed through a worker."""

from __future__ import annotations

from typing import Any

import pytest

from core import sample
from tests.integration.harness import Deployment, Worker, wait_for

# The demo runs on Tansu: the recipe replay and offers are proven on both brokers.
pytestmark = [pytest.mark.integration, pytest.mark.brokers("kafka", "tansu")]

CUSTOMERS = [name for _, name in sample.USERS]


def records(events: list[sample.SampleEvent]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e.topic, e.key, e.value) for e in events]


def documents(worker: Worker) -> dict[str, Any]:
    return {user: worker.get(f"/customers/{user}/")[1] for user in CUSTOMERS}


def expected_document(user: str, total: str, tier: str) -> dict[str, Any]:
    coffee_total, sequence, free = sample.EXPECTED_COFFEE[user]
    return {
        "user_id": user,
        "total": float(total),
        "reward_level": tier,
        "unpriced_purchases": 0,
        "coffee": {"total": coffee_total, "sequence": sequence, "next_one_free": free},
        "promotions": sample.EXPECTED_CAMPAIGNS[user],
    }


def test_recipe_replay_gives_every_table_of_the_recipe(each_path: Deployment) -> None:
    deployment = each_path
    worker = deployment.start_worker("w1")
    worker.wait_ready()
    before_dog = list(sample.recipe_events(include_dog=False))
    produced = deployment.produce(records(before_dog))
    wait_for("every event counted", lambda: worker.metric("storestream_events_total") >= produced,
             60)

    # The catalogue replica follows the catalogue changelog on its own consumer: wait for it.
    wait_for("kris priced", lambda: worker.get("/customers/kris/")[1]["total"] == 74.28, 30)
    kris = worker.get("/customers/kris/")[1]
    assert kris["total"] == 74.28 and kris["reward_level"] == "CLIMBING"
    assert kris["promotions"] == {"loose_leaf": ["coffee"]}

    dog = [e for e in sample.recipe_events() if e.value.get("purchase_id") == "p999"]
    deployment.produce(records(dog))
    wait_for("the dog", lambda: worker.get("/customers/kris/")[1]["total"] == 324.27, 30)

    expected = {
        user: expected_document(user, sample.EXPECTED_TOTALS[user], sample.EXPECTED_TIERS[user])
        for user in CUSTOMERS
    }
    assert documents(worker) == expected
    assert worker.metric("storestream_events_total", outcome="ok") == produced + 1
    assert worker.metric("storestream_dead_letters_total") == 0
    # Purchases took the path asked for: the fast lane (batches straight from the consumer,
    # bulk changelog) or, with it off, Faust's agents one event at a time.
    purchases = sum(1 for e in before_dog + dog if e.topic == "purchases")
    on_lane = purchases if deployment.env["FAST_LANE"] == "on" else 0
    assert worker.metric("storestream_fast_lane_records_total") == on_lane

    # Input partitions are fetched; the tables' own changelogs, once recovered, are paused
    # in aiokafka too (Faust's pause alone only filters what it takes from aiokafka).
    assert worker.metric("storestream_consumer_partitions", kind="input",
                         state="fetching") > 0
    assert worker.metric("storestream_consumer_partitions", kind="changelog",
                         state="paused") > 0
    assert worker.metric("storestream_consumer_partitions", kind="changelog",
                         state="fetching") == 0

    status, missing = worker.get("/customers/nobody/")
    assert status == 404 and missing["error"] == "not found"

    # Faust's built-in table view serves the same changelog-backed state.
    status, raw = worker.get("/table/stamps/kris/")
    assert status == 200 and raw["total"] == 13


def test_loyalty_events_announce_tier_free_coffee_and_campaigns(deployment: Deployment) -> None:
    worker = deployment.start_worker("w1")
    worker.wait_ready()
    script = list(sample.recipe_events())
    rise = next(i for i, e in enumerate(script) if e.topic == "products" and i > 10)
    # The recipe's order, with the catalogue visible before the purchases that follow it
    # (loyalty events are emitted when a purchase is processed, with the prices known then).
    for chunk, catalogue_size in ((script[:10], 6), (script[10:rise], None),
                                  (script[rise:rise + 1], 7), (script[rise + 1:], None)):
        deployment.produce(records(chunk))
        if catalogue_size:
            wait_for("the catalogue", lambda n=catalogue_size: worker.metric(
                "storestream_replica_applied_total") >= n, 30)
    events = deployment.read_topic("loyalty.events", expect=11, timeout=60)
    seen = {(e["user_id"], e["type"], e["details"].get("to") or e["details"].get("campaign")
             or e["details"].get("total")) for e in events}
    assert ("kris", "tier_changed", "SILVER") in seen
    assert ("rick", "tier_changed", "GOLD") in seen
    assert ("dave", "tier_changed", "BRONZE") in seen
    assert ("yeva", "free_coffee_ready", 5) in seen
    assert ("kris", "free_coffee_ready", 11) in seen
    assert ("kris", "campaign_qualified", "french_poodle") in seen
    assert ("kris", "campaign_qualified", "loose_leaf") in seen
    assert all(e["_key"] == e["user_id"] for e in events)
    assert len(events) == 11  # each change announced once, never repeated
