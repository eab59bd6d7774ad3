"""Which of two changelog values of one key is newer, by the source offsets they applied.

Every loyalty record remembers the last offset it applied from each log that changes it
(``last_offset``: its input topic; ``last_rp``: that topic's repartition topic;
``last_ret``/``last_ret_rp``: returns and their repartition topic). A worker cut off from the
group can still have a changelog write in flight when its partitions move: it lands after
the new owner's writes, and a plain restore (the last record of a key wins) would bring back
the older state (seen in the three-node fault run: a worker cut off for 30 s, its write
landed after its successor's, and the next restore lost purchases). A value whose offsets
are all at or behind the value already restored, and one strictly behind, is such a late
write: :func:`superseded` says so, and the restore keeps the newer value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The offset fields a record can carry, one per log that changes it (absent: -1).
OFFSET_FIELDS = ("last_offset", "last_rp", "last_ret", "last_ret_rp")


def superseded(current: Any, incoming: Any) -> bool:
    """Whether ``incoming`` is older than ``current``: no offset ahead, at least one behind.

    Values without offsets (or not mappings, or tombstones) are never superseded, nor are
    two values each ahead in a different log: then the later write wins, as before.
    """
    if not isinstance(current, Mapping) or not isinstance(incoming, Mapping):
        return False
    behind = False
    for name in OFFSET_FIELDS:
        now, then = current.get(name, -1), incoming.get(name, -1)
        if not isinstance(now, int) or not isinstance(then, int):
            return False
        if then > now:
            return False
        if then < now:
            behind = True
    return behind
