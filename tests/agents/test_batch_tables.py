"""One write per key per batch (tables.batch): what the fast lane relies on."""

from __future__ import annotations

import orjson
import pytest

from app.runtime.bulk import BulkWriter
from core.attribution import AttributionState, OfferMark
from core.loyalty import Spend
from tables.batch import DecodedCache, TableWrites
from tables.loyalty import spend
from tables.offers import attribution
from tests.agents.conftest import Sent


def test_decoded_value_is_reused_only_while_the_table_holds_that_very_object(
        sent: Sent) -> None:
    cache = DecodedCache(Spend.from_json)
    state = Spend(settled_cents=250, purchases=1, last_offset=7)
    raw = state.to_json()
    cache.remember("kris", raw, state)
    assert cache.get("kris", raw) is state
    # An equal value that is another object (recovered from the changelog) is decoded again.
    again = cache.get("kris", dict(raw))
    assert again == state and again is not state
    assert cache.get("kris", None) == Spend()


def test_a_batch_writes_each_key_once_with_its_last_value_on_its_source_partition(
        sent: Sent) -> None:
    bulk = BulkWriter()
    writes = TableWrites(3, bulk)
    writes.put(spend, "kris", {"v": 1})
    assert writes.get(spend, "kris") == {"v": 1}  # pending values are read back
    writes.put(spend, "kris", {"v": 2})
    writes.put(spend, "alex", {"v": 5})
    assert writes.commit() == 2
    assert spend.data["kris"] == {"v": 2} and spend.data["alex"] == {"v": 5}
    assert bulk.enqueued == 2 and bulk.pending == 2
    queued = bulk._queued[(spend.changelog_topic.get_topic_name(), 3)]
    assert [(key, value) for key, value, _, _ in queued] == [
        (b"kris", b'{"v":2}'), (b"alex", b'{"v":5}')]


def test_a_deleted_key_leaves_the_table_and_its_changelog_gets_a_tombstone(sent: Sent) -> None:
    bulk = BulkWriter()
    spend.data["kris\x1f20454"] = {"bought": {}}
    writes = TableWrites(2, bulk)
    writes.delete(spend, "kris\x1f20454")
    assert writes.get(spend, "kris\x1f20454") is None  # pending deletes read as absent
    writes.delete(spend, "never-there")
    assert writes.commit() == 2
    assert "kris\x1f20454" not in spend.data
    queued = bulk._queued[(spend.changelog_topic.get_topic_name(), 2)]
    assert [(key, value) for key, value, _, _ in queued] == [
        (b"kris\x1f20454", None), (b"never-there", None)]



def test_a_shoppers_offers_are_kept_as_they_are_and_written_to_the_changelog_as_arrays(
        sent: Sent) -> None:
    offers = (OfferMark("o1", "p1", "101", 100.0, "101", None),
              OfferMark("o2", "p1", "102", 160.0, None, "dairy", held_out=True, redeemed=True))
    state = AttributionState(offers, (), 160.0, 90.0, {("customers.locations", 3): 41})
    bulk = BulkWriter()
    writes = TableWrites(3, bulk)
    writes.put(attribution, "kris", state.to_json())
    writes.commit()
    assert attribution.data["kris"]["offers"][1] is offers[1]  # no copy per write
    queued = bulk._queued[(attribution.changelog_topic.get_topic_name(), 3)]
    written = orjson.loads(queued[0][1])
    assert written["offers"] == [list(offer) for offer in offers]
    assert AttributionState.from_json(written) == state  # what a restore reads back
    with pytest.raises(TypeError):  # anything else orjson cannot write still fails
        _commit_one(bulk, {"x": object()})


def _commit_one(bulk: BulkWriter, value: object) -> None:
    writes = TableWrites(3, bulk)
    writes.put(attribution, "alex", value)
    writes.commit()
