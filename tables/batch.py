"""One write per table key per batch, straight to the changelog, keeping Faust's semantics.

A batch handler reads state through :meth:`TableWrites.get` (its own pending value first),
records new values with :meth:`TableWrites.put` (the last one per key wins) and ends with
:meth:`TableWrites.commit`, which in one synchronous step updates each table's data and
queues each changelog record:

- ``bulk`` given (the fast lane): the record is queued on :class:`app.bulk.BulkWriter` for the
  changelog partition equal to the source partition, as Faust's ``Table.__setitem__`` would;
  the producer flushes the writer before Faust commits the input offsets, and each
  delivered batch updates the store's persisted offset (what ``rocksdb://`` recovery uses).
- ``bulk`` is ``None`` (the agent path: ``FAST_LANE=off``, ``exactly_once``, tests): plain
  ``table[key] = value``, i.e. Faust's own changelog send (transactional under exactly_once).

Keys are UTF-8 text and values JSON, the serializers of :func:`tables.base.text_keyed_table`.
"""

from __future__ import annotations

from typing import Any

import orjson
from faust.types import TP

from app.bulk import BulkWriter


class TableWrites:
    """Pending table writes of one batch of one source partition."""

    def __init__(self, partition: int, bulk: BulkWriter | None) -> None:
        self.partition = partition
        self._bulk = bulk
        self._pending: dict[Any, dict[str, Any]] = {}

    def get(self, table: Any, key: str) -> Any:
        """The value of ``key``: this batch's pending one, else the table's (``None``)."""
        pending = self._pending.get(table)
        if pending is not None and key in pending:
            return pending[key]
        return table.data.get(key)

    def put(self, table: Any, key: str, value: Any) -> None:
        """Set ``key`` to ``value`` at :meth:`commit` (a later put of the key replaces it)."""
        pending = self._pending.get(table)
        if pending is None:
            pending = self._pending[table] = {}
        pending[key] = value

    def __len__(self) -> int:
        return sum(len(values) for values in self._pending.values())

    def commit(self) -> int:
        """Write every pending value to its table and changelog; return how many."""
        written = 0
        bulk = self._bulk
        for table, values in self._pending.items():
            if bulk is None:
                for key, value in values.items():
                    table[key] = value
                written += len(values)
                continue
            data = table.data
            topic = table.changelog_topic.get_topic_name()
            partition = self.partition
            bulk.on_delivered(topic, partition, _persisted(data, TP(topic, partition)))
            enqueue = bulk.enqueue
            dumps = orjson.dumps
            for key, value in values.items():
                data[key] = value
                enqueue(topic, partition, key.encode("utf-8"), dumps(value))
            written += len(values)
        self._pending.clear()
        return written


def _persisted(store: Any, tp: TP) -> Any:
    def remember(offset: int) -> None:
        store.set_persisted_offset(tp, offset)
    return remember
