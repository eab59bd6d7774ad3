"""Offers survive a Redis outage longer than any retry: parked, then delivered exactly once.

The worker talks to a redis-server of the test's own. It is frozen (SIGSTOP: connections hang
until their timeouts, as a network cut does) for OUTAGE_S while offers keep arriving on
``customers.promotions`` and purchases keep arriving too; then it is thawed. Nothing may be
dead-lettered, every offer must be in Redis exactly once afterwards, the purchases must have
been processed during the outage, and the offers' committed offsets must not pass the offers
not yet delivered (they would be lost to a worker dying in the outage).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from app.dev.devstack import LOOPBACK, DevStack, free_port
from app.dev.devstack import _redis_bin as redis_server
from tests.integration.harness import Deployment, deployed, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

#: How long Redis stays frozen: far past the old retries (~1.5 s, then a dead letter).
OUTAGE_S = 10.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server for this test alone (freezing the session's would stall other tests)."""
    port = free_port()
    process = subprocess.Popen(
        [redis_server(), "--port", str(port), "--bind", LOOPBACK, "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://{LOOPBACK}:{port}/0"

    async def ping() -> bool:
        client = redis.from_url(url)
        try:
            return bool(await client.ping())
        except Exception:
            return False
        finally:
            await client.aclose()
    try:
        wait_for("the test's redis-server", lambda: asyncio.run(ping()), 20)
        yield url, process
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.kill()
        process.wait(10)


@pytest.fixture
def deployment(stack: DevStack, tmp_path: Path,
               own_redis: tuple[str, subprocess.Popen[bytes]]) -> Iterator[Deployment]:
    with deployed(stack, tmp_path, extra_env={"REDIS_URL": own_redis[0],
                                             "OFFER_BACKSTOP_MS": "200"}) as running:
        yield running


def offer(number: int) -> tuple[str, str, dict[str, Any]]:
    uid = f"shopper-{number % 13}"
    return ("customers.promotions", uid, {
        "offer_id": f"outage-{number}", "uid": uid, "pid": "p1", "sku": "1", "segment": None,
        "variant": None, "store_id": "s1", "discount_pct": 5, "distance_m": 1.0,
        "ts": 1_700_000_000.0 + number})


def purchase(number: int) -> tuple[str, str, dict[str, Any]]:
    user = f"buyer-{number % 50}"
    return ("purchases", user, {"user_id": user, "product_id": "coffee", "price": 2.99,
                                "purchase_id": f"outage-p{number}",
                                "ts": 1_700_000_000.0 + number})


def offers_in_redis(url: str, stream: str) -> Counter[str]:
    async def read() -> Counter[str]:
        client = redis.from_url(url, decode_responses=True)
        try:
            return Counter(fields["offer_id"] for _, fields in await client.xrange(stream))
        finally:
            await client.aclose()
    return asyncio.run(read())


def test_offers_wait_out_a_redis_outage_and_arrive_exactly_once(
        deployment: Deployment, own_redis: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, server = own_redis
    stream = f"{deployment.settings.topics.prefix}offers"
    worker = deployment.start_worker("w1")
    worker.wait_ready()
    offers_topic = deployment.topic("customers.promotions")
    purchases_topic = deployment.topic("purchases")

    deployment.produce([offer(n) for n in range(20)])
    wait_for("20 offers in redis", lambda: len(offers_in_redis(url, stream)) == 20, 60)

    os.kill(server.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    deployment.produce([offer(n) for n in range(20, 50)])
    wait_for("delivery reported stalled", lambda: worker.metric(
        "storestream_delivery_stalled", kind="offers") == 1, 30)
    status, health = worker.get("/health")
    assert status == 200 and health["delivery_stalled"]["offers"]["waiting"] >= 1, health
    deployment.produce([offer(n) for n in range(50, 60)] + [purchase(n) for n in range(300)])
    wait_for("the purchases processed while redis is down", lambda: worker.metric(
        "storestream_events_total", topic=purchases_topic) >= 300, 60)
    assert time.monotonic() - frozen_at < OUTAGE_S + 60
    # The offers not delivered are not committed past: at most the 20 delivered before.
    assert deployment.committed("customers.promotions") <= 20
    assert worker.metric("storestream_delivery_stalled", kind="offers") == 1
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - frozen_at)))  # the outage itself

    os.kill(server.pid, signal.SIGCONT)
    wait_for("60 offers in redis", lambda: len(offers_in_redis(url, stream)) == 60, 90)
    wait_for("delivery no longer stalled", lambda: worker.metric(
        "storestream_delivery_stalled", kind="offers") == 0, 30)
    deployment.wait_committed("customers.promotions", 60, timeout=60)

    in_redis = offers_in_redis(url, stream)
    assert in_redis == Counter({f"outage-{n}": 1 for n in range(60)})
    assert worker.metric("storestream_events_total", topic=offers_topic,
                         outcome="dead_letter") == 0
    assert worker.metric("storestream_offer_delivery_failures_total") == 0
    # A script sent as Redis froze runs when it thaws, after the client gave up on it: its
    # retry then finds the offers' markers (a duplicate for Redis, not a second entry).
    assert worker.metric("storestream_offers_delivered_total", sink="redis",
                         outcome="delivered") <= 60
    status, health = worker.get("/health")
    assert status == 200 and "delivery_stalled" not in health, health
    assert worker.process.poll() is None
