"""One write per key per batch (tables.batch): what the fast lane relies on."""

from __future__ import annotations

from app.runtime.bulk import BulkWriter
from core.loyalty import Spend
from tables.batch import DecodedCache, TableWrites
from tables.loyalty import spend
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

