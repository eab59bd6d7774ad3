"""Changelog recovery on the embedded broker: a fresh worker must restore every customer.

The embedded broker (Tansu) answers "latest offset" with the last *batch*'s base offset + 1
(DESIGN section 7), so Faust's recovery, which stops at that highwater, stops before the rest
of the last batch of each changelog partition; ``app.runtime.recovery`` reads on to the real end. A
changelog written in one big batch per partition shows it deterministically (without
``app.runtime.recovery``: 2,996 of 3,000 customers lost; with ``rocksdb://`` Faust's consistency
check stopped the restarted worker). The end-to-end tests restart a worker after thousands
of purchases (SIGTERM, SIGKILL mid-stream, rocksdb) and compare customers with a reference
computed by the pure core; the customers produced last on every partition (what an early
stop loses) are always among those checked.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.dev.devstack import DevStack, TopicSpec, ensure_topics
from app.runtime.recovery import read_last_offsets
from core.config import load_settings
from core.loyalty import LoyaltyRules, Purchase, customer_document, replay
from core.money import to_cents
from core.partitioners import murmur2_partition
from tests.integration.harness import Deployment, Worker, deployed, wait_for

pytestmark = pytest.mark.integration

CUSTOMERS = 1_500
PURCHASES = 3_000
SAMPLE = 300
#: Recent purchases per partition whose customers are always checked (the changelog tails).
TAIL = 40

PRODUCTS = (("coffee", 2.99), ("tea", 2.55), ("dog", 249.99), ("beret", 34.99),
            ("handbag", 126.00), ("cat", 195.00), ("coffee", 3.05), ("bagel", 1.25))

Record = tuple[str, str, dict[str, Any]]


def purchases(seed: int, count: int = PURCHASES, customers: int = CUSTOMERS) -> list[Record]:
    """``count`` explicitly priced purchases spread over ``customers`` customers."""
    rng = random.Random(seed)
    out: list[Record] = []
    for number in range(count):
        user = f"c{rng.randrange(customers):05d}"
        product, price = rng.choice(PRODUCTS)
        out.append(("purchases", user, {
            "user_id": user, "product_id": product, "price": price,
            "purchase_id": f"r{seed}-{number}", "ts": 1_700_000_000.0 + number,
        }))
    return out


def no_catalogue(product_id: str) -> tuple[()]:
    return ()


def reference(records: Iterable[Record], rules: LoyaltyRules) -> dict[str, dict[str, Any]]:
    """Each customer's ``/customers/{id}/`` document, from the pure core on one process."""
    by_user: dict[str, list[Purchase]] = defaultdict(list)
    for _, user, value in records:
        by_user[user].append(Purchase(user, value["product_id"], value["ts"],
                                      to_cents(value["price"]), value["purchase_id"]))
    out: dict[str, dict[str, Any]] = {}
    for user, bought in by_user.items():
        spend, stamps, basket, _ = replay(bought, no_catalogue, rules)
        out[user] = customer_document(user, spend, stamps, basket, no_catalogue, rules)
    return out


def sample_users(records: list[Record], placed: list[tuple[str, int, int]], seed: int) -> list[str]:
    """A random sample plus the customers of the last ``TAIL`` purchases of every partition."""
    users = sorted({user for _, user, _ in records})
    chosen = set(random.Random(seed).sample(users, min(SAMPLE, len(users))))
    per_partition: dict[int, list[str]] = defaultdict(list)
    for (_, user, _), (_, partition, _) in zip(records, placed, strict=True):
        per_partition[partition].append(user)
    for tail in per_partition.values():
        chosen.update(tail[-TAIL:])
    return sorted(chosen)


#: How long a customer's document is asked again while the worker answers 503 (its group
#: rebalancing: on a saturated host a worker can lose its group right after counting).
RECOVERING_WAIT_S = 60.0


def documents(worker: Worker, users: Iterable[str]) -> dict[str, Any]:
    """``/customers/{id}/`` for every user (status code instead of the body when not 200;
    a 503, state recovering after a rebalance, is asked again for a bounded time)."""
    def one(user: str) -> tuple[str, Any]:
        deadline = time.monotonic() + RECOVERING_WAIT_S
        status, body = worker.get(f"/customers/{user}/")
        while status == 503 and time.monotonic() < deadline:
            time.sleep(0.5)
            status, body = worker.get(f"/customers/{user}/")
        return user, body if status == 200 else status
    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(one, users))


