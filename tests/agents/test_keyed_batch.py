"""A batch of per-customer records is applied customer by customer
(``agents.common.process_batch(keyed=True)``): each customer's records in offset order, the
customers' state the same as in offset order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.common import OK, by_key, process_batch
from agents.loyalty import apply_purchases
from app.runtime.bulk import BulkWriter
from app.runtime.fastlane import Source
from app.topics import purchases_topic
from tables import loyalty as tables
from tables.batch import TableWrites
from tests.agents.conftest import Sent

pytestmark = pytest.mark.timeout(60)

T0 = 1_767_225_600.0


def keyed(keys: Sequence[bytes | None]) -> list[Source]:
    return [Source("purchases", 0, offset, 0.0, key, b"{}") for offset, key in enumerate(keys)]


def test_a_customers_records_are_applied_together_in_offset_order() -> None:
    batch = keyed([b"ann", b"bob", b"ann", b"cy", b"bob", b"ann"])
    assert [(s.key, s.offset) for s in by_key(batch)] == [
        (b"ann", 0), (b"ann", 2), (b"ann", 5), (b"bob", 1), (b"bob", 4), (b"cy", 3)]


def test_a_batch_with_a_keyless_record_keeps_its_offset_order() -> None:
    """A keyless purchase names its customer in its value only: it may be ann's, whose keyed
    purchases must not overtake it."""
    batch = keyed([b"ann", None, b"bob", b"ann"])
    assert by_key(batch) is batch


def test_a_batch_without_a_repeated_key_is_kept_as_it_is() -> None:
    batch = keyed([b"ann", b"bob"])
    assert by_key(batch) is batch


@given(st.lists(st.sampled_from([b"a", b"b", b"c", b"d"]), max_size=40))
def test_grouping_keeps_every_record_and_each_keys_order(keys: list[bytes]) -> None:
    batch = keyed(keys)
    ordered = by_key(batch)
    assert sorted(s.offset for s in ordered) == list(range(len(batch)))
    for key in set(keys):
        assert [s.offset for s in ordered if s.key == key] == [
            s.offset for s in batch if s.key == key]
    # each key's records are one run
    runs = [s.key for n, s in enumerate(ordered) if n == 0 or ordered[n - 1].key != s.key]
    assert len(runs) == len(set(keys))


def test_failures_of_a_keyed_batch_are_dead_lettered_in_offset_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    lettered: list[int] = []

    async def letter(source: Source, reason: str) -> str:  # the broker's part of it
        lettered.append(source.offset)
        return "dead_lettered"

    monkeypatch.setattr("app.outcomes.dead_letter_once", letter)
    applied: list[int] = []

    def apply_one(source: Source) -> str:
        applied.append(source.offset)
        if source.offset in (1, 2):
            raise ValueError("bad")
        return OK

    asyncio.run(process_batch("purchases", keyed([b"ann", b"bob", b"ann", b"bob"]),
                              apply_one, lambda: None, keyed=True))
    assert applied == [0, 2, 1, 3]
    assert lettered == [1, 2]


def _purchase(offset: int, user: str, product: str) -> Source:
    return Source(purchases_topic.get_topic_name(), 0, offset, T0 + offset, user.encode(),
                  orjson.dumps({"user_id": user, "product_id": product,
                                "purchase_id": f"p{offset}", "ts": T0 + offset}))


async def test_customers_interleaved_end_as_when_each_came_alone(sent: Sent) -> None:
    """Three customers' coffees and sandwiches interleaved in one batch: each ends with the
    records the same purchases give one customer at a time (the oracle: batches of one)."""
    tables.CATALOGUE.apply(b"coffee", orjson.dumps({"category": "beverages",
                                                     "history": [[T0 - 100, 300]]}))
    tables.CATALOGUE.apply(b"sandwich", orjson.dumps({"category": "food",
                                                       "history": [[T0 - 100, 650]]}))
    users = ["ann", "bob", "cy"]
    batch = [_purchase(n, users[(n * 7) % 3], "coffee" if n % 4 else "sandwich")
             for n in range(30)]
    await apply_purchases(batch, TableWrites(0, BulkWriter()))
    together = _records(users)
    for table in (tables.spend, tables.stamps, tables.baskets, tables.ledgers):
        table.data.clear()
    for source in batch:
        await apply_purchases([source], TableWrites(0, BulkWriter()))
    assert together == _records(users)
    assert together["stamps"]["ann"]["total"] > 0 and together["ledgers"]["ann"]


def _records(users: list[str]) -> dict[str, dict[str, dict[str, object]]]:
    """Each customer's spend, stamps, basket and ledger head (a day record keeps the offsets
    of the batch that last wrote it, which batches of one write more often)."""
    return {name: {user: dict(table.data[user]) for user in users}
            for name, table in (("spend", tables.spend), ("stamps", tables.stamps),
                                ("baskets", tables.baskets), ("ledgers", tables.ledgers))}
