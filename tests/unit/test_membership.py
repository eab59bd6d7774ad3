"""A worker that lost touch with its group holds its dead letters (app.runtime.membership)."""

from __future__ import annotations

import asyncio

from app.runtime.membership import Membership


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_recent_heartbeat_confirms_at_once() -> None:
    clock = Clock()
    membership = Membership(clock)
    clock.now += 5.9
    assert asyncio.run(membership.confirmed(6.0, lambda: False, sleep=_never))


async def _never(seconds: float) -> None:
    raise AssertionError("must not wait")


def test_a_worker_cut_off_waits_for_a_heartbeat_then_goes_on() -> None:
    clock = Clock()
    membership = Membership(clock)
    clock.now += 30.0  # a cut: no heartbeat answered
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.now += seconds
        if len(waits) == 3:
            membership.heartbeat_ok()  # the cut healed and the group still knows it

    assert asyncio.run(membership.confirmed(6.0, lambda: False, sleep=sleep))
    assert len(waits) == 3


def test_a_worker_the_group_dropped_leaves_the_record_to_its_new_owner() -> None:
    """Once a rebalance begins it stops waiting: the rebalance waits for this very event."""
    clock = Clock()
    membership = Membership(clock)
    clock.now += 30.0
    rebalancing = iter([False, False, True])

    async def sleep(seconds: float) -> None:
        clock.now += seconds

    assert not asyncio.run(membership.confirmed(6.0, lambda: next(rebalancing), sleep=sleep))


def test_nothing_is_held_where_no_heartbeat_is_watched() -> None:
    """Tests without a broker, client-only apps: no coordinator, nothing to fence."""
    clock = Clock()
    membership = Membership(clock, watching=False)
    clock.now += 1000.0
    assert asyncio.run(membership.confirmed(6.0, lambda: False, sleep=_never))
