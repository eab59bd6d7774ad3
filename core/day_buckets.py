"""The rolling tier window's daily buckets in one packed string (issue 22, criterion 2).

A customer's settled cents per day of event time were a ``{day: cents}`` dict, held twice by
a worker (the table's JSON value with text keys and the decoded record with int keys): with
a 365-day window that tripled a customer's state. :class:`DayBuckets` keeps the same buckets,
exactly, as one ASCII string: ``"first_day,cents,gap,cents,gap,cents..."``: the first day
(days since the epoch, UTC), its cents, then for each further day the number of days since
the previous one and its cents. Days are strictly increasing and no bucket is zero, so each
set of buckets has one packing and two are equal exactly when their strings are. The string
is what the changelog stores (``Spend.to_json``'s ``day_cents``) and what the decoded record
keeps: the table's value and the decoded record share the one object.
"""

from __future__ import annotations

import bisect
from collections.abc import ItemsView, Iterable, Iterator, Mapping, ValuesView
from itertools import accumulate, pairwise
from typing import Any


class DayBuckets(Mapping[int, int]):
    """Cents per day, immutable, packed (see the module's docstring).

    A read-only mapping; each read unpacks the string, so callers that need several reads
    take :meth:`pairs` or :meth:`to_dict` once (``dict(buckets)`` would unpack per key)."""

    __slots__ = ("packed",)

    def __init__(self, packed: str = "") -> None:
        self.packed = packed

    @classmethod
    def of(cls, buckets: Mapping[int, int] | Iterable[tuple[int, int]]) -> DayBuckets:
        """The packed form of ``buckets`` (days in any order; zero buckets dropped)."""
        items = buckets.items() if isinstance(buckets, Mapping) else buckets
        kept = sorted((d, c) for d, c in items if c)
        days = tuple(d for d, _ in kept)
        if len(set(days)) != len(days):
            raise ValueError("a day given twice")
        return _packed(days, tuple(c for _, c in kept))

    def pairs(self) -> list[tuple[int, int]]:
        """``(day, cents)`` in day order."""
        days, cents = _unpacked(self.packed)
        return list(zip(days, cents, strict=True))

    def to_dict(self) -> dict[int, int]:
        """A mutable ``{day: cents}`` copy."""
        days, cents = _unpacked(self.packed)
        return dict(zip(days, cents, strict=True))

    def since(self, first: int) -> int:
        """Cents of the days from ``first`` on."""
        days, cents = _unpacked(self.packed)
        if not days or days[0] >= first:
            return sum(cents)
        return sum(cents[bisect.bisect_left(days, first):])

    def merged(self, adds: Mapping[int, int], first: int) -> DayBuckets:
        """These buckets with ``adds`` added (cents per day), days before ``first`` and
        empty days dropped."""
        days, cents = _unpacked(self.packed)
        if len(adds) <= 1 and (not days or days[0] >= first):
            # the usual case: at most one purchase, on or after the newest day; none to drop
            if not adds:
                return self
            ((day, plus),) = adds.items()
            if not days or day > days[-1]:
                if not plus or day < first:
                    return self
                if not days:
                    return _packed((day,), (plus,))
                return _remember(f"{self.packed},{day - days[-1]},{plus}",
                                 (*days, day), (*cents, plus))
            if day == days[-1]:
                total = cents[-1] + plus
                if total:
                    return _remember(self.packed[:self.packed.rfind(",") + 1] + str(total),
                                     days, (*cents[:-1], total))
                return _packed(days[:-1], cents[:-1])
        buckets = dict(zip(days, cents, strict=True))
        for day, plus in adds.items():
            buckets[day] = buckets.get(day, 0) + plus
        return DayBuckets.of((d, c) for d, c in buckets.items() if d >= first)

    def __getitem__(self, day: int) -> int:
        for at, cents in self.pairs():
            if at == day:
                return cents
        raise KeyError(day)

    def __iter__(self) -> Iterator[int]:
        return iter([day for day, _ in self.pairs()])

    def items(self) -> ItemsView[int, int]:
        return _Items(self)

    def values(self) -> ValuesView[int]:
        return _Values(self)

    def __len__(self) -> int:
        return (self.packed.count(",") + 1) // 2 if self.packed else 0

    def __bool__(self) -> bool:
        return bool(self.packed)

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, DayBuckets):
            return self.packed == other.packed
        if isinstance(other, Mapping):
            return self.to_dict() == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.packed)

    def __repr__(self) -> str:
        return f"DayBuckets({self.to_dict()!r})"


class _Items(ItemsView[int, int]):
    """``items()`` unpacked once, not once per key as ``Mapping``'s would."""

    def __init__(self, buckets: DayBuckets) -> None:
        super().__init__(buckets)
        self._buckets = buckets

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._buckets.pairs())


class _Values(ValuesView[int]):
    """``values()`` unpacked once."""

    def __init__(self, buckets: DayBuckets) -> None:
        super().__init__(buckets)
        self._buckets = buckets

    def __iter__(self) -> Iterator[int]:
        return iter([cents for _, cents in self._buckets.pairs()])


#: No buckets (a lifetime-tier customer, or nothing in the window).
EMPTY_DAYS = DayBuckets()

Unpacked = tuple[tuple[int, ...], tuple[int, ...]]

#: The last string unpacked or packed, and its days and cents: a purchase reads the buckets
#: it has just written (the window's spend), so that read costs nothing. Immutable values.
_last: tuple[str, Unpacked] = ("", ((), ()))


def _unpacked(packed: str) -> Unpacked:
    """Days and cents of a packed string (see the module's docstring)."""
    global _last
    last = _last
    if last[0] is packed or not packed:
        return last[1] if packed else ((), ())
    values = list(map(int, packed.split(",")))
    out = (tuple(accumulate(values[0::2])), tuple(values[1::2]))
    _last = (packed, out)
    return out


def _packed(days: tuple[int, ...], cents: tuple[int, ...]) -> DayBuckets:
    """The buckets of ``days`` (strictly increasing) and their non-zero ``cents``."""
    if not days:
        return EMPTY_DAYS
    flat: list[int] = [0] * (2 * len(days))
    flat[0::2] = [days[0], *(b - a for a, b in pairwise(days))]
    flat[1::2] = cents
    return _remember(",".join(map(str, flat)), days, cents)


def _remember(packed: str, days: tuple[int, ...], cents: tuple[int, ...]) -> DayBuckets:
    """The buckets packed as ``packed``, whose days and cents are known already."""
    global _last
    _last = (packed, (days, cents))
    return DayBuckets(packed)
