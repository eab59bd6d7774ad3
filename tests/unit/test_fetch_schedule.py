"""The reference topics' fetch schedule (app/runtime/fetch_schedule.py), on a stand-in consumer."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, NamedTuple

import pytest

from app.runtime.fetch_schedule import FetchSchedule


class TP(NamedTuple):
    topic: str
    partition: int


PRODUCTS = [TP("products", p) for p in range(2)]
PURCHASES = [TP("purchases", p) for p in range(2)]
LOCATIONS = [TP("customers.locations", p) for p in range(2)]


class StandInConsumer:
    """Records pause/resume calls; its assignment can change between them."""

    def __init__(self, assigned: list[TP]) -> None:
        self.assigned = set(assigned)
        self.paused_now: set[TP] = set()
        self.calls: list[tuple[str, frozenset[TP]]] = []

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def paused(self) -> set[TP]:
        return set(self.paused_now)

    def pause(self, *tps: Any) -> None:
        assert set(tps) <= self.assigned, "aiokafka refuses to pause unassigned partitions"
        self.paused_now |= set(tps)
        self.calls.append(("pause", frozenset(tps)))

    def resume(self, *tps: Any) -> None:
        assert set(tps) <= self.assigned, "aiokafka refuses to resume unassigned partitions"
        self.paused_now -= set(tps)
        self.calls.append(("resume", frozenset(tps)))


SCHEDULE = FetchSchedule(frozenset({"products"}), interval_s=0.1, window_s=0.05,
                            idle_topics=frozenset({"purchases"}))
#: Sleeps per cycle of SCHEDULE: the interval in two window-long steps, then the window.
SLEEPS = 3


def run_cycles(consumer: StandInConsumer, cycles: int, buffered: set[TP] | None = None,
               between: Any = None, positions: Any = dict) -> list[float]:
    """Run the schedule for ``cycles`` pause/resume cycles; the sleeps it asked for."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if between is not None:
            between(len(slept))

    async def main() -> None:
        await SCHEDULE.run(lambda: consumer, lambda: buffered or set(), sleep,
                           lambda: len(slept) < SLEEPS * cycles, positions)

    asyncio.run(main())
    return slept


def test_reference_partitions_are_fetched_for_a_window_once_per_interval() -> None:
    consumer = StandInConsumer(PRODUCTS + LOCATIONS)
    slept = run_cycles(consumer, 2)
    assert slept == [0.05] * 6
    assert consumer.calls == [("pause", frozenset(PRODUCTS)), ("resume", frozenset(PRODUCTS))] * 2
    assert not consumer.paused_now


def test_hot_partitions_are_never_paused() -> None:
    consumer = StandInConsumer(PRODUCTS + LOCATIONS)
    run_cycles(consumer, 3)
    assert len(consumer.calls) == 6  # a pause and a resume per cycle
    assert all(not (tps & set(LOCATIONS)) for _, tps in consumer.calls)


def test_partition_with_records_waiting_to_be_taken_is_not_paused() -> None:
    consumer = StandInConsumer(PRODUCTS)
    run_cycles(consumer, 1, buffered={PRODUCTS[0]})
    assert consumer.calls == [("pause", frozenset({PRODUCTS[1]})),
                              ("resume", frozenset({PRODUCTS[1]}))]


def test_partition_revoked_while_paused_is_not_resumed() -> None:
    consumer = StandInConsumer(PRODUCTS + LOCATIONS)

    def rebalance(sleeps: int) -> None:
        if sleeps == 1:  # during the interval, products[1] moves to another worker
            consumer.assigned.discard(PRODUCTS[1])

    run_cycles(consumer, 1, between=rebalance)
    assert consumer.calls == [("pause", frozenset(PRODUCTS)), ("resume", frozenset({PRODUCTS[0]}))]


def test_partitions_reassigned_during_the_interval_are_paused_again() -> None:
    consumer = StandInConsumer(PRODUCTS + PURCHASES + LOCATIONS)

    def rebalance(sleeps: int) -> None:
        if sleeps == 1:  # the same partitions assigned again: aiokafka forgot the pauses
            consumer.paused_now.clear()

    run_cycles(consumer, 1, between=rebalance, positions=lambda: {})
    assert consumer.calls == [("pause", frozenset(PRODUCTS)), ("pause", frozenset(PRODUCTS)),
                              ("resume", frozenset(PRODUCTS))]


def test_window_spans_a_fetch_in_flight_and_the_next() -> None:
    assert FetchSchedule.for_fetch_wait(["products"], 100, 10).window_s == 0.05
    assert FetchSchedule.for_fetch_wait(["products"], 250, 100).window_s == 0.4
    assert FetchSchedule.for_fetch_wait(["products"], 250, 100).interval_s == 0.25


def test_no_consumer_yet_means_nothing_to_pause() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    asyncio.run(SCHEDULE.run(lambda: None, set, sleep, lambda: len(slept) < 2))
    assert slept == [0.05, 0.05]


