"""The last commit before a rebalance is made even when a timer's commit was in flight
(app.runtime.transport.Consumer.commit_and_end_transactions)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.runtime.transport import COMMIT_WAITS, Consumer

pytestmark = pytest.mark.timeout(30)


class Committing:
    """Faust's commit protocol, reduced: ``in_flight`` commits are running when asked."""

    def __init__(self, in_flight: int) -> None:
        self.in_flight = in_flight
        self.commits: list[bool] = []

    async def maybe_wait_for_commit_to_finish(self) -> bool:
        if not self.in_flight:
            return False
        self.in_flight -= 1
        await asyncio.sleep(0)  # the one in flight finishes
        return True

    _commit_after_any_in_flight = Consumer._commit_after_any_in_flight

    async def commit(self, start_new_transaction: bool = True) -> bool:
        if await self.maybe_wait_for_commit_to_finish():  # Faust: waits, then does nothing
            return False
        self.commits.append(start_new_transaction)
        return True


@pytest.mark.parametrize("in_flight", [0, 1, COMMIT_WAITS])
def test_a_commit_in_flight_does_not_stand_in_for_the_last_one(in_flight: int) -> None:
    """Under exactly_once the commit in flight began new transactions: the last commit must
    still run and end them, or a partition kept through the rebalance is read again from its
    committed offset into a transaction holding its first output already."""
    consumer: Any = Committing(in_flight)
    asyncio.run(Consumer.commit_and_end_transactions(consumer))
    assert consumer.commits == [False]
