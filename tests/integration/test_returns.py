"""Returns end to end on Apache Kafka (issue 22): the recipe replayed, then Kris returns the
dog, on both processing paths, and again after a restart (the ledger is recovered)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from core import sample
from tests.integration.harness import Deployment, wait_for
from tests.integration.test_key_partitioners import murmur2_partition

pytestmark = [pytest.mark.integration]


def records(events: list[sample.SampleEvent]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e.topic, e.key, e.value) for e in events]


def test_returning_the_dog_takes_kris_back_to_before_it_and_bad_returns_are_dead_lettered(
        each_path: Deployment) -> None:
    deployment = each_path
    worker = deployment.start_worker("w1")
    worker.wait_ready()
    script = list(sample.recipe_events())
    # The catalogue first (loyalty events are emitted with the prices known at the time).
    products = [e for e in script if e.topic == "products"]
    deployment.produce(records(products))
    wait_for("the catalogue", lambda: worker.metric("storestream_replica_applied_total")
             >= len(products), 30)
    deployment.produce(records([e for e in script if e.topic != "products"]))
    wait_for("the dog", lambda: worker.get("/customers/kris/")[1].get("total") == 324.27, 60)
    before_dog = worker.get("/customers/kris/")[1]
    assert before_dog["promotions"] == {"french_poodle": ["beret", "dog"],
                                        "loose_leaf": ["coffee"]}

    dog = next(e for e in sample.recipe_events() if e.value.get("purchase_id") == "p999")
    returned_at = dog.value["ts"] + 60.0
    deployment.produce([
        ("returns", "kris", {"user_id": "kris", "purchase_id": "p999", "ts": returned_at}),
        ("returns", "kris", {"user_id": "kris", "purchase_id": "p999", "ts": returned_at + 1}),
        ("returns", "kris", {"user_id": "kris", "purchase_id": "nope", "ts": 1.0}),
    ])
    wait_for("the dog returned", lambda: worker.get("/customers/kris/")[1]["total"] == 74.28,
             60)
    kris = worker.get("/customers/kris/")[1]
    assert kris["reward_level"] == "CLIMBING"
    assert kris["promotions"] == {"loose_leaf": ["coffee"]}
    assert kris["coffee"] == before_dog["coffee"]

    letters = deployment.read_topic("dead-letters", expect=2, timeout=60)
    assert sorted((letter["offset"], letter["error"]) for letter in letters) == [
        (1, "purchase 'p999' already returned"), (2, "unknown purchase 'nope'")]
    events = deployment.read_topic("loyalty.events", expect=10_000, timeout=10)
    kris_events = [(e["type"], e["details"].get("to")) for e in events
                   if e["user_id"] == "kris"]
    assert kris_events[-2:] == [("purchase_returned", None), ("tier_changed", "CLIMBING")]

    # A second worker started after the first stopped recovers the ledger: the dog stays
    # returned, and a third return of it is refused again.
    worker.stop()
    second = deployment.start_worker("w2")
    second.wait_ready()
    assert second.get("/customers/kris/")[1] == kris
    deployment.produce([
        ("returns", "kris", {"user_id": "kris", "purchase_id": "p999", "ts": returned_at + 2}),
    ])
    letters = deployment.read_topic("dead-letters", expect=3, timeout=60)
    assert len(letters) == 3 and letters[-1]["error"] == "purchase 'p999' already returned"
    assert second.get("/customers/kris/")[1] == kris


def test_keyless_returns_are_applied_on_the_partition_that_owns_the_customer(
        each_path: Deployment) -> None:
    """A return without a key lands on any partition; it is re-keyed by its ``user_id``
    through the returns' repartition topic (``REPARTITION=keyless``, the default) and taken
    back where ann's purchases are, beside a keyed return of hers (two offset spaces: the
    keyless ones come at repartition offsets 0 and 1, as the keyed one at returns offset 0)."""
    deployment = each_path
    worker = deployment.start_worker("w1")
    worker.wait_ready()
    bought = [("a1", "tv", 450.0), ("a2", "coffee", 3.0), ("a3", "tea", 2.0)]
    deployment.produce([("purchases", "ann", {"user_id": "ann", "product_id": product,
                                              "purchase_id": pid, "price": price,
                                              "ts": 1_000.0 + n})
                        for n, (pid, product, price) in enumerate(bought)])
    wait_for("ann's purchases", lambda: worker.get("/customers/ann/")[1].get("total") == 455.0,
             60)
    assert worker.get("/customers/ann/")[1]["reward_level"] == "GOLD"
    owner = murmur2_partition("ann")
    elsewhere = (owner + 1) % 4
    deployment.produce([("returns", "ann", {"user_id": "ann", "purchase_id": "a3",
                                            "ts": 1_010.0})])
    producer = Producer({"bootstrap.servers": deployment.stack.bootstrap, "acks": "all"})
    for n, pid in enumerate(("a1", "a2")):
        producer.produce(deployment.topic("returns"), partition=elsewhere,
                         value=orjson.dumps({"user_id": "ann", "purchase_id": pid,
                                             "ts": 1_011.0 + n}))
    assert producer.flush(30) == 0
    wait_for("every return taken back",
             lambda: worker.get("/customers/ann/")[1].get("total") == 0.0, 60)
    ann = worker.get("/customers/ann/")[1]
    assert ann["reward_level"] == "CLIMBING" and ann["coffee"]["total"] == 0
    assert worker.metric("storestream_events_total", topic=deployment.topic("returns"),
                         outcome="repartitioned") == 2
    assert worker.metric("storestream_dead_letters_total") == 0
