"""The Kafka Streams peer of the bench (``bench/kstreams``) computes the right totals on Kafka.

20,000 purchases (the bench's generator) on a fresh topic; the Java program runs with each
store (in-memory and RocksDB) and record cache (as shipped and off), and its final
per-customer totals (cents, coffee count) must equal an oracle computed here from the
produced records with :class:`decimal.Decimal` (not the bench's own expectation code); its
window, committed offsets and changelog topics are checked too.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from app.dev.devstack import DevStack
from bench import kstreams_peer
from bench.catalogue import CATALOGUE
from bench.deploy import Proc
from bench.workload import build, create_topics, peer_topics, produce

pytestmark = pytest.mark.integration

EVENTS = 20_000
CUSTOMERS = 500
PARTITIONS = 4


@pytest.fixture(scope="module")
def purchases() -> list[tuple[bytes, bytes]]:
    return build(EVENTS, CUSTOMERS, PARTITIONS, seed=7).purchases


def oracle(records: list[tuple[bytes, bytes]]) -> dict[str, tuple[int, int]]:
    """Spend in cents (the purchase's price, else the list price) and coffees per customer."""
    spend: dict[str, Decimal] = {}
    coffee: dict[str, int] = {}
    for key, value in records:
        event = json.loads(value, parse_float=Decimal)
        user = key.decode()
        price = event.get("price")
        if price is None:
            price = Decimal(str(CATALOGUE[event["product_id"]][0]))
        spend[user] = spend.get(user, Decimal(0)) + Decimal(price)
        coffee[user] = coffee.get(user, 0) + (event["product_id"] == "coffee")
    return {user: (int(total * 100), coffee[user]) for user, total in spend.items()}


async def _topics(bootstrap: str, prefix: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return [t for t in await admin.list_topics() if t.startswith(prefix)]
    finally:
        await admin.close()


@pytest.mark.parametrize(("store", "caching"), [("memory", "shipped"), ("memory", "off"),
                                              ("rocksdb", "shipped"), ("rocksdb", "off")])
def test_totals_match_the_oracle(stack: DevStack, tmp_path: Path,
                                 purchases: list[tuple[bytes, bytes]], store: str,
                                 caching: str) -> None:
    kstreams_peer.build()
    prefix = f"it-ks-{uuid.uuid4().hex[:6]}."
    topic = f"{prefix}purchases"
    asyncio.run(create_topics(stack.bootstrap, peer_topics(prefix, PARTITIONS)))
    asyncio.run(produce(stack.bootstrap, topic, purchases))
    app_id = f"{prefix}kstreams"
    totals_out = tmp_path / "totals.json"
    argv = kstreams_peer.command(stack.bootstrap, topic, app_id, store=store, caching=caching,
                                 expect=EVENTS, state_dir=tmp_path / "state",
                                 totals_out=totals_out)
    proc = Proc(f"kstreams-{store}", argv, dict(os.environ), tmp_path / "peer.log")
    try:
        report = proc.wait_result(120)
    finally:
        proc.stop()

    expected = oracle(purchases)
    got = kstreams_peer.read_totals(totals_out)
    assert kstreams_peer.compare(got, expected) is None
    assert report["totals_sha256"] == kstreams_peer.digest(expected)
    assert report["customers"] == len(expected)
    assert report["spend_cents_total"] == sum(c for c, _ in expected.values())
    assert report["coffee_total"] == sum(n for _, n in expected.values())

    assert report["complete"] is True
    assert report["events"] == report["processed_total"] == EVENTS
    assert report["committed_offsets"] == EVENTS  # close() committed every input offset
    assert report["last_ts"] > report["first_ts"] > 0
    assert report["cpu_end"] > report["cpu_start"] > 0
    assert report["peak_rss_mb_self"] > 0
    assert (report["store"], report["caching"], report["processing_guarantee"]) == (
        store, caching, "at_least_once")
    assert report["cache_max_bytes"] == (10 * 1024 * 1024 if caching == "shipped" else 0)
    assert report["commit_interval_ms"] == 30_000
    assert report["kafka_streams"] == "4.4.0"
    changelogs = {t for t in asyncio.run(_topics(stack.bootstrap, app_id))
                  if t.endswith("-changelog")}
    assert changelogs == {f"{app_id}-spend-changelog", f"{app_id}-coffee-changelog"}
