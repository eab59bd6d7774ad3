"""The benchmark workload: a small catalogue and purchase events, produced once per peer.

Purchases are ~90-byte JSON objects keyed by customer (``user_id``, ``product_id``,
``purchase_id``, ``ts``; about 20% carry their own ``price``), spread over 30 days of event
time in order. The catalogue's ``products`` events include a mid-period coffee price rise,
so storestream's as-of pricing has something to do. Every peer gets a fresh copy of the
topics under its own prefix, created with explicit settings (the embedded broker reports only
settings set explicitly, DESIGN section 7).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from app.dev.devstack import TopicSpec, ensure_topics
from bench.catalogue import CATALOGUE, PERIOD_S, PRICE_CHANGES, STAMP_PRODUCT, T0, price_of

EVENT_TOPIC_CONFIG = {"retention.ms": str(7 * 86_400_000), "cleanup.policy": "delete"}
COMPACT_TOPIC_CONFIG = {"retention.ms": "-1", "cleanup.policy": "compact"}

Record = tuple[bytes, bytes]  # key, value


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Workload:
    """Pre-encoded purchase and product records."""

    events: int
    customers: int
    partitions: int
    purchases: list[Record]
    products: list[Record]

    @property
    def mean_value_bytes(self) -> float:
        """Average size of a purchase value."""
        return sum(len(v) for _, v in self.purchases) / max(1, len(self.purchases))


def held_json(value: Any) -> bytes:
    """``value`` as JSON bytes that occupy only their length, for records held in bulk.

    orjson (3.12 on) returns bytes inside a buffer of at least 4 KB that it never shrinks:
    4,000,000 held purchases of ~90 bytes took 16.6 GB of RSS, which the peers' broker then
    lacked for its page cache. The copy is exact-sized (and small ones come from Python's own
    allocator)."""
    return bytes(memoryview(orjson.dumps(value)))


def customer_id(n: int) -> str:
    """The id of customer number ``n``."""
    return f"c{n:06d}"


def build(events: int, customers: int, partitions: int, seed: int = 42) -> Workload:
    """Generate the workload deterministically from ``seed``."""
    rng = random.Random(seed)
    names = list(CATALOGUE)
    weights = [CATALOGUE[n][1] for n in names]
    step = PERIOD_S / max(1, events)
    purchases: list[Record] = []
    products = [
        (pid, held_json({"product_id": pid, "price": price, "category": "shop", "ts": T0 - 1}))
        for pid, (price, _) in CATALOGUE.items()
    ] + [
        (pid, held_json({"product_id": pid, "price": price, "category": "shop", "ts": ts}))
        for pid, price, ts in PRICE_CHANGES
    ]
    chosen = rng.choices(names, weights, k=events)
    for i, product in enumerate(chosen):
        user = customer_id(rng.randrange(customers))
        event: dict[str, object] = {
            "user_id": user, "product_id": product, "purchase_id": f"p{i:08d}",
            "ts": round(T0 + i * step + rng.random() * step, 3),
        }
        if rng.random() < 0.2:
            event["price"] = round(price_of(product) * rng.choice((0.8, 0.9, 1.0)), 2)
        purchases.append((user.encode(), held_json(event)))
    return Workload(events, customers, partitions,
                    purchases, [(k.encode(), v) for k, v in products])


def expected_totals(workload: Workload) -> tuple[dict[str, float], dict[str, int]]:
    """What every peer must end up with: spend (peers' static prices) and coffee per customer."""
    spend: dict[str, float] = {}
    coffee: dict[str, int] = {}
    for key, raw in workload.purchases:
        event = orjson.loads(raw)
        user = key.decode()
        price = event.get("price")
        spend[user] = spend.get(user, 0.0) + (price if price is not None
                                              else price_of(event["product_id"]))
        if event["product_id"] == STAMP_PRODUCT:
            coffee[user] = coffee.get(user, 0) + 1
    return spend, coffee


async def create_topics(bootstrap: str, specs: Sequence[TopicSpec]) -> None:
    """Create topics with explicit settings (retention.ms and cleanup.policy always set),
    returning once every partition has a leader (:func:`app.dev.devstack.ensure_topics`)."""
    await ensure_topics(bootstrap, specs, timeout=30.0)


async def delete_topics(bootstrap: str, prefixes: Sequence[str]) -> list[str]:
    """Delete every topic whose name starts with one of ``prefixes``; the names deleted.

    A trial's topics stay on the embedded broker (which keeps everything in memory) unless
    deleted, and later trials would run next to all of them.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(tuple(prefixes))]
        if names:
            await admin.delete_topics(names)
        return names
    finally:
        await admin.close()


def peer_topics(prefix: str, partitions: int) -> list[TopicSpec]:
    """The input topics of one peer."""
    return [
        TopicSpec(f"{prefix}purchases", partitions, EVENT_TOPIC_CONFIG),
        TopicSpec(f"{prefix}products", partitions, COMPACT_TOPIC_CONFIG),
    ]


async def produce(bootstrap: str, topic: str, records: Iterable[Record],
                  chunk: int = 5_000, *, keyless: bool = False,
                  ends: dict[int, int] | None = None) -> int:
    """Produce keyed records (default partitioner) and wait for every acknowledgement
    (``keyless``: without their keys, spread by the client as a keyless producer's are;
    ``ends``: filled with each partition's offset after its last record, as acknowledged)."""
    def note(acks: Iterable[Any]) -> None:
        if ends is not None:
            for meta in acks:
                ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks=1,
                                max_batch_size=512 * 1024, max_request_size=4 * 1024 * 1024)
    await producer.start()
    sent = 0
    try:
        pending: list[asyncio.Future[object]] = []
        for key, value in records:
            pending.append(await producer.send(topic, value, key=None if keyless else key))
            if len(pending) >= chunk:
                note(await asyncio.gather(*pending))
                sent += len(pending)
                pending = []
        note(await asyncio.gather(*pending))
        sent += len(pending)
    finally:
        await producer.stop()
    return sent


async def produce_workload(bootstrap: str, prefix: str, workload: Workload,
                           products_base: str = "products",
                           purchases_base: str = "purchases", *,
                           keyless_purchases: bool = False) -> float:
    """Create a peer's topics and produce the catalogue, then every purchase; returns seconds.
    ``keyless_purchases``: purchases without keys (Kafka refuses keyless records on compacted
    topics; purchases is not compacted, products stay keyed)."""
    started = time.monotonic()
    await produce(bootstrap, f"{prefix}{products_base}", workload.products)
    await produce(bootstrap, f"{prefix}{purchases_base}", workload.purchases,
                  keyless=keyless_purchases)
    return time.monotonic() - started
