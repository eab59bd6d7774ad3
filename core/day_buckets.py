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
        empty days dropped.

        Only the text that changes is rewritten: a purchase adds to the newest days and
        settles purchases of the day before, and a new day drops the oldest ones, so the
        work per purchase does not grow with the number of days held."""
        packed = self.packed
        days, cents = _unpacked(packed)
        if len(adds) == 1 and days and days[0] >= first:
            ((day, plus),) = adds.items()  # the usual case: one day, on or after the newest
            if day > days[-1] and plus:
                return _remember(f"{packed},{day - days[-1]},{plus}", (*days, day),
                                 (*cents, plus))
            if day == days[-1] and cents[-1] + plus:
                total = cents[-1] + plus
                return _remember(f"{packed[:packed.rfind(',') + 1]}{total}", days,
                                 (*cents[:-1], total))
        if days and days[0] < first:  # drop the head: days before the window
            cut = bisect.bisect_left(days, first)
            if cut == len(days):
                packed, days, cents = "", (), ()
            else:
                days, cents = days[cut:], cents[cut:]
                rest = packed.split(",", 2 * cut + 2)[-1] if len(days) > 1 else ""
                packed = f"{days[0]},{cents[0]}" + ("," + rest if rest else "")
        if adds:
            low = min(adds)
            if low < first:
                adds = {day: plus for day, plus in adds.items() if day >= first}
                if not adds:
                    return _remember(packed, days, cents) if packed else EMPTY_DAYS
                low = min(adds)
            keep = bisect.bisect_left(days, low)  # the buckets before it are left as they are
            tail = dict(zip(days[keep:], cents[keep:], strict=True))
            for day, plus in adds.items():
                tail[day] = tail.get(day, 0) + plus
            tail_days = tuple(sorted(day for day, total in tail.items() if total))
            tail_cents = tuple(tail[day] for day in tail_days)
            if keep == 0:
                return _packed(tail_days, tail_cents)
            head = packed.rsplit(",", 2 * (len(days) - keep))[0] if keep < len(days) else packed
            days, cents = days[:keep] + tail_days, cents[:keep] + tail_cents
            previous = days[keep - 1]
            pieces = [head]
            for day, total in zip(tail_days, tail_cents, strict=True):
                pieces.append(f"{day - previous},{total}")
                previous = day
            packed = ",".join(pieces)
        if not packed:
            return EMPTY_DAYS
        return self if packed is self.packed else _remember(packed, days, cents)

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

#: Strings lately unpacked or packed, with their days and cents: a customer's buckets are
#: read and rewritten by each of their purchases in a batch, so those reads cost a lookup
#: (values immutable; bounded: past ``_UNPACKED_KEPT`` strings it starts over).
_UNPACKED: dict[str, Unpacked] = {}
_UNPACKED_KEPT = 4_096


def _unpacked(packed: str) -> Unpacked:
    """Days and cents of a packed string (see the module's docstring)."""
    if not packed:
        return ((), ())
    out = _UNPACKED.get(packed)
    if out is None:
        values = list(map(int, packed.split(",")))
        out = (tuple(accumulate(values[0::2])), tuple(values[1::2]))
        _keep(packed, out)
    return out


def _keep(packed: str, unpacked: Unpacked) -> None:
    if len(_UNPACKED) >= _UNPACKED_KEPT:
        _UNPACKED.clear()
    _UNPACKED[packed] = unpacked


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
    _keep(packed, (days, cents))
    return DayBuckets(packed)
