"""An urgent lane's output goes to the producer as soon as its batch is done."""

from __future__ import annotations

import asyncio

from aiokafka.structs import ConsumerRecord
from faust.types import TP

import app as storestream  # noqa: F401  (registers the agents and their lanes)
from app.runtime.fastlane import Source
from app.runtime.transport import Consumer
from app.topics import locations_topic, purchases_topic
from tests.agents.conftest import StandInConsumer


def run_lane(topic: str) -> list[str]:
    steps: list[str] = []
    tp = TP(topic, 0)
    record = ConsumerRecord(topic, 0, 7, 1_000, 0, b"k", b"{}", None, 2, 2, [])

    async def handler(batch: list[Source]) -> None:
        steps.append(f"handled {[s.offset for s in batch]}")

    asyncio.run(Consumer._run_lane(StandInConsumer(steps), tp, [record], handler))
    return steps


def test_urgent_batch_output_is_sent_before_its_offsets_are_acked() -> None:
    assert run_lane(locations_topic.get_topic_name()) == ["handled [7]", "sent", "acked [7]"]


def test_other_batches_leave_their_output_to_the_bulk_writer() -> None:
    assert run_lane(purchases_topic.get_topic_name()) == ["handled [7]", "acked [7]"]


def test_next_fetch_is_sent_before_an_urgent_batch_is_processed() -> None:
    """aiokafka's shape: taking records wakes its fetch routine, which starts a task that
    writes the next request; both get their turns before the lanes run."""
    from app.runtime.transport import _let_fetcher_send

    async def main() -> list[str]:
        steps: list[str] = []
        taken = asyncio.Event()

        async def write_request() -> None:
            steps.append("next fetch sent")

        async def fetch_routine() -> None:
            await taken.wait()
            asyncio.get_running_loop().create_task(write_request())

        routine = asyncio.create_task(fetch_routine())
        await asyncio.sleep(0)  # the routine waits for records to be taken
        taken.set()  # getmany took the fetched records
        await _let_fetcher_send()
        steps.append("lanes run")
        await routine
        return steps

    assert asyncio.run(main()) == ["next fetch sent", "lanes run"]
