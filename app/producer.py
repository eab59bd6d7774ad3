"""Producing input events the way our users' producers do: aiokafka, UTF-8 keys, JSON values.

Keys are hashed by aiokafka's default (murmur2, Java-compatible) partitioner, so a customer's
events share a partition with the same number on every topic. No faust import here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer


def bootstrap_servers(broker_url: str) -> str:
    """``kafka://h1:9092,kafka://h2:9092`` -> ``h1:9092,h2:9092``."""
    hosts = []
    for part in broker_url.split(","):
        part = part.strip()
        if "://" in part:
            part = part.split("://", 1)[1]
        hosts.append(part.rstrip("/"))
    return ",".join(hosts)


def encode(value: Any) -> bytes:
    """A value as the bytes to produce: JSON for objects, bytes/str passed through."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return orjson.dumps(value)


async def produce(
    broker_url: str,
    records: Iterable[tuple[str, str | bytes | None, Any]],
    *,
    linger_ms: int = 5,
) -> int:
    """Send ``(topic, key, value)`` records in order and wait until every one is acknowledged."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers(broker_url), linger_ms=linger_ms, acks="all"
    )
    await producer.start()
    count = 0
    try:
        futures = []
        for topic, key, value in records:
            raw_key = key.encode("utf-8") if isinstance(key, str) else key
            futures.append(await producer.send(topic, encode(value), key=raw_key))
            count += 1
        for future in futures:
            await future
    finally:
        await producer.stop()
    return count
