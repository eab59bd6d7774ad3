"""Paused partitions answered cheaply in aiokafka's fetch loop (app/runtime/fetch_actions.py), on
aiokafka's real subscription state and a stand-in for the fetcher's own decision."""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

from aiokafka import TopicPartition
from aiokafka.consumer.subscription_state import SubscriptionState

from app.runtime.fetch_actions import (
    URGENT_HOLD_S,
    FetchLog,
    ResumeSignal,
    hold_for_urgent,
    skip_paused,
    split_paused,
)

CHANGELOG = [TopicPartition("spend-changelog", p) for p in range(4)]
POSITIONS = [TopicPartition("customers.locations", p) for p in range(2)]


def subscribed(positions: dict[TopicPartition, int | None]) -> SubscriptionState:
    """A user assignment of ``positions`` (``None``: no position yet)."""
    state = SubscriptionState()
    state.assign_from_user(set(positions))
    for tp, offset in positions.items():
        if offset is not None:
            state.seek(tp, offset)
    return state


class Request(NamedTuple):
    topics: list[tuple[str, list[tuple[int, int, int]]]]


def fetch_of(*topics: str) -> list[tuple[int, Request]]:
    return [(0, Request([(topic, [(0, 0, 1024)]) for topic in topics]))]


class StandInFetcher:
    """Records which partitions aiokafka's own decision was asked about; decides to fetch
    every partition it was asked about."""

    def __init__(self) -> None:
        self._records: dict[TopicPartition, object] = {}
        self.asked: list[set[TopicPartition]] = []
        self.own_future: asyncio.Future[None] | None = None

    def _get_actions_per_node(self, assignment: Any) -> tuple[Any, ...]:
        self.asked.append(set(assignment.tps))
        for tp in assignment.tps:
            assignment.state_value(tp)  # the decision reads every partition's state
        futures = [self.own_future] if self.own_future is not None else []
        return (fetch_of(*sorted({tp.topic for tp in assignment.tps})), {}, 0.2, False,
                futures)


async def test_quietly_paused_partitions_are_not_decided_one_by_one() -> None:
    state = subscribed({**dict.fromkeys(CHANGELOG, 10), **dict.fromkeys(POSITIONS, 3)})
    state.pause(CHANGELOG[0])
    state.pause(CHANGELOG[1])
    decide, resume = split_paused(state.subscription.assignment, {})
    assert set(decide) == set(CHANGELOG[2:]) | set(POSITIONS)
    assert len(resume) == 2 and all(not future.done() for future in resume)


async def test_paused_partition_with_buffered_records_or_no_position_is_still_decided() -> None:
    state = subscribed({CHANGELOG[0]: 10, CHANGELOG[1]: None, POSITIONS[0]: 3})
    state.pause(CHANGELOG[0])
    state.pause(CHANGELOG[1])
    decide, resume = split_paused(state.subscription.assignment, {CHANGELOG[0]: object()})
    assert set(decide) == {CHANGELOG[0], CHANGELOG[1], POSITIONS[0]}
    assert resume == []


async def test_resuming_any_paused_partition_completes_the_one_signal() -> None:
    state = subscribed(dict.fromkeys(CHANGELOG, 0))
    for tp in CHANGELOG:
        state.pause(tp)
    signal = ResumeSignal(asyncio.get_running_loop())
    _, resume = split_paused(state.subscription.assignment, {})
    first = signal.covering(resume)
    assert signal.covering(resume) is first and signal.watched == 4
    state.resume(CHANGELOG[2])
    await asyncio.wait_for(first, 1)
    assert signal.watched == 3
    _, resume = split_paused(state.subscription.assignment, {})
    second = signal.covering(resume)
    assert second is not first and not second.done()
    state.resume(CHANGELOG[0])
    await asyncio.wait_for(second, 1)


async def test_fetcher_decides_only_on_what_it_can_fetch_and_waits_on_one_signal() -> None:
    state = subscribed({**dict.fromkeys(CHANGELOG, 10), **dict.fromkeys(POSITIONS, 3)})
    for tp in CHANGELOG:
        state.pause(tp)
    fetcher = StandInFetcher()
    fetcher.own_future = asyncio.get_running_loop().create_future()
    log = FetchLog()
    skip_paused(fetcher, asyncio.get_running_loop(), log)
    fetches, resets, timeout, invalid, futures = fetcher._get_actions_per_node(
        state.subscription.assignment)
    assert fetcher.asked == [set(POSITIONS)]
    assert (fetches, resets, timeout, invalid) == (
        fetch_of("customers.locations"), {}, 0.2, False)
    assert log.requests == {"customers.locations": 1}  # the requests built are logged
    assert futures[0] is fetcher.own_future and len(futures) == 2
    state.resume(CHANGELOG[3])
    await asyncio.wait_for(futures[1], 1)
    fetcher._get_actions_per_node(state.subscription.assignment)
    assert fetcher.asked[-1] == {*POSITIONS, CHANGELOG[3]}
    assert log.requests == {"customers.locations": 2, "spend-changelog": 1}


