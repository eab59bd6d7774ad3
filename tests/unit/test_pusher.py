"""The direct pusher, on a stand-in delivery (no Redis, no broker)."""

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from app.delivery.pusher import BACKOFF_S, DirectPusher
from app.delivery.sinks import DeliveryError, DeliveryOutcome


class StandInDelivery:
    """Delivers every offer except those whose uid is in ``failing``."""

    def __init__(self, failing: frozenset[str] = frozenset(), broken: bool = False) -> None:
        self.failing = failing
        self.broken = broken
        self.calls: list[list[str]] = []
        self.closed = False

    async def deliver_many(
        self, offers: Sequence[Mapping[str, Any]]
    ) -> list[DeliveryOutcome | DeliveryError]:
        self.calls.append([str(o["offer_id"]) for o in offers])
        if self.broken:
            raise ConnectionError("redis is down")
        return [DeliveryError("nope", permanent=False) if o["uid"] in self.failing
                else DeliveryOutcome(str(o["offer_id"]), "delivered", "skipped")
                for o in offers]

    async def close(self) -> None:
        self.closed = True


def offer(n: int, uid: str = "u1") -> dict[str, Any]:
    return {"offer_id": f"o{n}", "uid": uid}


def test_offers_submitted_together_are_pushed_in_one_round() -> None:
    delivery = StandInDelivery()
    pusher = DirectPusher(lambda: delivery)
    pusher.submit([offer(1), offer(2)])
    asyncio.run(pusher.push_round(delivery))
    assert delivery.calls == [["o1", "o2"]]
    assert pusher.pushed("o1") and pusher.pushed("o2") and pusher.queued == 0


def test_an_offer_that_failed_is_left_to_the_backstop() -> None:
    delivery = StandInDelivery(failing=frozenset({"u2"}))
    left: list[tuple[str, int]] = []
    pusher = DirectPusher(lambda: delivery, on_not_pushed=lambda r, n: left.append((r, n)))
    pusher.submit([offer(1), offer(2, uid="u2")])
    asyncio.run(pusher.push_round(delivery))
    assert pusher.pushed("o1") and not pusher.pushed("o2")
    assert left == [("delivery failed", 1)]


def test_a_broken_delivery_leaves_the_whole_round_to_the_backstop() -> None:
    delivery = StandInDelivery(broken=True)
    left: list[tuple[str, int]] = []
    pusher = DirectPusher(lambda: delivery, on_not_pushed=lambda r, n: left.append((r, n)))
    pusher.submit([offer(1), offer(2)])
    asyncio.run(pusher.push_round(delivery))
    assert not pusher.pushed("o1") and left == [("error", 2)]


def test_after_a_round_that_pushed_nothing_offers_go_to_the_backstop_for_a_while() -> None:
    delivery = StandInDelivery(broken=True)
    left: list[tuple[str, int]] = []
    now = [100.0]
    pusher = DirectPusher(lambda: delivery, clock=lambda: now[0],
                          on_not_pushed=lambda r, n: left.append((r, n)))
    pusher.submit([offer(1)])
    asyncio.run(pusher.push_round(delivery))
    pusher.submit([offer(2)])
    assert pusher.queued == 0 and left == [("error", 1), ("backing off", 1)]
    now[0] += BACKOFF_S
    delivery.broken = False
    pusher.submit([offer(3)])
    asyncio.run(pusher.push_round(delivery))
    assert pusher.pushed("o3") and not pusher.pushed("o2")


def test_offers_beyond_the_queue_bound_are_left_to_the_backstop() -> None:
    left: list[tuple[str, int]] = []
    pusher = DirectPusher(StandInDelivery, max_queued=2,
                          on_not_pushed=lambda r, n: left.append((r, n)))
    pusher.submit([offer(1), offer(2), offer(3)])
    assert pusher.queued == 2 and left == [("queue full", 1)]


def test_the_pusher_task_pushes_what_is_submitted_and_closes_its_client() -> None:
    delivery = StandInDelivery()
    pushed: list[str] = []
    pusher = DirectPusher(lambda: delivery, on_pushed=lambda o: pushed.append(o.offer_id))

    async def scenario() -> None:
        task = asyncio.create_task(pusher.run())
        pusher.submit([offer(1)])
        for _ in range(100):
            if pushed:
                break
            await asyncio.sleep(0.001)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert pushed == ["o1"] and delivery.closed


def test_backstop_is_due_at_start_and_after_offers_were_left_to_it_only() -> None:
    delivery = StandInDelivery(failing=frozenset({"u2"}))
    pusher = DirectPusher(lambda: delivery)
    assert pusher.backstop_due()  # offers emitted before a restart may wait in the topic
    assert not pusher.backstop_due()
    pusher.submit([offer(1)])
    asyncio.run(pusher.push_round(delivery))
    assert not pusher.backstop_due()  # everything pushed: nothing for the backstop
    pusher.submit([offer(2, uid="u2")])
    asyncio.run(pusher.push_round(delivery))
    assert pusher.backstop_due() and not pusher.backstop_due()


def test_registered_pusher_answers_whether_the_backstop_is_due() -> None:
    from app.delivery import pusher as direct_push

    pusher = DirectPusher(lambda: StandInDelivery())
    saved = list(direct_push._REGISTERED)
    try:
        direct_push.register(pusher)
        assert direct_push.backstop_due() and not direct_push.backstop_due()
        direct_push._REGISTERED.clear()
        assert direct_push.backstop_due()  # nothing vouches for the topic
    finally:
        direct_push._REGISTERED[:] = saved
