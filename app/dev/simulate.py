"""``faust -A app simulate``: shoppers walking the demo store, sending positions."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from app.dev.producer import bootstrap_servers
from app.routing.partitioning import KeyPartitioner
from core.config import Settings
from core.simulation import StoreWalk, floor_plan, promotions


async def load_store(producer: AIOKafkaProducer, settings: Settings) -> int:
    """Produce the demo floor plan (displays) and its promotions."""
    count = 0
    for planned in floor_plan():
        record = planned.record()
        await producer.send(settings.topics.displays, orjson.dumps(record),
                            key=record["sku"].encode())
        count += 1
    for promo in promotions():
        await producer.send(settings.topics.promotions, orjson.dumps(promo),
                            key=promo["pid"].encode())
        count += 1
    await producer.flush()
    return count


def _progress(sent: int, started: float, shoppers: int, duration: float) -> None:
    elapsed = time.monotonic() - started
    rate = sent / elapsed if elapsed > 0 else 0.0
    limit = f"/{duration:.0f}" if duration else ""
    sys.stderr.write(f"\r  simulate: {sent} positions sent, {rate:6.1f}/s, {shoppers} "
                     f"shoppers, {elapsed:5.0f}{limit} s ")
    sys.stderr.flush()


async def simulate(settings: Settings, *, shoppers: int, rate: float, duration: float,
                   load: bool, seed: int, quiet: bool = False, buy_pct: float = 0.0,
                   offer_buy_pct: float | None = None, visit_stops: int = 0,
                   connection: tuple[str, Mapping[str, Any]] | None = None) -> int:
    """Send positions at ``rate`` per second for ``duration`` seconds (0: until stopped).

    ``connection``: bootstrap servers and aiokafka security settings (SASL/TLS) as the
    worker's own clients use them; default: ``settings.broker_url`` in plain text."""
    if shoppers < 1 or rate <= 0:
        raise ValueError("--shoppers must be >= 1 and --rate > 0")
    servers, auth = connection or (bootstrap_servers(settings.broker_url), {})
    producer = AIOKafkaProducer(bootstrap_servers=servers,
                                partitioner=KeyPartitioner(settings.key_partitioner),
                                linger_ms=20, **auth)
    await producer.start()
    sent = 0
    started = time.monotonic()
    try:
        if load:
            count = await load_store(producer, settings)
            if not quiet:
                sys.stderr.write(f"  simulate: loaded the store ({count} displays and "
                                 "promotions)\n")
        walk = StoreWalk(shoppers, seed=seed, buy_pct=buy_pct, offer_buy_pct=offer_buy_pct,
                         control_pct=settings.control_group_pct, visit_stops=visit_stops)
        last_report = 0.0
        event: dict[str, Any]
        for event in walk.positions(rate, start_ts=time.time()):
            due = started + sent / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            event["ts"] = time.time()
            await producer.send(settings.topics.locations, orjson.dumps(event),
                                key=event["uid"].encode())
            for purchase in walk.take_purchases():
                purchase["ts"] = time.time()
                await producer.send(settings.topics.purchases, orjson.dumps(purchase),
                                    key=purchase["user_id"].encode())
            sent += 1
            now = time.monotonic()
            if not quiet and now - last_report >= 0.5:
                _progress(sent, started, shoppers, duration)
                last_report = now
            if duration and now - started >= duration:
                break
        await producer.flush()
    finally:
        await producer.stop()
        if not quiet:
            _progress(sent, started, shoppers, duration)
            sys.stderr.write("\n")
    return sent
