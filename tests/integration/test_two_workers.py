"""Two workers split the partitions; every customer is answered identically from both ports."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from core import sample
from core.loyalty import LoyaltyRules, Purchase, reference_documents
from core.money import to_cents
from core.pricing import PriceHistory, with_price
from tests.integration.harness import Deployment, wait_for

pytestmark = pytest.mark.integration


def synthetic_purchases(customers: int, seed: int = 7) -> list[dict[str, Any]]:
    """Purchases of catalogue products (after every price change) by many customers."""
    rnd = random.Random(seed)
    products = [p for p, _, _ in sample.PRODUCTS]
    out = []
    ts = sample.BASE_TS + 1_000
    for _ in range(customers * 5):
        ts += 1
        user = f"c{rnd.randrange(customers):03d}"
        event: dict[str, Any] = {"user_id": user, "product_id": rnd.choice(products), "ts": ts}
        if rnd.random() < 0.2:
            event["price"] = round(rnd.uniform(0, 50), 2)
        out.append(event)
    return out


def reference(purchase_events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What every customer's document must be, from the input log and the pure rules."""
    prices: dict[str, PriceHistory] = {}
    for event in sample.recipe_events():
        if event.topic == "products":
            v = event.value
            prices[v["product_id"]] = with_price(prices.get(v["product_id"], ()), v["ts"],
                                                 to_cents(v["price"]))
    purchases = [
        Purchase(v["user_id"], v["product_id"], v["ts"],
                 None if v.get("price") is None else to_cents(v["price"]))
        for v in purchase_events
    ]
    return reference_documents(purchases, lambda product: prices.get(product, ()),
                               LoyaltyRules())


def test_same_answer_from_both_workers_for_every_customer(secured: Deployment) -> None:
    deployment = secured
    first, second = deployment.start_two_workers()

    recipe = [(e.topic, e.key, e.value) for e in sample.recipe_events()]
    extra = synthetic_purchases(60)
    records = recipe + [("purchases", e["user_id"], e) for e in extra]
    produced = deployment.produce(records)
    expected = reference([e.value for e in sample.recipe_events() if e.topic == "purchases"]
                         + extra)
    # Every event processed and committed by the group (bounded polls: commits are periodic),
    # then counted once across the workers, whatever its outcome.
    per_topic = Counter(topic for topic, _, _ in records)
    for topic, count in sorted(per_topic.items()):
        deployment.wait_committed(topic, count, timeout=90)
    counted = {(worker.name, topic): worker.metric("storestream_events_total",
                                                   topic=deployment.topic(topic))
               for worker in (first, second) for topic in per_topic}
    assert sum(counted.values()) == produced, counted
    assert sum(w.metric("storestream_events_total") for w in (first, second)) == produced

    owned = {w.name: w.metric("storestream_events_total", topic=deployment.topic("purchases"))
             for w in (first, second)}
    assert all(count > 0 for count in owned.values()), owned  # the work really is split

    # Prices come from each worker's catalogue replica, which follows the catalogue changelog
    # on its own consumer: it may trail the products agent's count by a fetch or two.
    def differing() -> list[tuple[str, str, Any]]:
        return [(worker.name, user, answer)
                for user, document in sorted(expected.items())
                for worker in (first, second)
                if (answer := worker.get(f"/customers/{user}/")) != (200, document)]

    wait_for("both workers to answer every customer as the reference",
             lambda: not differing(), 30)
    for user, document in sorted(expected.items()):
        assert first.get(f"/customers/{user}/") == (200, document), user
        assert second.get(f"/customers/{user}/") == (200, document), user
    assert expected["kris"]["total"] == 324.27

    for worker in (first, second):
        assert worker.get("/customers/nobody/")[0] == 404
        assert worker.get("/customers/kris/", token=None)[0] == 401
        assert worker.get("/customers/kris/", token="wrong")[0] == 401
        assert worker.get("/table/spend/kris/", token=None)[0] == 401
        assert worker.get("/router/", token=None)[0] == 401
        assert worker.get("/health", token=None)[0] == 200
        assert worker.get("/metrics", token=None)[0] == 200
