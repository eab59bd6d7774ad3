"""A paced lane batch (``app.runtime.fastlane.Pace``): a partition's whole fetched batch,
applied in slices with the event loop let run between them, its state written once at the
end; given up between slices, it leaves nothing written and nothing acknowledged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from agents.common import OK, process_batch
from agents.loyalty import apply_purchases
from app.runtime import fastlane
from app.runtime.bulk import BulkWriter
from app.runtime.fastlane import Abandoned, Pace, Source
from app.runtime.transport import Consumer
from app.topics import purchases_topic
from tables import loyalty as tables
from tables.batch import TableWrites
from tests.agents.conftest import Sent, StandInConsumer

pytestmark = pytest.mark.timeout(30)

T0 = 1_767_225_600.0


def records(count: int) -> list[Source]:
    return [Source("purchases", 0, offset, 0.0, b"kris", b"{}") for offset in range(count)]


def pace(size: int, still_ours: Callable[[], bool] = lambda: True) -> Pace:
    return Pace(size, lambda size, seconds: size, still_ours)


async def no_dead_letters(failed: object) -> None:
    return None


def test_a_paced_batch_is_applied_in_slices_and_written_once_at_the_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agents.common.dead_letter_all", no_dead_letters)
    steps: list[str] = []

    def apply_one(source: Source) -> str:
        steps.append(f"apply {source.offset}")
        return OK

    async def other_task() -> None:
        steps.append("the loop ran")

    async def run() -> None:
        with fastlane.pacing(pace(2)):
            task = asyncio.ensure_future(other_task())
            await process_batch("purchases", records(5), apply_one,
                                lambda: steps.append("write"),
                                lambda: steps.append("resumed"))
            await task

    asyncio.run(run())
    assert steps == ["apply 0", "apply 1", "the loop ran", "resumed", "apply 2", "apply 3",
                     "resumed", "apply 4", "write"]


def test_a_batch_without_a_pace_is_applied_in_one_go(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agents.common.dead_letter_all", no_dead_letters)
    steps: list[str] = []

    def apply_one(source: Source) -> str:
        steps.append(f"apply {source.offset}")
        return OK

    asyncio.run(process_batch("purchases", records(3), apply_one,
                              lambda: steps.append("write"), lambda: steps.append("resumed")))
    assert steps == ["apply 0", "apply 1", "apply 2", "write"]


def test_a_batch_no_longer_ours_between_slices_is_given_up_unwritten(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agents.common.dead_letter_all", no_dead_letters)
    steps: list[str] = []
    revoked = [False]

    def apply_one(source: Source) -> str:
        steps.append(f"apply {source.offset}")
        revoked[0] = True  # a rebalance while the loop runs after this slice
        return OK

    async def run() -> None:
        with fastlane.pacing(pace(2, lambda: not revoked[0])):
            await process_batch("purchases", records(5), apply_one,
                                lambda: steps.append("write"))

    with pytest.raises(Abandoned):
        asyncio.run(run())
    assert steps == ["apply 0", "apply 1"]


def test_the_consumer_acknowledges_nothing_of_a_batch_given_up() -> None:
    steps: list[str] = []
    tp = TP(purchases_topic.get_topic_name(), 0)
    batch = [ConsumerRecord(tp.topic, 0, offset, 1_000, 0, b"k", b"{}", None, 2, 2, [])
             for offset in (7, 8)]

    async def handler(sources: Sequence[Source]) -> None:
        steps.append(f"handled {[s.offset for s in sources]}")
        current = fastlane.current_pace()
        assert current is not None
        await current.between()

    async def run() -> bool:
        consumer = StandInConsumer(steps)
        gone = pace(1, lambda: False)
        return await Consumer._run_lane(consumer, tp, batch, handler, gone)  # type: ignore[arg-type]

    assert asyncio.run(run()) is False
    assert steps == ["handled [7, 8]"]  # no "acked"


def _catalogue(history: list[list[float]]) -> None:
    tables.CATALOGUE.apply(b"coffee", orjson.dumps({"category": "beverages",
                                                     "history": history}))


def _purchases(offsets: range) -> list[Source]:
    topic = purchases_topic.get_topic_name()
    return [Source(topic, 0, n, T0 + n, b"kris", orjson.dumps({
        "user_id": "kris", "product_id": "coffee", "purchase_id": f"p{n}", "ts": T0 + n}))
        for n in offsets]


async def _spend_after(batches: list[list[Source]], between: Callable[[], None]) -> object:
    """Kris's spend record after the batches, the catalogue changed by ``between`` after the
    first (as separate batches), or the one batch paced in two slices with it changed while
    the loop runs between them."""
    writes = TableWrites(0, BulkWriter())
    if len(batches) == 2:
        await apply_purchases(batches[0], writes)
        between()
        await apply_purchases(batches[1], writes)
    else:
        async def change_between() -> None:  # runs at the batch's first pause
            between()
        with fastlane.pacing(pace(3)):
            task = asyncio.ensure_future(change_between())
            await apply_purchases(batches[0], writes)
            await task
    return tables.spend.data["kris"]


@pytest.mark.parametrize("late_price_at", [T0 + 1.5, T0 + 4.5])
async def test_a_price_change_between_slices_counts_as_between_two_batches(
        sent: Sent, late_price_at: float) -> None:
    """What the customer's pending purchases come to is kept between their purchases; a
    catalogue change while the loop ran between two slices must be taken into account as if
    the slices had been two batches (priced again, not carried over)."""
    # six coffees: 3 x 33.00 + 3 x 33.66 = 199.98 (CLIMBING), and with the late price from
    # T0 + 1.5 one more at 33.66: 200.64 (BRONZE, past 200.00)
    before = [[T0 - 100, 3_300]]
    after = [[T0 - 100, 3_300], [late_price_at, 3_366]]

    _catalogue(before)
    separate = await _spend_after([_purchases(range(3)), _purchases(range(3, 6))],
                                  lambda: _catalogue(after))
    tables.spend.data.clear()
    tables.ledgers.data.clear()
    tables.stamps.data.clear()
    tables.baskets.data.clear()
    _catalogue(before)
    paced = await _spend_after([_purchases(range(6))], lambda: _catalogue(after))
    assert paced == separate
    assert paced["tier"] == ("BRONZE" if late_price_at < T0 + 2 else "CLIMBING")


@pytest.mark.parametrize("ours", [True, False])
async def test_a_batch_given_up_between_slices_sends_none_of_its_events(
        sent: Sent, ours: bool) -> None:
    """Kris's fifth coffee, in the first slice, makes the next one free (an event on
    ``loyalty.events``); given up at the pause after it, the batch sends that event no more
    than its writes, since both come again when its records are delivered again."""
    _catalogue([[T0 - 100, 300]])
    bulk = BulkWriter()
    with fastlane.pacing(pace(6, lambda: ours)):
        if ours:
            await apply_purchases(_purchases(range(8)), TableWrites(0, bulk))
        else:
            with pytest.raises(Abandoned):
                await apply_purchases(_purchases(range(8)), TableWrites(0, bulk))
    if ours:
        assert any(topic.endswith("loyalty.events") for topic, _ in bulk._queued)
        assert tables.stamps.data["kris"]["total"] == 8
    else:
        assert bulk.enqueued == 0 and "kris" not in tables.stamps.data
