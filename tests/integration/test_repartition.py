"""Keyless input (the Confluent in-store demo's producers send no key) re-keyed through
``<topic>.repartition`` (``REPARTITION=keyless``, the default) on Kafka, two workers.

Oracles: the purchases' own prices (tests/integration/test_key_partitioners.py documents),
offers from the store layout of tests/integration/store.py; nothing from the code under test.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from app.dev.devstack import DevStack
from app.runtime.guarantees import check_transactions
from tests.integration import store
from tests.integration.harness import PATH_IDS, PATHS, Deployment, deployed, wait_for
from tests.integration.test_exactly_once import read_committed
from tests.integration.test_key_partitioners import (
    documents,
    purchases,
    wrong_answers,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4


def keyless(deployment: Deployment, records: list[tuple[str, dict[str, Any]]]) -> list[int]:
    """Produce ``(base topic, value)`` without keys with confluent-kafka's defaults."""
    producer = Producer({"bootstrap.servers": deployment.stack.bootstrap, "linger.ms": 5,
                         "acks": "all", "sticky.partitioning.linger.ms": 0})
    placed: list[int] = []
    errors: list[Any] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            placed.append(msg.partition())

    for topic, value in records:
        producer.produce(deployment.topic(topic), value=orjson.dumps(value),
                         on_delivery=report)
        producer.poll(0)
    assert producer.flush(60) == 0 and not errors, errors
    return placed


def demo_position(uid: str, point: tuple[float, float], ts: float) -> tuple[str, dict[str, Any]]:
    """A position as the Confluent demo sends it: latitude/longitude/uid/country, no key."""
    return ("customers.locations", {"latitude": point[0], "longitude": point[1], "uid": uid,
                                    "country": "UK", "store_id": "s1", "ts": ts})


def test_keyless_demo_input_through_the_repartition_topics(stack: DevStack,
                                                           tmp_path: Path) -> None:
    with deployed(stack, tmp_path, partitions=PARTITIONS) as deployment:
        first, second = deployment.start_two_workers()
        events = purchases(40, seed=23)
        events += [{"user_id": "gold1", "product_id": "tv", "price": 450.0, "ts": 1.0},
                   {"user_id": "climb1", "product_id": "tv", "price": 20.0, "ts": 1.0}]
        records = [("purchases", e) for e in events]
        records.append(("purchases", {"product_id": "tv", "price": 1.0}))  # no owner
        placed = keyless(deployment, records)
        # Kafka refuses keyless records on compacted topics (INVALID_RECORD): displays
        # (numeric SKUs) and promotions (one with only a segment) come keyed, by confluent-kafka.
        producer = Producer({"bootstrap.servers": deployment.stack.bootstrap})
        for t, k, v in store.display_records() + store.promotion_records():
            producer.produce(deployment.topic(t), key=k.encode(), value=orjson.dumps(v))
        assert producer.flush(30) == 0
        assert len(set(placed)) > 1  # spread over partitions by the client

        expected = documents(events)

        wait_for("both workers to answer every customer",
                 lambda: not wrong_answers((first, second), expected), 90)
        letters = deployment.read_topic("dead-letters", expect=1, timeout=30)
        assert len(letters) == 1 and "owner field 'user_id'" in letters[0]["error"], letters
        assert letters[0]["topic"] == deployment.topic("purchases")

        wait_for("displays and promotions on both workers", lambda: all(
            w.metric("storestream_replica_keys", table="displays") == 3
            and w.metric("storestream_replica_applied_total", table="promotions") >= 4
            for w in (first, second)), 30)
        keyless(deployment, [demo_position("gold1", store.D3, 5000),
                             demo_position("climb1", store.D3, 5010)])
        offers = deployment.read_topic("customers.promotions", expect=3, timeout=45)
        assert Counter((o["uid"], o["pid"]) for o in offers) == Counter(
            {("gold1", "p-seg"): 1, ("gold1", "p-gold"): 1, ("climb1", "p-seg"): 1})


def test_sigkill_between_forward_and_commit_loses_and_doubles_nothing(
        stack: DevStack, tmp_path: Path) -> None:
    with deployed(stack, tmp_path, partitions=PARTITIONS) as deployment:
        worker = deployment.start_worker("w1")
        worker.wait_ready()
        events = purchases(60, seed=31)
        half = len(events) // 2
        keyless(deployment, [("purchases", e) for e in events[:half]])
        topic = deployment.topic("purchases")
        # forwarded, not yet committed (commit interval 2.8 s): kill it now
        wait_for("forwards under way", lambda: worker.metric(
            "storestream_events_total", topic=topic, outcome="repartitioned") > 0, 60,
            interval=0.01)
        worker.stop(signal.SIGKILL)
        keyless(deployment, [("purchases", e) for e in events[half:]])
        again = deployment.start_worker("w2")
        again.wait_ready()
        expected = documents(events)
        wait_for("every customer exactly once", lambda: all(
            again.get(f"/customers/{u}/") == (200, d) for u, d in expected.items()), 90)
        skipped = again.metric("storestream_events_total",
                               topic=f"{topic}.repartition", outcome="duplicate")
        print("second forwards skipped:", skipped)


