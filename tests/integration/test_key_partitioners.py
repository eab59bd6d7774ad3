"""Input produced by confluent-kafka (librdkafka's default partitioner, CRC32) on Kafka.

With ``KEY_PARTITIONER=crc32`` two workers answer every customer from either port, tier gating
holds, and what storestream produces is keyed onto the CRC32 partition too. With the default
(murmur2) the records confluent-kafka placed otherwise are counted, logged and on /health.

The oracles here are independent of the code under test: :func:`zlib.crc32` for librdkafka,
aiokafka's ``murmur2`` for the Java clients, and customers' documents from the purchases'
own prices (products outside every campaign and the stamp card).
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import Producer

from app.dev.devstack import DevStack
from tests.integration import store
from tests.integration.harness import Deployment, Worker, deployed, wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 4
#: Products in no campaign and not the stamp product: documents are sums of prices.
PRODUCTS = ["tv", "lamp", "socks", "chair", "kettle"]


def crc32_partition(key: str) -> int:
    return zlib.crc32(key.encode()) % PARTITIONS


def murmur2_partition(key: str) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def confluent_produce(deployment: Deployment,
                      records: list[tuple[str, str, dict[str, Any]]]) -> list[int]:
    """Produce ``(base topic, key, value)`` with confluent-kafka's defaults; each record's
    partition, in order."""
    producer = Producer({"bootstrap.servers": deployment.stack.bootstrap, "linger.ms": 5,
                         "acks": "all"})
    placed: dict[int, int] = {}
    errors: list[Any] = []

    def delivered(index: int) -> Any:
        def report(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(err)
            else:
                placed[index] = msg.partition()
        return report

    for index, (topic, key, value) in enumerate(records):
        producer.produce(deployment.topic(topic), key=key.encode(), value=orjson.dumps(value),
                         on_delivery=delivered(index))
        producer.poll(0)
    assert producer.flush(60) == 0 and not errors, errors
    return [placed[i] for i in range(len(records))]


def purchases(customers: int, seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    out = []
    for i in range(customers * 4):
        user = f"cust{rnd.randrange(customers):03d}"
        price = Decimal(rnd.randrange(100, 20_000)) / 100
        out.append({"user_id": user, "product_id": rnd.choice(PRODUCTS),
                    "price": float(price), "ts": 1_000_000 + i})
    return out


def documents(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What /customers/{id}/ must answer, from DESIGN section 3 (default thresholds)."""
    totals: dict[str, Decimal] = {}
    for event in events:
        totals[event["user_id"]] = totals.get(event["user_id"], Decimal(0)) \
            + Decimal(str(event["price"]))
    out = {}
    for user, total in totals.items():
        level = ("GOLD" if total > 400 else "SILVER" if total > 300
                 else "BRONZE" if total > 200 else "CLIMBING")
        out[user] = {"user_id": user, "total": float(total), "reward_level": level,
                     "unpriced_purchases": 0,
                     "coffee": {"total": 0, "sequence": 0, "next_one_free": False},
                     "promotions": {}}
    return out


def wrong_answers(workers: tuple[Worker, ...],
                  expected: dict[str, dict[str, Any]]) -> list[tuple[str, str, Any]]:
    """(worker, customer, answer) for every answer of ``workers`` that is not ``expected``."""
    return [(worker.name, user, answer)
            for user, document in sorted(expected.items())
            for worker in workers
            if (answer := worker.get(f"/customers/{user}/")) != (200, document)]