def mismatches(worker: Worker, expected: dict[str, dict[str, Any]],
               users: Iterable[str]) -> dict[str, tuple[Any, Any]]:
    """Users whose served document differs from ``expected`` (served, expected)."""
    got = documents(worker, users)
    return {u: (got[u], expected[u]) for u in got if got[u] != expected[u]}


def purchases_counted(worker: Worker, deployment: Deployment, **labels: str) -> float:
    return worker.metric("storestream_events_total", topic=deployment.topic("purchases"),
                         **labels)


def fill(deployment: Deployment, worker: Worker, seed: int) -> tuple[
        list[Record], dict[str, dict[str, Any]], list[str]]:
    """Produce the purchases, wait until all are counted, check the sample on ``worker``."""
    records = purchases(seed)
    placed = deployment.produce_placed(records)
    wait_for("every purchase counted",
             lambda: purchases_counted(worker, deployment) >= len(records), 90, interval=0.5)
    expected = reference(records, load_settings(deployment.env).loyalty)
    users = sample_users(records, placed, seed)
    assert mismatches(worker, expected, users) == {}
    return records, expected, users


def one_purchase_per_partition(deployment: Deployment, tag: str) -> list[Record]:
    """A purchase by a new customer on each partition of ``purchases`` (keys placed by
    murmur2, as the test producer places them)."""
    partitions = deployment.settings.topic_partitions
    users: dict[int, str] = {}
    number = 0
    while len(users) < partitions:
        user = f"{tag}{number:04d}"
        users.setdefault(murmur2_partition(user.encode(), partitions), user)
        number += 1
    return [("purchases", user, {"user_id": user, "product_id": "bagel", "price": 1.25,
                                 "purchase_id": f"{user}-last", "ts": 1_800_000_000.0})
            for _, user in sorted(users.items())]


def assert_nothing_reprocessed(deployment: Deployment, worker: Worker, committed: int) -> None:
    """``worker`` restarted after ``committed`` purchases (all of them) were committed, so it
    must process nothing again: one more purchase is produced to every partition, and once
    every one of them is served (each partition read to its end, in order), the worker has
    counted exactly those, whatever the outcome, and the group has committed them too."""
    last = one_purchase_per_partition(deployment, "last")
    placed = deployment.produce_placed(last)
    assert sorted(partition for _, partition, _ in placed) == list(
        range(deployment.settings.topic_partitions))
    wait_for("the last purchases served", lambda: all(
        worker.get(f"/customers/{user}/")[0] == 200 for _, user, _ in last), 60)
    assert purchases_counted(worker, deployment) == len(last), (
        {outcome: purchases_counted(worker, deployment, outcome=outcome)
         for outcome in ("ok", "duplicate", "dead_letter")})
    assert purchases_counted(worker, deployment, outcome="ok") == len(last)
    deployment.wait_committed("purchases", committed + len(last))


def assert_restored(worker: Worker, expected: dict[str, dict[str, Any]],
                    users: list[str]) -> None:
    wrong = mismatches(worker, expected, users)
    assert not wrong, (
        f"{len(wrong)} of {len(users)} customers not restored, e.g. "
        f"{sorted(wrong.items())[:3]}\n--- log ---\n{worker.log_tail(60)}"
    )


async def produce_in_one_batch(bootstrap: str, topic: str,
                               records: list[tuple[str, dict[str, Any]]]) -> None:
    """Each partition's share of ``records`` as a single record batch (long linger, big batch)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2_000,
                                max_batch_size=4 * 1024 * 1024, acks="all")
    await producer.start()
    try:
        sent = [await producer.send(topic, orjson.dumps(value), key=key.encode())
                for key, value in records]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def end_and_last_offsets(bootstrap: str, topic: str,
                               partitions: int) -> tuple[dict[int, int], dict[int, int]]:
    """The broker's end offsets, and the last offset actually readable, per partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=10)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        last = await read_last_offsets(consumer, dict.fromkeys(tps, 0))
        return ({tp.partition: ends[tp] for tp in tps},
                {tp.partition: last.get(tp, -1) for tp in tps})
    finally:
        await consumer.stop()


