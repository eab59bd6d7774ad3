"""How every storestream table is declared.

Private internals mirrored (listed in app/runtime/internals.py; checked against
faust-streaming 0.15.3, re-check on upgrade): ``faust.tables.base.Collection._new_changelog_topic``
(the changelog topic made again once the key and value serializers are set); a table restored
newest-first wraps ``faust.tables.table.Table.apply_changelog_batch`` (the restore of Faust's
recovery and of the bulk restore both call it) and reads its store with ``get``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from core.changelog import Offsets, record_offsets, superseded

log = logging.getLogger(__name__)


def text_keyed_table(factory: Any, name: str, help: str, *,
                     newest_by_offsets: Offsets | None = None, **options: Any) -> Any:
    """A table with UTF-8 text keys and JSON values on its changelog, and no default.

    Faust would JSON-encode ``str`` keys (``b'"kris"'``) and route by those bytes, while
    producers hash the plain UTF-8 key: with UTF-8 keys the owner Faust computes for a key is
    the partition the producer chose. No default, so a missing key is a 404, not a zero.
    ``newest_by_offsets``: how to read the source offsets the records carry
    (``core.changelog.record_offsets``, ...); a restore then keeps, per key, the value no
    other is ahead of (:func:`restore_newest`).
    """
    table = factory(name, key_type=str, value_type=None, help=help, **options)
    table.key_serializer = "utf8"
    table.value_serializer = "json"
    table.changelog_topic = table._new_changelog_topic()
    if newest_by_offsets is not None:
        restore_newest(table, newest_by_offsets)
    return table


def restore_newest(table: Any, offsets: Offsets = record_offsets) -> None:
    """Make ``table``'s restore skip a changelog record superseded by the value already
    restored for its key (:func:`core.changelog.superseded`: a cut-off worker's write that
    landed after its successor's), counting each in
    ``storestream_changelog_superseded_total``."""
    apply_batch = table.apply_changelog_batch

    def apply_newest(batch: Sequence[Any]) -> None:
        store = table.data
        latest: dict[Any, Any] = {}
        kept = []
        skipped = 0
        for event in batch:
            key, value = event.key, event.value
            if value is not None:
                current = latest[key] if key in latest else store.get(key)
                if superseded(current, value, offsets):
                    skipped += 1
                    continue
            latest[key] = value
            kept.append(event)
        if skipped:
            from app.faust_app import METRICS  # late: the app imports no table module
            METRICS.inc("storestream_changelog_superseded_total", skipped, table=table.name)
            log.warning("%s: %d changelog records skipped on restore, older than the value "
                        "restored before them (late writes of a worker cut off)", table.name,
                        skipped)
        apply_batch(kept)

    table.apply_changelog_batch = apply_newest
