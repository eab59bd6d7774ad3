"""One write per table key per batch, straight to the changelog, keeping Faust's semantics.

A batch handler reads state through :meth:`TableWrites.get` (its own pending value first),
records new values with :meth:`TableWrites.put` (the last one per key wins) and ends with
:meth:`TableWrites.commit`, which in one synchronous step updates each table's data and
queues each changelog record:

- ``bulk`` given (the fast lane): the record is queued on :class:`app.runtime.bulk.BulkWriter`
  for the changelog partition equal to the source partition, as Faust's ``Table.__setitem__`` would;
  the producer flushes the writer before Faust commits the input offsets, and each
  delivered batch updates the store's persisted offset (what ``rocksdb://`` recovery uses).
- ``bulk`` is ``None`` (the agent path under ``exactly_once``, a producer without one): plain
  ``table[key] = value``, i.e. Faust's own changelog send (transactional under exactly_once).

Keys are UTF-8 text and values JSON, the serializers of :func:`tables.base.text_keyed_table`.

Private internals mirrored (listed in app/runtime/internals.py; checked against
faust-streaming 0.15.3, re-check on upgrade): the fast lane does what
``faust.tables.table.Table.on_key_set`` and ``faust.tables.base.Collection._send_changelog``
do for a table write (changelog partition = the event's source partition); reads of a
``memory://`` table go to ``faust.stores.memory.Store.data``, the plain dict behind it
(through the store's ``Mapping.get``, a key not there costs a ``KeyError`` raised and caught:
most ``attribution`` reads are such misses).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any, Generic, Protocol, TypeVar

import orjson
from faust.stores.memory import Store as MemoryStore
from faust.types import TP

from app.runtime.bulk import BulkWriter

T = TypeVar("T")

#: A pending value meaning "delete the key" (a tombstone on the changelog).
_DELETED: Any = object()


class TableWrites:
    """Pending table writes of one batch of one source partition."""

    def __init__(self, partition: int, bulk: BulkWriter | None) -> None:
        self.partition = partition
        self._bulk = bulk
        #: Each table written and its pending values, by the table's identity (a Faust
        #: table's __hash__ is a Python method, and these are read several times a record).
        self._pending: dict[int, tuple[Any, dict[str, Any]]] = {}
        self._emitted: list[tuple[Any, bytes, bytes]] = []
        self._after: list[Callable[[], object]] = []

    @property
    def bulk(self) -> BulkWriter | None:
        """The bulk writer the writes go to (``None``: Faust's own table writes)."""
        return self._bulk

    def get(self, table: Any, key: str) -> Any:
        """The value of ``key``: this batch's pending one, else the table's (``None``)."""
        entry = self._pending.get(id(table))
        if entry is not None and key in entry[1]:
            value = entry[1][key]
            return None if value is _DELETED else value
        store = table.data
        if type(store) is MemoryStore:
            return store.data.get(key)
        return store.get(key)

    def put(self, table: Any, key: str, value: Any) -> None:
        """Set ``key`` to ``value`` at :meth:`commit` (a later put of the key replaces it)."""
        entry = self._pending.get(id(table))
        if entry is None:
            entry = self._pending[id(table)] = (table, {})
        entry[1][key] = value

    def delete(self, table: Any, key: str) -> None:
        """Delete ``key`` at :meth:`commit` (a tombstone on the changelog)."""
        self.put(table, key, _DELETED)

    def __len__(self) -> int:
        return sum(len(values) for _, values in self._pending.values())

    def emit(self, topic: Any, key: bytes, value: bytes) -> None:
        """Send a record to an output ``topic`` (a Faust topic), partitioned by ``key``, with
        the writes at :meth:`commit` (queued on the bulk writer in the fast lane, in Faust's
        producer buffer otherwise): a batch given up before its writes sends nothing it would
        send again when its records are delivered again."""
        self._emitted.append((topic, key, value))

    def after_commit(self, action: Callable[[], object]) -> None:
        """Run ``action`` at :meth:`commit`, after the writes: what counts what the batch
        sends (a metric), so that a batch given up before its commit counts nothing it will
        count again when its records are delivered again."""
        self._after.append(action)

    def commit(self) -> int:
        """Send what was emitted, in order, then write every pending value to its table and
        changelog, then run the :meth:`after_commit` actions; return how many values."""
        written = 0
        bulk = self._bulk
        if self._emitted:
            for topic, record_key, record in self._emitted:
                if bulk is None:
                    topic.send_soon(key=record_key, value=record)
                else:
                    bulk.enqueue_keyed(topic.get_topic_name(), record_key, record)
            self._emitted.clear()
        for table, values in self._pending.values():
            if bulk is None:
                for key, value in values.items():
                    if value is not _DELETED:
                        table[key] = value
                    elif key in table:
                        del table[key]
                written += len(values)
                continue
            store = table.data
            data = store.data if type(store) is MemoryStore else store
            topic = table.changelog_topic.get_topic_name()
            partition = self.partition
            if not bulk.delivers_to(topic, partition, store):
                bulk.on_delivered(topic, partition, _persisted(store, TP(topic, partition)),
                                  owner=store)
            enqueue = bulk.enqueue
            dumps = orjson.dumps
            for key, value in values.items():
                if value is _DELETED:
                    if key in data:
                        del data[key]
                    enqueue(topic, partition, key.encode("utf-8"), None)
                    continue
                data[key] = value
                enqueue(topic, partition, key.encode("utf-8"), dumps(value, default=_fields))
            written += len(values)
        self._pending.clear()
        if self._after:
            after, self._after = self._after, []
            for action in after:
                action()
        return written


#: What orjson cannot write by itself in a table value: a named tuple (a record's rows kept
#: as they are, core/attribution.py), written as the array of its fields, as Faust's own
#: serializer writes it; anything else still fails (not subscriptable by a slice).
_fields: Callable[[Any], Any] = itemgetter(slice(None))


def _persisted(store: Any, tp: TP) -> Any:
    def remember(offset: int) -> None:
        store.set_persisted_offset(tp, offset)
    return remember


class IdentityMemo(Generic[T]):
    """Values remembered for a table value *object*: valid while the table still holds that
    very object (the memory store keeps the object written, so an identity check proves the
    value was computed from what the table holds; after a recovery, or with ``rocksdb://``,
    values are new objects and nothing is found). Bounded: past ``limit`` keys it starts
    over."""

    def __init__(self, limit: int = 200_000) -> None:
        self._limit = limit
        self._entries: dict[str, tuple[Any, T]] = {}

    def peek(self, key: str, raw: Any) -> T | None:
        """What was remembered for ``raw``, the value the table holds for ``key``, else
        ``None``."""
        entry = self._entries.get(key)
        if entry is not None and raw is not None and entry[0] is raw:
            return entry[1]
        return None

    def remember(self, key: str, raw: Any, value: T) -> None:
        """Remember ``value`` for ``raw`` (the table's value for ``key``, or about to be)."""
        if len(self._entries) >= self._limit and key not in self._entries:
            self._entries.clear()
        self._entries[key] = (raw, value)

    def __len__(self) -> int:
        return len(self._entries)


class Encodable(Protocol):
    """A decoded record that gives back its table value."""

    def to_json(self) -> Any: ...


E = TypeVar("E", bound=Encodable)


class DecodedCache(IdentityMemo[T]):
    """Decoded table values, reused while the table still holds the very same value object.

    Decoding a customer's JSON records into rule objects (and back) once per batch was the
    largest cost left in the loyalty lane; an identity check (:class:`IdentityMemo`) proves
    the cached object is the decoded form of what the table holds.
    """

    def __init__(self, decode: Callable[[Any], T], limit: int = 200_000) -> None:
        super().__init__(limit)
        self._decode = decode

    def get(self, key: str, raw: Any) -> T:
        """The decoded form of ``raw``, the value the table holds for ``key``."""
        cached = self.peek(key, raw)
        return self._decode(raw) if cached is None else cached

    def write(self: DecodedCache[E], writes: TableWrites, table: Any, key: str,
              value: E) -> None:
        """Queue ``value``'s table value (``to_json``) for ``key`` of ``table``,
        remembering that it decodes to ``value``."""
        raw = value.to_json()
        self.remember(key, raw, value)
        writes.put(table, key, raw)