def test_the_broker_under_reports_end_offsets_and_the_probe_finds_the_end(
        deployment: Deployment) -> None:
    """What :mod:`app.runtime.recovery` works around: end offset = last batch's base offset + 1."""
    topic = deployment.topic("probe-check")
    bootstrap = deployment.stack.bootstrap
    asyncio.run(ensure_topics(bootstrap, [TopicSpec(topic, 2, {"retention.ms": "-1"})]))
    records = [(f"k{i}", {"i": i}) for i in range(200)]
    asyncio.run(produce_in_one_batch(bootstrap, topic, records))
    ends, last = asyncio.run(end_and_last_offsets(bootstrap, topic, 2))
    assert sum(last.values()) + 2 == len(records)  # every record readable
    if ends != {p: offset + 1 for p, offset in last.items()}:  # a correct broker passes too
        assert ends == {0: 1, 1: 1}  # one batch per partition reads as one record


def test_a_changelog_written_in_one_large_batch_is_recovered_whole(
        deployment: Deployment) -> None:
    """Profiles written straight to the changelog, one batch per partition, then a worker.

    The broker's end offset says 1 record per partition; the worker must serve all of them.
    """
    changelog = f"{deployment.settings.app_id}-profiles-changelog"
    partitions = deployment.settings.topic_partitions
    asyncio.run(ensure_topics(deployment.stack.bootstrap, [TopicSpec(
        changelog, partitions, {"cleanup.policy": "compact", "retention.ms": "-1"})]))
    users = [f"p{i:05d}" for i in range(3_000)]
    asyncio.run(produce_in_one_batch(deployment.stack.bootstrap, changelog, [
        (user, {"name": user.upper(), "opt_out": False, "last_offset": 0}) for user in users
    ]))
    worker = deployment.start_worker("w1")
    worker.wait_ready(60)
    served = documents(worker, users)
    missing = [user for user, doc in served.items() if not isinstance(doc, dict)]
    assert not missing, (f"{len(missing)} of {len(users)} customers not recovered, "
                         f"e.g. {missing[:5]}\n--- log ---\n{worker.log_tail(60)}")


def test_sigterm_restart_restores_every_customer_from_the_changelogs(
        deployment: Deployment) -> None:
    first = deployment.start_worker("w1")
    first.wait_ready()
    records, expected, users = fill(deployment, first, seed=1)
    deployment.wait_committed("purchases", len(records))
    first.stop(signal.SIGTERM)
    assert deployment.committed("purchases") == len(records)

    second = deployment.start_worker("w2")  # fresh process, memory store, same app id
    started = time.monotonic()
    second.wait_ready(90)
    print(f"w2 ready {time.monotonic() - started:.1f} s after start")
    assert_restored(second, expected, users)
    assert_nothing_reprocessed(deployment, second, len(records))
    assert second.metric("storestream_dead_letters_total") == 0


def test_sigkill_mid_stream_loses_nothing_and_counts_nothing_twice(
        each_path: Deployment) -> None:
    """kill -9 after a source-offset commit, with purchases still arriving and in flight."""
    deployment = each_path
    first = deployment.start_worker("w1")
    first.wait_ready()
    records = purchases(seed=2)
    placed: list[tuple[str, int, int]] = []
    failure: list[BaseException] = []
    killed = threading.Event()

    def produce_slowly() -> None:
        """~5 s of input; the last fifth only after the kill, so input is still coming
        whatever the host's load (on Kafka a quick worker otherwise caught up first)."""
        try:
            for start in range(0, len(records), 150):
                if start >= len(records) * 4 // 5:
                    killed.wait(120)
                placed.extend(deployment.produce_placed(records[start:start + 150]))
                time.sleep(0.3)
        except BaseException as exc:  # reported by the test thread
            failure.append(exc)

    producer = threading.Thread(target=produce_slowly, daemon=True)
    producer.start()
    wait_for("a commit of source offsets",
             lambda: deployment.committed("purchases") > 0, 60,
             interval=0.2)
    moment: list[float] = []

    def past_the_commit() -> bool:  # the worker is faster than the input: catch it ahead
        moment[:] = [deployment.committed("purchases"),
                     purchases_counted(first, deployment)]
        return moment[0] < moment[1]

    try:
        wait_for("purchases processed past the last commit", past_the_commit, 30,
                 interval=0.05)
    except AssertionError:
        killed.set()  # never leave the producer waiting
        raise
    committed, killed_at = int(moment[0]), moment[1]
    first.stop(signal.SIGKILL)
    killed.set()
    final = deployment.committed("purchases")  # w1 can commit nothing more
    producer.join(60)
    assert not producer.is_alive() and not failure, failure
    assert committed < killed_at < PURCHASES  # processed past the commit; input still coming
    assert committed <= final < PURCHASES

    expected = reference(records, load_settings(deployment.env).loyalty)
    everyone = sorted(expected)
    second = deployment.start_worker("w2")
    second.wait_ready(90)
    tail = sample_users(records, placed, seed=2)
    wait_for("the rest of the stream",
             lambda: not mismatches(second, expected, tail), 60, interval=1.0)
    assert_restored(second, expected, everyone)
    deployment.wait_committed("purchases", PURCHASES)  # w2 processed it all, and committed
    rerun = purchases_counted(second, deployment)  # every outcome
    ok = purchases_counted(second, deployment, outcome="ok")
    duplicates = purchases_counted(second, deployment, outcome="duplicate")
    # Exact totals and stamp counts above are the proof; these say how much was redelivered.
    print(f"committed {final}, killed after {killed_at:.0f} counted; "
          f"w2: {rerun:.0f} records, ok={ok:.0f} duplicate={duplicates:.0f}")
    # Resumed from the commit, not from the start (Faust re-reads each committed record),
    # and everything past it was processed again.
    assert PURCHASES - final <= rerun <= PURCHASES - final + deployment.settings.topic_partitions
    assert ok + duplicates == rerun