async def test_fetcher_without_paused_partitions_decides_as_before() -> None:
    state = subscribed(dict.fromkeys(POSITIONS, 3))
    fetcher = StandInFetcher()
    skip_paused(fetcher, asyncio.get_running_loop())
    *_, futures = fetcher._get_actions_per_node(state.subscription.assignment)
    assert fetcher.asked == [set(POSITIONS)] and futures == []


async def test_window_ends_once_a_fetch_sent_after_the_resume_was_answered() -> None:
    log = FetchLog()
    waiting = asyncio.ensure_future(log.answered([TopicPartition("products", 0)], 5.0))
    await asyncio.sleep(0)
    log.built(fetch_of("customers.locations"))  # in flight before the resume: no proof
    log.built(fetch_of("customers.locations", "products"))  # first fetch naming products
    await asyncio.sleep(0)
    assert not waiting.done()
    log.built(fetch_of("customers.locations", "products"))  # only once the first came back
    await asyncio.wait_for(waiting, 1)


async def test_window_is_bounded_when_no_fetch_names_the_partitions() -> None:
    log = FetchLog()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await log.answered([TopicPartition("products", 0)], 0.05)
    assert 0.04 <= loop.time() - started < 1.0


class Fetched:
    """An aiokafka fetch result as :func:`hold_for_urgent` reads it: when it was fetched."""

    def __init__(self, created: float) -> None:
        self._created = created


def node_of(tp: TopicPartition) -> int:
    """Partition 0 of every topic on broker 0, the others on broker 1."""
    return 0 if tp.partition == 0 else 1


def actions_for(*nodes: int) -> tuple[Any, ...]:
    return ([(node, Request([("products", [(0, 0, 1024)])])) for node in nodes], {}, 0.2,
            False, [])


def test_fetch_to_a_broker_holding_untaken_positions_waits_for_them() -> None:
    buffered = {POSITIONS[0]: Fetched(created=10.0)}  # broker 0: taken soon, then fetched
    fetches, resets, timeout, invalid, futures = hold_for_urgent(
        actions_for(0, 1), buffered, node_of, {"customers.locations"}, now=10.15)
    assert [node for node, _ in fetches] == [1]  # the other broker is fetched as before
    assert (resets, invalid, futures) == ({}, False, [])
    assert timeout == 0.2  # the routine is woken when the records are taken


def test_hold_ends_after_its_bound_and_shortens_the_routine_timeout() -> None:
    buffered = {POSITIONS[0]: Fetched(created=10.0)}
    *_, timeout, _, _ = hold_for_urgent(actions_for(0), buffered, node_of,
                                        {"customers.locations"}, now=10.0 + 0.95)
    assert abs(timeout - 0.05) < 1e-9
    late = hold_for_urgent(actions_for(0), buffered, node_of, {"customers.locations"},
                           now=10.0 + URGENT_HOLD_S + 0.01)
    assert [node for node, _ in late[0]] == [0]  # never taken: aiokafka's own rule again


def test_untaken_records_of_other_topics_hold_nothing() -> None:
    buffered = {CHANGELOG[0]: Fetched(created=10.0)}
    result = actions_for(0, 1)
    assert hold_for_urgent(result, buffered, node_of, {"customers.locations"},
                           now=10.01) is result
    assert hold_for_urgent(result, buffered, node_of, set(), now=10.01) is result


async def test_fetcher_holds_its_fetch_while_positions_wait_to_be_taken() -> None:
    state = subscribed({**dict.fromkeys(CHANGELOG[:1], 10), **dict.fromkeys(POSITIONS, 3)})
    fetcher = StandInFetcher()
    fetcher._select_read_replica = lambda tp: 0  # type: ignore[attr-defined]
    log = FetchLog()
    skip_paused(fetcher, asyncio.get_running_loop(), log, urgent={"customers.locations"})
    fetcher._records[POSITIONS[1]] = Fetched(created=time.monotonic())
    fetches, *_ = fetcher._get_actions_per_node(state.subscription.assignment)
    assert fetches == [] and log.requests == {}
    del fetcher._records[POSITIONS[1]]  # taken: the next request names the positions
    fetches, *_ = fetcher._get_actions_per_node(state.subscription.assignment)
    assert fetches and log.requests["customers.locations"] == 1