def test_confluent_kafka_input_with_key_partitioner_crc32(stack: DevStack,
                                                          tmp_path: Path) -> None:
    with deployed(stack, tmp_path, partitions=PARTITIONS,
                  extra_env={"KEY_PARTITIONER": "crc32"}) as deployment:
        first, second = deployment.start_two_workers()
        events = purchases(40, seed=17)
        # gold1 is GOLD, climb1 stays CLIMBING; both are keys murmur2 places elsewhere
        # than CRC32, so a murmur2 lookup would miss them.
        events += [{"user_id": "gold1", "product_id": "tv", "price": 450.0, "ts": 1.0},
                   {"user_id": "climb1", "product_id": "tv", "price": 20.0, "ts": 1.0}]
        assert crc32_partition("gold1") != murmur2_partition("gold1")
        assert crc32_partition("climb1") != murmur2_partition("climb1")
        records = [("purchases", e["user_id"], e) for e in events]
        records += [(t, k, v) for t, k, v in store.display_records() + store.promotion_records()]
        placed = confluent_produce(deployment, records)
        # librdkafka's default partitioner is CRC32 of the key (the oracle of this test).
        assert placed == [crc32_partition(key) for _, key, _ in records]
        expected = documents(events)
        moved = [u for u in expected if crc32_partition(u) != murmur2_partition(u)]
        assert len(moved) > 10  # most customers are routed differently under murmur2

        wait_for("both workers to answer every customer",
                 lambda: not wrong_answers((first, second), expected), 60)
        owned = [w.metric("storestream_events_total", topic=deployment.topic("purchases"))
                 for w in (first, second)]
        assert all(count > 0 for count in owned), owned  # the work really is split

        # Tier gating with positions from confluent-kafka too.
        wait_for("displays and promotions on both workers", lambda: all(
            w.metric("storestream_replica_keys", table="displays") == 3
            and w.metric("storestream_replica_applied_total", table="promotions") >= 4
            for w in (first, second)), 30)
        positions = [store.position("gold1", store.D3, 5000),
                     store.position("climb1", store.D3, 5010)]
        placed = confluent_produce(deployment, positions)
        assert placed == [crc32_partition("gold1"), crc32_partition("climb1")]
        offers = deployment.read_topic("customers.promotions", expect=3, timeout=45)
        assert Counter((o["uid"], o["pid"]) for o in offers) == Counter(
            {("gold1", "p-seg"): 1, ("gold1", "p-gold"): 1, ("climb1", "p-seg"): 1})
        # What storestream produces is keyed onto the CRC32 partition as well.
        assert all(o["_partition"] == crc32_partition(o["uid"]) for o in offers), offers
        tiers = deployment.read_topic("loyalty.events", expect=10**6, timeout=10)
        assert tiers and all(e["_partition"] == crc32_partition(e["user_id"]) for e in tiers)

        for worker in (first, second):
            assert worker.metric("storestream_misplaced_records_total") == 0
            status, health = worker.get("/health")
            assert status == 200 and "misplaced" not in health, health
            assert worker.get("/customers/nobody/")[0] == 404


def test_confluent_kafka_input_under_murmur2_is_counted_as_misplaced(
        deployment: Deployment) -> None:
    worker = deployment.start_worker("w1")
    worker.wait_ready()
    events = purchases(30, seed=5)
    placed = confluent_produce(deployment, [("purchases", e["user_id"], e) for e in events])
    misplaced = sum(p != murmur2_partition(e["user_id"]) for p, e in zip(placed, events,
                                                                         strict=True))
    assert misplaced > 0
    topic = deployment.topic("purchases")
    wait_for("every purchase processed",
             lambda: worker.metric("storestream_events_total", topic=topic) >= len(events), 60)
    assert worker.metric("storestream_misplaced_records_total", topic=topic) == misplaced
    status, health = worker.get("/health")
    assert status == 200 and health["ready"] is True
    assert health["misplaced"] == {topic: {"count": misplaced, "fits": "crc32"}}
    log = worker.log_path.read_text(errors="replace")
    first_lines = [line for line in log.splitlines()
                   if f"{topic}[" in line and "KEY_PARTITIONER=murmur2 puts" in line]
    assert len(first_lines) == 1, first_lines
    assert "KEY_PARTITIONER=crc32" in log



def test_repartition_all_mends_confluent_kafka_input_under_murmur2(stack: DevStack,
                                                                   tmp_path: Path) -> None:
    """``REPARTITION=all``: records another partitioner placed are forwarded through
    ``purchases.repartition`` to their murmur2 partition, so two workers still answer every
    customer right from either port, each purchase counted once."""
    with deployed(stack, tmp_path, partitions=PARTITIONS,
                  extra_env={"REPARTITION": "all"}) as deployment:
        first, second = deployment.start_two_workers()
        events = purchases(40, seed=23)
        placed = confluent_produce(deployment,
                                   [("purchases", e["user_id"], e) for e in events])
        misplaced = sum(p != murmur2_partition(e["user_id"])
                        for p, e in zip(placed, events, strict=True))
        assert misplaced > len(events) // 4  # most of them land elsewhere than murmur2's
        expected = documents(events)

        wait_for("both workers to answer every customer",
                 lambda: not wrong_answers((first, second), expected), 90)
        topic = deployment.topic("purchases")
        forwarded = sum(w.metric("storestream_events_total", topic=topic,
                                 outcome="repartitioned") for w in (first, second))
        applied = sum(w.metric("storestream_events_total", topic=f"{topic}.repartition",
                               outcome="ok") for w in (first, second))
        in_place = sum(w.metric("storestream_events_total", topic=topic, outcome="ok")
                       for w in (first, second))
        assert forwarded == misplaced, (forwarded, misplaced)
        assert applied == misplaced and in_place == len(events) - misplaced
