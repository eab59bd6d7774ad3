"""Which of two changelog values of one key is newer, by the source offsets they applied.

Every loyalty record remembers the last offset it applied from each log that changes it
(``last_offset``: its input topic; ``last_rp``: that topic's repartition topic;
``last_ret``/``last_ret_rp``: returns and their repartition topic); a shopper's offer
cooldowns remember the last position applied per topic and partition (``applied``). A worker
cut off from the group can still have a changelog write in flight when its partitions move:
it lands after the new owner's writes, and a plain restore (the last record of a key wins)
would bring back the older state (seen in the three-node fault run: a worker cut off for 30 s,
its write landed after its successor's, and the next restore lost purchases). A value whose
offsets are all at or behind the value already restored, and one strictly behind, is such a
late write: :func:`superseded` says so, and the restore keeps the newer value.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

#: The offset fields a loyalty record can carry, one per log that changes it (absent: -1).
OFFSET_FIELDS = ("last_offset", "last_rp", "last_ret", "last_ret_rp")

#: A value's offsets per log, or ``None`` when it carries none that can be compared.
Offsets = Callable[[Any], Mapping[Hashable, int] | None]


def record_offsets(value: Any) -> Mapping[Hashable, int] | None:
    """A loyalty record's offsets (:data:`OFFSET_FIELDS`)."""
    if not isinstance(value, Mapping):
        return None
    found: dict[Hashable, int] = {}
    for name in OFFSET_FIELDS:
        offset = value.get(name, -1)
        if not isinstance(offset, int):
            return None
        found[name] = offset
    return found


def applied_offsets(value: Any) -> Mapping[Hashable, int] | None:
    """The offsets of a state that lists ``applied`` as ``[[topic, partition, offset], ...]``
    (a shopper's offer cooldowns, ``core.offers.CooldownState``)."""
    if not isinstance(value, Mapping):
        return None
    found: dict[Hashable, int] = {}
    for entry in value.get("applied") or ():
        if not isinstance(entry, list | tuple) or len(entry) != 3:
            return None
        topic, partition, offset = entry
        if not isinstance(offset, int):
            return None
        found[(str(topic), partition)] = offset
    return found


def mark_offsets(value: Any) -> Mapping[Hashable, int] | None:
    """A dead-letter mark's offset: the value itself, the highest source offset dead-lettered
    on its partition (``tables.deadletters.dead_letter_marks``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return {"mark": value}


def superseded(current: Any, incoming: Any, offsets: Offsets = record_offsets) -> bool:
    """Whether ``incoming`` is older than ``current``: no log ahead, at least one behind
    (a log a value does not name counts as -1).

    Values without offsets (or not mappings, or tombstones) are never superseded, nor are
    two values each ahead in a different log: then the later write wins, as before.
    """
    now, then = offsets(current), offsets(incoming)
    if now is None or then is None:
        return False
    behind = False
    for log in {*now, *then}:
        was, new = now.get(log, -1), then.get(log, -1)
        if new > was:
            return False
        if new < was:
            behind = True
    return behind


#: A log: (topic, partition).
Log = tuple[str, int]


def applied_to_json(applied: Mapping[Log, int]) -> list[list[Any]]:
    """``applied`` as :func:`applied_offsets` reads it: ``[[topic, partition, offset], ...]``."""
    return [[topic, partition, offset] for (topic, partition), offset in sorted(applied.items())]


def applied_from_json(raw: Any) -> dict[Log, int]:
    """The inverse of :func:`applied_to_json` (nothing for a value without it)."""
    return {(str(topic), int(partition)): int(offset) for topic, partition, offset in raw or ()}


def advanced(applied: Mapping[Log, int], topic: str, partition: int,
             offset: int) -> dict[Log, int]:
    """``applied`` with the log's last offset moved on to ``offset`` (never back)."""
    out = dict(applied)
    out[(topic, partition)] = max(offset, out.get((topic, partition), -1))
    return out
