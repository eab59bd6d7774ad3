"""A returns ledger's rows in two layers, so remembering a batch does not copy them all.

A ledger holds every returnable purchase of the return window (400 for a customer buying 13
times a day over 30 days). Each batch holding the customer's purchases made a new version
of the ledger with the new rows, and a new plain dict is a copy of every row: per customer
and batch, 400 entries copied (and 800 objects touched across the heap), a cost that grew
with the window's purchases. :class:`LayeredRows` keeps a large layer shared by successive
versions and a small layer of the rows added since; the small one is folded into a new
large one when it outgrows a quarter of it, so a row is copied a few times over its life,
not once per batch. No layer is changed once built: a version stays what it was.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

V = TypeVar("V")

#: The small layer is folded in once it holds more than a quarter of the large one, and
#: more than this many rows.
FOLD_MIN = 16

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class LayeredRows(Mapping[str, V]):
    """Rows by id: a shared large layer and a small layer of newer rows (a newer row of an
    id wins); iterated in the order a plain dict updated the same way gives."""

    __slots__ = ("_base", "_len", "_recent")

    def __init__(self, base: Mapping[str, V], recent: Mapping[str, V], length: int) -> None:
        self._base = base
        self._recent = recent
        self._len = length

    def get(self, key: str, default: Any = None) -> Any:
        row = self._recent.get(key)
        if row is None:
            return self._base.get(key, default)
        return row

    def __getitem__(self, key: str) -> V:
        row = self._recent.get(key)
        if row is None:
            return self._base[key]
        return row

    def __contains__(self, key: object) -> bool:
        return key in self._recent or key in self._base

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        yield from self._base
        base = self._base
        for key in self._recent:
            if key not in base:
                yield key


def layers(rows: Mapping[str, V]) -> tuple[Mapping[str, V], Mapping[str, V]]:
    """``rows`` as two plain mappings, newer first: a key's row is the newer one's, else the
    older one's. For a caller looking up many keys: two dict lookups each, no Python call."""
    if type(rows) is LayeredRows:
        return rows._recent, rows._base
    return _EMPTY, rows


def first_row(rows: Mapping[str, V]) -> V | None:
    """The first row in iteration order (``None`` when there is none), without starting an
    iteration over the layers: the ledger's expiry check reads it once per batch."""
    if type(rows) is LayeredRows:
        base: Mapping[str, V] = rows._base
        if not base:
            base = rows._recent
        elif rows._recent:
            first = next(iter(base))
            newer = rows._recent.get(first)
            return base[first] if newer is None else newer
    else:
        base = rows
    for row in base.values():
        return row
    return None


def plus_rows(rows: Mapping[str, V], fresh: Mapping[str, V]) -> Mapping[str, V]:
    """``rows`` with ``fresh`` added (a fresh row replaces the row of its id, in place),
    sharing what it can of ``rows``."""
    if not fresh:
        return rows
    if type(rows) is LayeredRows:
        base, recent, length = rows._base, rows._recent, rows._len
    else:
        base, recent, length = rows, _EMPTY, len(rows)
    for key in fresh:
        if key not in recent and key not in base:
            length += 1
    if len(recent) + len(fresh) > max(FOLD_MIN, len(base) // 4):
        return LayeredRows({**base, **recent, **fresh}, _EMPTY, length)
    return LayeredRows(base, {**recent, **fresh}, length)