def test_first_assignment_is_scheduled_within_a_window() -> None:
    consumer = StandInConsumer([])

    def assigned_after_the_first_look(sleeps: int) -> None:
        if sleeps == 1:
            consumer.assigned = set(PRODUCTS + LOCATIONS)

    slept = run_cycles(consumer, 1, between=assigned_after_the_first_look)
    assert slept == [0.05] * 4
    assert consumer.calls == [("pause", frozenset(PRODUCTS)), ("resume", frozenset(PRODUCTS))]


def test_idle_partition_is_fetched_once_per_interval_busy_one_in_every_fetch() -> None:
    consumer = StandInConsumer(PURCHASES + LOCATIONS)
    offsets = {PURCHASES[0]: 10, PURCHASES[1]: 50, LOCATIONS[0]: 0}

    def purchases_0_keeps_moving(sleeps: int) -> None:
        offsets[PURCHASES[0]] += 100

    run_cycles(consumer, 3, between=purchases_0_keeps_moving, positions=lambda: dict(offsets))
    # First sight counts as moved; from then on only the idle partition is paused, never
    # the busy one, and never a partition of a topic outside both sets.
    assert consumer.calls == [("pause", frozenset({PURCHASES[1]})),
                              ("resume", frozenset({PURCHASES[1]}))] * 2


def test_partition_that_gets_records_again_is_fetched_in_every_fetch() -> None:
    consumer = StandInConsumer(PURCHASES[:1])
    offsets = {PURCHASES[0]: 10}

    def records_from_the_second_window_on(sleeps: int) -> None:
        if sleeps >= 4:
            offsets[PURCHASES[0]] += 5

    run_cycles(consumer, 4, between=records_from_the_second_window_on,
               positions=lambda: dict(offsets))
    # Cycle 1: first sight; cycle 2: idle, paused; cycles 3-4: moving, fetched every time.
    assert consumer.calls == [("pause", frozenset(PURCHASES[:1])),
                              ("resume", frozenset(PURCHASES[:1]))]


def test_partition_without_a_position_yet_is_not_paused_as_idle() -> None:
    consumer = StandInConsumer(PURCHASES)
    run_cycles(consumer, 3, positions=lambda: {PURCHASES[0]: 7})  # [1]: offset still unknown
    assert consumer.calls == [("pause", frozenset({PURCHASES[0]})),
                              ("resume", frozenset({PURCHASES[0]}))] * 2


def test_window_given_ends_when_the_resumed_partitions_were_fetched_once() -> None:
    consumer = StandInConsumer(PRODUCTS + LOCATIONS)
    slept: list[float] = []
    windows: list[tuple[frozenset[TP], float]] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def fetched_once(resumed: list[TP], bound_s: float) -> None:
        windows.append((frozenset(resumed), bound_s))

    asyncio.run(SCHEDULE.run(lambda: consumer, set, sleep, lambda: len(windows) < 2,
                             window=fetched_once))
    # The interval is still slept in window-long steps; the window is one fetch, not a sleep.
    assert slept == [0.05] * 4
    assert windows == [(frozenset(PRODUCTS), 0.05)] * 2
    assert consumer.calls == [("pause", frozenset(PRODUCTS)), ("resume", frozenset(PRODUCTS))] * 2


QUIET = FetchSchedule(frozenset({"offers"}), interval_s=0.1, window_s=0.05,
                      quiet_interval_s=0.5)
OFFERS = [TP("offers", p) for p in range(2)]


def hold_once(due: list[bool], between: Any = None) -> tuple[list[float], StandInConsumer]:
    """One pause/resume cycle of QUIET; ``due`` answers each due() check in turn."""
    consumer = StandInConsumer(OFFERS + LOCATIONS)
    slept: list[float] = []
    answers = iter(due)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if between is not None:
            between(len(slept), consumer)

    async def window(resumed: list[TP], bound_s: float) -> None:
        raise SystemExit  # one cycle is enough

    async def main() -> None:
        with contextlib.suppress(SystemExit):
            await QUIET.run(lambda: consumer, set, sleep, lambda: True, window=window,
                            due=lambda: next(answers, False))

    asyncio.run(main())
    return slept, consumer


def test_backstop_waits_the_quiet_interval_while_nothing_is_due() -> None:
    slept, consumer = hold_once([False] * 20)
    assert sum(slept) == pytest.approx(0.5)
    assert consumer.calls == [("pause", frozenset(OFFERS)), ("resume", frozenset(OFFERS))]


def test_backstop_reads_after_the_short_interval_once_something_is_due() -> None:
    slept, _ = hold_once([True])
    assert sum(slept) == pytest.approx(0.1)
    slept, _ = hold_once([False, False, True])  # due from the third check on
    assert sum(slept) == pytest.approx(0.2)


def test_backstop_reads_soon_after_a_rebalance() -> None:
    def reassigned(sleeps: int, consumer: StandInConsumer) -> None:
        if sleeps == 1:  # aiokafka forgot the pauses of what it assigned again
            consumer.paused_now.clear()

    slept, _ = hold_once([False] * 20, between=reassigned)
    assert sum(slept) == pytest.approx(0.1)  # the short interval, as when due
