"""Producing input events the way our users' producers do: aiokafka, UTF-8 keys, JSON values.

Keys are hashed by aiokafka's default (murmur2, Java-compatible) partitioner, or the one named
by ``partitioner`` (``KEY_PARTITIONER``, :mod:`core.partitioners`), so a customer's events share
a partition with the same number on every topic. No faust import here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from app.routing.partitioning import KeyPartitioner

#: Large enough for the poison-pill tests' 1 MB values (the topics allow 2 MB).
MAX_REQUEST_BYTES = 4 * 1024 * 1024


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
    partitioner: str | None = None,
) -> list[tuple[str, int, int]]:
    """Send ``(topic, key, value)`` records in order and wait until every one is acknowledged.

    ``partitioner`` names the key partitioner (default: aiokafka's, i.e. ``murmur2``).

    Returns ``(topic, partition, offset)`` of each record, in the order given.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers(broker_url), linger_ms=linger_ms, acks="all",
        max_request_size=MAX_REQUEST_BYTES,
        **({} if partitioner is None else {"partitioner": KeyPartitioner(partitioner)}),
    )
    await producer.start()
    try:
        futures = []
        for topic, key, value in records:
            raw_key = key.encode("utf-8") if isinstance(key, str) else key
            futures.append(await producer.send(topic, encode(value), key=raw_key))
        placed = []
        for future in futures:
            meta = await future
            placed.append((meta.topic, meta.partition, meta.offset))
        return placed
    finally:
        await producer.stop()
