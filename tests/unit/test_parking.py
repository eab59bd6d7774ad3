"""Parked offers (app.delivery.parking) on a stand-in delivery and consumer (no broker)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.delivery.parking import ROUND, ConsumerHooks, Parked, Parking, Partition
from app.delivery.sinks import DeliveryError, DeliveryOutcome


@dataclass
class Record:
    topic: str
    partition: int
    offset: int


class Sink:
    """Delivers offers while ``up``; a transient failure for all of them while down (as
    ``deliver_many(halt_on_transient=True)`` answers when Redis is down); offers whose uid
    is ``"bad"`` fail for good."""

    def __init__(self) -> None:
        self.up = False
        self.delivered: list[str] = []
        self.calls = 0
        self.closed = False

    async def deliver_many(self, offers: Sequence[Mapping[str, Any]], *,
                           halt_on_transient: bool = False
                           ) -> list[DeliveryOutcome | DeliveryError]:
        assert halt_on_transient
        self.calls += 1
        if not self.up:
            return [DeliveryError("redis transient error: refused", permanent=False)] * len(offers)
        out: list[DeliveryOutcome | DeliveryError] = []
        for offer in offers:
            if offer["uid"] == "bad":
                out.append(DeliveryError("WRONGTYPE", permanent=True))
            else:
                self.delivered.append(str(offer["offer_id"]))
                out.append(DeliveryOutcome(str(offer["offer_id"]), "delivered", "skipped"))
        return out

    async def close(self) -> None:
        self.closed = True


@dataclass
class Consumer:
    """Records pauses, resumes and settlements, as the worker's consumer would apply them."""

    generation: int = 1
    paused: set[Partition] = field(default_factory=set)
    acked: dict[Partition, list[int]] = field(default_factory=dict)
    dead: list[tuple[int, str]] = field(default_factory=list)
    resumed: list[Partition] = field(default_factory=list)

    def hooks(self) -> ConsumerHooks:
        async def settle(partition: Partition, generation: int, offsets: list[int],
                         failed: list[tuple[Any, str]]) -> bool:
            if generation != self.generation:
                return False
            self.dead += [(source.offset, reason) for source, reason in failed]
            self.acked.setdefault(partition, []).extend(offsets)
            return True

        def resume(partition: Partition) -> None:
            self.paused.discard(partition)
            self.resumed.append(partition)

        return ConsumerHooks(generation=lambda: self.generation, pause=self.paused.add,
                             resume=resume, settle=settle)


def parked(partition: int, offset: int, uid: str = "u") -> Parked:
    return Parked(Record("offers", partition, offset),
                  {"offer_id": f"o-{partition}-{offset}", "uid": uid})


def test_parked_offers_pause_their_partition_and_wait_for_the_sink() -> None:
    sink, consumer = Sink(), Consumer()
    parking = Parking(lambda: sink, consumer.hooks())
    parking.park([parked(0, 5), parked(0, 6), parked(3, 1)], "refused")
    assert parking.active and consumer.paused == {("offers", 0), ("offers", 3)}
    status = parking.status()
    assert (status.partitions, status.offers, status.stalled) == (2, 3, True)

    assert asyncio.run(parking.retry_round(sink)) is False  # still down: nothing acked
    assert consumer.acked == {} and parking.active and sink.calls == 1

    sink.up = True
    assert asyncio.run(parking.retry_round(sink)) is True
    assert sorted(sink.delivered) == ["o-0-5", "o-0-6", "o-3-1"]
    assert consumer.acked == {("offers", 0): [5, 6], ("offers", 3): [1]}
    assert consumer.paused == set() and not parking.active and not parking.status().stalled


def test_an_offer_that_fails_for_good_on_a_retry_is_dead_lettered_then_acked() -> None:
    sink, consumer = Sink(), Consumer()
    parking = Parking(lambda: sink, consumer.hooks())
    parking.park([parked(1, 10), parked(1, 11, uid="bad")])
    sink.up = True
    asyncio.run(parking.retry_round(sink))
    assert sink.delivered == ["o-1-10"]
    assert [offset for offset, _ in consumer.dead] == [11]
    assert "permanent" in consumer.dead[0][1]
    assert consumer.acked == {("offers", 1): [10, 11]} and not parking.active


def test_a_rebalance_drops_what_was_parked_without_acking_it() -> None:
    sink, consumer = Sink(), Consumer()
    parking = Parking(lambda: sink, consumer.hooks())
    parking.park([parked(2, 7)])
    consumer.generation = 2  # the partition is read again from its committed offset
    assert not parking.active
    sink.up = True
    asyncio.run(parking.retry_round(sink))
    assert consumer.acked == {} and sink.delivered == []


def test_offers_parked_during_a_retry_wait_for_the_next_one() -> None:
    sink, consumer = Sink(), Consumer()
    parking = Parking(lambda: sink, consumer.hooks())
    parking.park([parked(0, i) for i in range(ROUND + 3)])
    sink.up = True
    asyncio.run(parking.retry_round(sink))  # two calls: ROUND, then 3
    assert sink.calls == 2 and len(sink.delivered) == ROUND + 3
    assert consumer.acked[("offers", 0)] == list(range(ROUND + 3))


def test_the_retry_task_backs_off_while_down_and_delivers_once_up() -> None:
    sink, consumer = Sink(), Consumer()
    waits: list[float] = []

    async def scenario() -> None:
        async def sleep(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) == 4:
                sink.up = True
            await asyncio.sleep(0)

        parking = Parking(lambda: sink, consumer.hooks(), sleep=sleep)
        task = asyncio.create_task(parking.run())
        parking.park([parked(0, 1), parked(0, 2)])
        for _ in range(200):
            if not parking.active:
                break
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert not parking.active

    asyncio.run(scenario())
    assert sink.closed and sink.calls == 4 and sorted(sink.delivered) == ["o-0-1", "o-0-2"]
    assert consumer.acked == {("offers", 0): [1, 2]}
    assert waits[0] <= 0.24 and all(0 < w <= 5.0 for w in waits)
    assert waits[2] > waits[0]  # backing off


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=40),
       st.integers(0, 5))
def test_every_parked_offer_is_acked_once_whatever_the_outage(
        plan: list[int], down_rounds: int) -> None:
    """Offers parked in any order over partitions, an outage of any number of rounds: once
    the sink is back every offer is delivered once and its offset acknowledged once, and
    every partition resumed."""
    sink, consumer = Sink(), Consumer()
    parking = Parking(lambda: sink, consumer.hooks())
    offsets: dict[int, int] = {}
    expected: dict[Partition, list[int]] = {}
    for partition in plan:
        offset = offsets[partition] = offsets.get(partition, -1) + 1
        parking.park([parked(partition, offset)])
        expected.setdefault(("offers", partition), []).append(offset)
    for _ in range(down_rounds):
        asyncio.run(parking.retry_round(sink))
    sink.up = True
    asyncio.run(parking.retry_round(sink))
    assert not parking.active and consumer.paused == set()
    assert consumer.acked == expected
    assert sorted(sink.delivered) == sorted(f"o-{p}-{o}" for (_, p), offs in expected.items()
                                            for o in offs)
