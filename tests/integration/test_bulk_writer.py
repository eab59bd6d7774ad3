"""The fast lane's bulk writer on a real broker (app/runtime/bulk.py): records queued for a
partition whose batch aiokafka has not sent yet join that batch, as aiokafka's own ``send``
would, instead of waiting a produce round trip for it to go; every record still lands once,
in order, and the delivered-offset callback sees the last record's offset."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.dev.devstack import DevStack, TopicSpec, ensure_topics
from app.runtime.bulk import BulkWriter

pytestmark = pytest.mark.integration

ROUNDS = 30


async def _written(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        values: list[bytes] = []
        deadline = asyncio.get_running_loop().time() + 30
        while len(values) < expected and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            values += [record.value for records in batch.values() for record in records
                       if record.value is not None]
        return values
    finally:
        await consumer.stop()


async def _scenario(bootstrap: str, topic: str) -> tuple[int, int, list[int], list[bytes]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1)
    await producer.start()
    writer = BulkWriter()
    delivered: list[int] = []
    writer.on_delivered(topic, 0, delivered.append)
    try:
        # Drains back to back, without letting the broker answer in between: from the
        # second one on, a batch of the partition is always waiting behind the one in flight.
        for n in range(ROUNDS):
            writer.enqueue(topic, 0, None, f"{n}-a".encode())
            writer.enqueue(topic, 0, None, f"{n}-b".encode())
            await writer.drain(producer)
        batches = writer.batches
        await writer.flush(producer)
        return batches, writer.delivered, delivered, await _written(bootstrap, topic,
                                                                   2 * ROUNDS)
    finally:
        await producer.stop()


@pytest.mark.timeout(120)
def test_records_join_the_partitions_unsent_batch_and_land_once_in_order(
        stack: DevStack) -> None:
    topic = f"bulk-writer-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(stack.bootstrap, [TopicSpec(topic, 1, {})]))
    batches, counted, delivered, values = asyncio.run(_scenario(stack.bootstrap, topic))
    assert batches < ROUNDS  # later rounds joined a waiting batch rather than waited for it
    assert values == [f"{n}-{part}".encode() for n in range(ROUNDS) for part in "ab"]
    assert counted == 2 * ROUNDS
    assert delivered == sorted(set(delivered)) and delivered[-1] == 2 * ROUNDS - 1


async def _backpressure(bootstrap: str, topic: str) -> tuple[list[int], int, list[bytes]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1)
    await producer.start()
    writer = BulkWriter()
    sender = asyncio.ensure_future(writer.run(producer))
    pending_after_wait: list[int] = []
    try:
        await asyncio.sleep(0)  # the sender's task waits for work
        for chunk in range(10):
            for n in range(1_000):  # a chunk of a backlog: queued without a loop turn
                writer.enqueue(topic, 0, None, f"{chunk}-{n}".encode())
            assert await writer.wait_for_room(limit=1_500, timeout=20.0)
            pending_after_wait.append(writer.pending)
        await writer.flush(producer)
        return pending_after_wait, writer.delivered, await _written(bootstrap, topic, 10_000)
    finally:
        sender.cancel()
        await producer.stop()


async def _flush_while_writing(bootstrap: str, topic: str) -> tuple[int, int]:
    """(records queued before a flush, records acknowledged when it returned), with another
    task queueing and draining records the whole time."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1)
    await producer.start()
    writer = BulkWriter()
    stop = asyncio.Event()

    async def keep_writing() -> None:
        while not stop.is_set():
            writer.enqueue(topic, 0, None, b"more")
            await writer.drain(producer)
            await asyncio.sleep(0)

    writing = asyncio.create_task(keep_writing())
    try:
        await asyncio.sleep(0.3)
        writer.enqueue(topic, 0, None, b"before the flush")
        queued = writer.enqueued
        await asyncio.wait_for(writer.flush(producer), 10)
        return queued, writer.delivered
    finally:
        stop.set()
        await writing
        await writer.flush(producer)
        await producer.stop()


@pytest.mark.timeout(120)
def test_a_producer_of_records_waits_until_the_broker_has_taken_them(stack: DevStack) -> None:
    topic = f"bulk-room-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(stack.bootstrap, [TopicSpec(topic, 1, {})]))
    pending, delivered, values = asyncio.run(_backpressure(stack.bootstrap, topic))
    # over the limit after a chunk: it waits until half the limit or less is unsent
    assert all(count <= 1_500 for count in pending), pending
    assert delivered == 10_000
    assert values == [f"{c}-{n}".encode() for c in range(10) for n in range(1_000)]


@pytest.mark.timeout(120)
def test_flush_returns_while_other_records_keep_coming(stack: DevStack) -> None:
    topic = f"bulk-writer-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(stack.bootstrap, [TopicSpec(topic, 1, {})]))
    queued, acknowledged = asyncio.run(_flush_while_writing(stack.bootstrap, topic))
    assert acknowledged >= queued  # every record queued before the call is acknowledged