# ------------------------------------------------ REPARTITION under exactly_once, SIGKILL
#
# Keyless purchases from many customers, produced while one exactly_once worker runs, the
# worker killed (SIGKILL) past a commit and restarted. The oracle is each customer's sum of
# the purchases' own prices (tiers at 200/300/400, DESIGN section 3), written here.

EOS_CUSTOMERS = 40
EOS_PURCHASES = 1_200


def eos_purchases(seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    return [{"user_id": f"e{rnd.randrange(EOS_CUSTOMERS):03d}", "product_id": "mug",
             "price": rnd.randrange(100, 2_000) / 100, "purchase_id": f"eos-{seed}-{n}",
             "ts": 1_700_000_000.0 + n} for n in range(EOS_PURCHASES)]


def eos_oracle(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    cents: dict[str, int] = {}
    for event in events:
        cents[event["user_id"]] = cents.get(event["user_id"], 0) + round(event["price"] * 100)
    return {user: {"user_id": user, "total": total / 100,
                   "reward_level": ("GOLD" if total > 40_000 else "SILVER" if total > 30_000
                                    else "BRONZE" if total > 20_000 else "CLIMBING"),
                   "unpriced_purchases": 0,
                   "coffee": {"total": 0, "sequence": 0, "next_one_free": False},
                   "promotions": {}} for user, total in cents.items()}


@pytest.mark.parametrize("fast_lane", PATHS, ids=PATH_IDS)
def test_exactly_once_sigkill_mid_stream_keyless_purchases_counted_once(
        stack: DevStack, tmp_path: Path, fast_lane: str) -> None:
    with deployed(stack, tmp_path, partitions=PARTITIONS, extra_env={
            "PROCESSING_GUARANTEE": "exactly_once", "FAST_LANE": fast_lane}) as deployment:
        missing = asyncio.run(check_transactions(
            deployment.stack.bootstrap, f"{deployment.settings.app_id}-check", timeout_s=10))
        assert missing is None, "the test broker must have transactions"
        first = deployment.start_worker("w1")
        first.wait_ready(90)
        events = eos_purchases(seed=7)
        failure: list[BaseException] = []

        def produce_slowly() -> None:  # ~8 s of input, so the kill lands mid-stream
            try:
                for start in range(0, len(events), 60):
                    keyless(deployment, [("purchases", e) for e in events[start:start + 60]])
                    time.sleep(0.4)
            except BaseException as exc:  # reported by the test thread
                failure.append(exc)

        producer = threading.Thread(target=produce_slowly, daemon=True)
        producer.start()
        topic = deployment.topic("purchases")

        def forwarded() -> float:
            return first.metric("storestream_events_total", topic=topic,
                                outcome="repartitioned")

        # Kill mid-interval (commits every 2.8 s): after a commit moved, with forwards the
        # next commit has not covered yet (on a loaded host a fixed pause after a commit
        # could land when the worker had forwarded nothing more since).
        before = wait_for("a committed transaction",
                          lambda: deployment.committed("purchases"), 60, interval=0.2)
        wait_for("the next commit", lambda: deployment.committed("purchases") > before, 30,
                 interval=0.1)
        # Freeze the worker, then decide: a commit can land between reading the forwards and
        # the kill (CI saw committed == forwarded); a frozen worker cannot commit any more, so
        # kill only when its forwards are ahead of what the broker has committed.
        for _ in range(20):
            wait_for("forwards not committed yet",
                     lambda: forwarded() > deployment.committed("purchases") + 30, 30,
                     interval=0.05)
            killed_at = forwarded()
            os.killpg(first.process.pid, signal.SIGSTOP)
            time.sleep(0.5)  # an EndTxn already sent completes
            committed = deployment.committed("purchases")
            if committed < killed_at:
                break
            os.killpg(first.process.pid, signal.SIGCONT)
        first.stop(signal.SIGKILL)
        producer.join(60)
        assert not producer.is_alive() and not failure, failure
        assert committed < killed_at < len(events), (committed, killed_at)

        second = deployment.start_worker("w2")
        second.wait_ready(90)
        expected = eos_oracle(events)

        def wrong() -> dict[str, Any]:
            return {user: answer for user, document in sorted(expected.items())
                    if (answer := second.get(f"/customers/{user}/")) != (200, document)}

        wait_for("every customer exact", lambda: not wrong(), 90, interval=1.0)
        time.sleep(2.0)  # a late second count would show by now
        assert not wrong()
        # Forwarded once each on the committed repartition topic (the aborted forwards of
        # the killed transaction are invisible), so the skip of second forwards had no work.
        forwards = read_committed(deployment, "purchases.repartition", expect=len(events))
        ids = Counter(f["purchase_id"] for f in forwards)
        assert set(ids) == {e["purchase_id"] for e in events}
        assert ids.most_common(1)[0][1] == 1, ids.most_common(3)
        assert second.metric("storestream_events_total", topic=f"{topic}.repartition",
                             outcome="duplicate") == 0
        print(f"committed {committed}, forwarded {killed_at:.0f} at the kill")