def test_rocksdb_restart_with_its_local_state(stack: DevStack, tmp_path: Path) -> None:
    with deployed(stack, tmp_path, extra_env={"APP_STORE": "rocksdb://"}) as deployment:
        first = deployment.start_worker("w1")
        first.wait_ready()
        records, expected, users = fill(deployment, first, seed=3)
        deployment.wait_committed("purchases", len(records))
        first.stop(signal.SIGTERM)
        shutil.copy(first.log_path, tmp_path / "w1-first-run.log")

        again = deployment.start_worker("w1")  # same data dir: local state + changelog tail
        again.wait_ready(90)
        # stopped with everything committed: its local state is used again, not deleted
        assert again.metric("storestream_local_state", at_start="kept") == 1
        assert_restored(again, expected, users)
        assert_nothing_reprocessed(deployment, again, len(records))


async def changelog_records(bootstrap: str, topic: str, key: bytes,
                            expect: int, timeout: float = 30.0) -> list[tuple[int, bytes]]:
    """``(partition, value)`` of the first ``expect`` records of ``key`` in a changelog."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: list[tuple[int, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(found) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            found += [(r.partition, r.value) for records in batch.values() for r in records
                      if r.key == key and r.value is not None]
    finally:
        await consumer.stop()
    return found[:expect]


async def append(bootstrap: str, topic: str, partition: int, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()


def test_a_late_changelog_write_of_an_older_state_does_not_come_back_on_restore(
        deployment: Deployment) -> None:
    """A worker cut off from the group can have a changelog write in flight when its
    partitions move: it lands after its successor's writes. Replayed here by appending
    kris's first spend record again after her third: the restarted worker still counts all
    three purchases, and says it skipped the late record."""
    worker = deployment.start_worker("w1")
    worker.wait_ready(90)
    changelog = f"{deployment.settings.app_id}-spend-changelog"
    bootstrap = deployment.stack.bootstrap
    for n in range(3):  # one at a time: three spend records of kris on the changelog
        deployment.produce([("purchases", "kris", {
            "user_id": "kris", "product_id": "tea", "price": 2.5, "ts": 1_700_000_000 + n,
            "purchase_id": f"late-{n}"})])
        wait_for(f"purchase {n + 1} counted",
                 lambda n=n: worker.get("/customers/kris/")[1].get("total") == 2.5 * (n + 1),
                 60)
    records = asyncio.run(changelog_records(bootstrap, changelog, b"kris", expect=3))
    assert len(records) == 3 and orjson.loads(records[0][1])["purchases"] == 1
    worker.stop()
    partition, first = records[0]
    asyncio.run(append(bootstrap, changelog, partition, b"kris", first))

    again = deployment.start_worker("w2")
    again.wait_ready(90)
    status, document = again.get("/customers/kris/")
    assert status == 200 and document["total"] == 7.5, document
    assert again.metric("storestream_changelog_superseded_total", table="spend") == 1
