"""A batch's state records reach their changelog only after its output records are
acknowledged (app/runtime/bulk.py): a crash in between then leaves the events to be
processed again, never their state without their output."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from app.runtime.bulk import BulkWriter

EVENTS = ("loyalty.events", 0)
SPEND = ("spend-changelog", 0)


class StandInProducer:
    """What the bulk writer asks of aiokafka's producer; acknowledgements are given by the
    test (:meth:`ack`)."""

    def __init__(self) -> None:
        self._message_accumulator = SimpleNamespace(_batches={})
        self.submitted: list[tuple[str, int, int]] = []  # (topic, partition, records)
        self.futures: list[asyncio.Future[Any]] = []

    def create_batch(self) -> Any:
        records: list[bytes | None] = []
        return SimpleNamespace(records=records,
                               append=lambda key, value, timestamp, headers:
                               records.append(value) or object())

    async def send_batch(self, batch: Any, topic: str, partition: int) -> Any:
        self.submitted.append((topic, partition, len(batch.records)))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    def ack(self, index: int, offset: int = 0) -> None:
        self.futures[index].set_result(SimpleNamespace(offset=offset))

    def fail(self, index: int) -> None:
        self.futures[index].set_exception(RuntimeError("not acknowledged"))


def writer_with_state() -> tuple[BulkWriter, list[int]]:
    persisted: list[int] = []
    writer = BulkWriter()
    writer.on_delivered(*SPEND, persisted.append, owner="spend store")
    return writer, persisted


async def drain_a_batch(writer: BulkWriter, producer: StandInProducer,
                        state: bytes = b"{}") -> None:
    """A tier change's event and the customer's new spend record, drained together."""
    writer.enqueue(*EVENTS, b"kris", b"tier_changed")
    writer.enqueue(*SPEND, b"kris", state)
    await writer.drain(producer)


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_batch_state_is_sent_once_its_output_is_acknowledged() -> None:
    async def scenario() -> None:
        producer = StandInProducer()
        writer, persisted = writer_with_state()
        await drain_a_batch(writer, producer)
        await turns()
        assert producer.submitted == [("loyalty.events", 0, 1)]  # the state waits
        producer.ack(0)
        await turns()
        assert producer.submitted[1:] == [("spend-changelog", 0, 1)]
        producer.ack(1, offset=41)
        await writer.flush(producer)
        assert persisted == [41] and writer.pending == 0

    asyncio.run(scenario())


def test_a_batch_without_output_sends_its_state_at_once() -> None:
    async def scenario() -> None:
        producer = StandInProducer()
        writer, _ = writer_with_state()
        writer.enqueue(*SPEND, b"ann", b"{}")
        await writer.drain(producer)
        assert producer.submitted == [("spend-changelog", 0, 1)]

    asyncio.run(scenario())


def test_states_keep_their_order_behind_a_batch_waiting_for_its_output() -> None:
    async def scenario() -> None:
        producer = StandInProducer()
        writer, _ = writer_with_state()
        await drain_a_batch(writer, producer, b"first")
        writer.enqueue(*SPEND, b"kris", b"second")  # no output of its own
        await writer.drain(producer)
        await turns()
        assert producer.submitted == [("loyalty.events", 0, 1)]  # both states wait
        producer.ack(0)
        await turns()
        assert producer.submitted[1:] == [("spend-changelog", 0, 1), ("spend-changelog", 0, 1)]

    asyncio.run(scenario())


def test_a_state_whose_output_failed_is_never_sent_and_the_flush_fails() -> None:
    async def scenario() -> None:
        producer = StandInProducer()
        writer, persisted = writer_with_state()
        await drain_a_batch(writer, producer)
        producer.fail(0)
        with pytest.raises(RuntimeError, match="not acknowledged"):
            await writer.flush(producer)
        assert producer.submitted == [("loyalty.events", 0, 1)]
        assert writer.dropped == 1 and persisted == []

    asyncio.run(scenario())
