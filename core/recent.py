"""A bounded set of recently seen ids, oldest forgotten first."""

from __future__ import annotations


class RecentIds:
    """Remembers up to ``capacity`` ids; adding one more forgets the oldest.

    Membership is exact for what is remembered: an id is reported only if it was added and
    not yet evicted, so a caller that treats "not remembered" as "do the work" is always safe.
    """

    __slots__ = ("_capacity", "_ids")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._ids: dict[str, None] = {}

    def add(self, item: str) -> None:
        """Remember ``item`` (as the newest), forgetting the oldest beyond capacity."""
        ids = self._ids
        ids.pop(item, None)
        ids[item] = None
        while len(ids) > self._capacity:
            del ids[next(iter(ids))]

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)
