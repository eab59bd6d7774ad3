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
    take :meth:`pairs` or :meth:`to_dict` once (``dict(buckets)`` would unpack per key).

    :meth:`merged` is lazy: up to :data:`LAZY_ADDS` additions are kept beside the packed
    string and folded into it when the buckets are read as a whole (``packed``, equality,
    iteration) or when the window's start passes a day held, so a customer's purchases in
    a batch cost a small tuple each, and the string is rewritten once when the record is
    written. :meth:`since` counts the additions without folding them."""

    __slots__ = ("_adds", "_adds_low", "_adds_total", "_base", "_base_last", "_base_last_cents",
                 "_base_low", "_base_total")

    def __init__(self, packed: str = "") -> None:
        self._base = packed
        #: Lazy additions, flat: ``(day, cents, day, cents, ...)`` (one tuple of ints per
        #: addition, not one more pair: the collector stops tracking a tuple of ints).
        self._adds: tuple[int, ...] = ()
        self._adds_low = 0
        self._adds_total = 0
        # The packed part's first and last day, the last day's cents, the total: -1 while not
        # known (see _base_stats), so that folding and the window's total need no unpacking.
        self._base_low = -1
        self._base_last = 0
        self._base_last_cents = 0
        self._base_total = 0

    @property
    def packed(self) -> str:
        """The buckets' one packing (additions folded in)."""
        if self._adds:
            self._fold()
        return self._base

    def _fold(self) -> None:
        """Write the additions into the string (onto its end when they are all on its last
        day or after it, the usual case: no unpacking)."""
        folded: dict[int, int] = {}
        adds = self._adds
        for at in range(0, len(adds), 2):
            day = adds[at]
            folded[day] = folded.get(day, 0) + adds[at + 1]
        low, total = self._base_stats()
        out = None
        if self._base:
            out = (_appended(self._base, low, self._base_last, self._base_last_cents, total,
                             folded) if min(folded) >= self._base_last
                   else _tail_merged(self._base, low, self._base_last, total, folded))
        if out is None:
            out = DayBuckets(self._base)._merge_now(folded, _NO_START)
            out._base_stats()
        self._base, self._adds, self._adds_low, self._adds_total = out._base, (), 0, 0
        self._base_low, self._base_total = out._base_low, out._base_total
        self._base_last, self._base_last_cents = out._base_last, out._base_last_cents

    def _base_stats(self) -> tuple[int, int]:
        """The packed part's first day (a day no window starts after, when empty) and total."""
        if self._base_low < 0:
            days, cents, total = _unpacked(self._base)
            self._base_low = days[0] if days else _NO_DAYS
            self._base_last = days[-1] if days else _NO_DAYS
            self._base_last_cents = cents[-1] if cents else 0
            self._base_total = total
        return self._base_low, self._base_total

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
        days, cents, _ = _unpacked(self.packed)
        return list(zip(days, cents, strict=True))

    def to_dict(self) -> dict[int, int]:
        """A mutable ``{day: cents}`` copy."""
        days, cents, _ = _unpacked(self.packed)
        return dict(zip(days, cents, strict=True))

    def since(self, first: int) -> int:
        """Cents of the days from ``first`` on."""
        low = self._base_low
        if low < 0:
            low = self._base_stats()[0]
        if low >= first:
            total = self._base_total
        else:
            days, cents, _ = _unpacked(self._base)
            total = sum(cents[bisect.bisect_left(days, first):])
        if self._adds:
            if self._adds_low >= first:
                total += self._adds_total
            else:
                adds = self._adds
                total += sum(adds[at + 1] for at in range(0, len(adds), 2) if adds[at] >= first)
        return total

    def merged(self, adds: Mapping[int, int], first: int) -> DayBuckets:
        """These buckets with ``adds`` added (cents per day), days before ``first`` and
        empty days dropped (lazily: see the class)."""
        low = self._base_low
        if low < 0:
            low = self._base_stats()[0]
        pending = self._adds
        if pending and self._adds_low < low:
            low = self._adds_low
        if low < first:  # days leave the window: fold and drop now
            return DayBuckets(self.packed)._merge_now(adds, first)
        if not adds:
            return self
        total = self._adds_total if pending else 0
        adds_low = self._adds_low if pending else _NO_DAYS
        for day, cents in adds.items():
            if day >= first and cents:
                pending += (day, cents)
                total += cents
                if day < adds_low:
                    adds_low = day
        if pending is self._adds:
            return self
        if len(pending) > 2 * LAZY_ADDS:
            return DayBuckets(self.packed)._merge_now(adds, first)
        out = _new_buckets(DayBuckets)  # every field set here: no __init__ (once a purchase)
        out._base = self._base
        out._adds, out._adds_low, out._adds_total = pending, adds_low, total
        out._base_low, out._base_total = self._base_low, self._base_total
        out._base_last, out._base_last_cents = self._base_last, self._base_last_cents
        return out

    def _merge_now(self, adds: Mapping[int, int], first: int) -> DayBuckets:
        """:meth:`merged` into the packed string at once (for buckets without additions).

        Only the text that changes is rewritten: a purchase adds to the newest days and
        settles purchases of the day before, and a new day drops the oldest ones, so the
        work per purchase does not grow with the number of days held."""
        packed = self.packed
        if not adds and (not packed or _unpacked(packed)[0][0] >= first):
            return self  # nothing settled, nothing out of the window
        days, cents, held = _unpacked(packed)
        if days and days[0] >= first and adds and min(adds) >= days[-1]:
            appended = _appended(packed, days[0], days[-1], cents[-1], held, adds)  # usual
            if appended is not None:
                return appended
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
            pieces = _pieces(days[keep - 1], zip(tail_days, tail_cents, strict=True))[0]
            days, cents = days[:keep] + tail_days, cents[:keep] + tail_cents
            packed = ",".join([head, *pieces])
        if not packed:
            return EMPTY_DAYS
        return self if packed is self._base else _remember(packed, days, cents)

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


_new_buckets = object.__new__

#: No buckets (a lifetime-tier customer, or nothing in the window).
EMPTY_DAYS = DayBuckets()

#: Days, their cents, and the sum of the cents.
Unpacked = tuple[tuple[int, ...], tuple[int, ...], int]

#: Strings lately unpacked or packed, with their days, cents and total: a customer's buckets are
#: read and rewritten by each of their purchases in a batch, so those reads cost a lookup
#: (values immutable; bounded: past ``_UNPACKED_KEPT`` strings it starts over).
_UNPACKED: dict[str, Unpacked] = {}
_UNPACKED_KEPT = 4_096
_NOTHING: Unpacked = ((), (), 0)
#: How many lazy additions a :class:`DayBuckets` holds before folding them in.
LAZY_ADDS = 32
#: A start before every day (folding drops nothing); the first day of empty buckets.
_NO_START = -(2 ** 62)
_NO_DAYS = 2 ** 62


def _unpacked(packed: str) -> Unpacked:
    """Days, cents and total of a packed string (see the module's docstring)."""
    if not packed:
        return _NOTHING
    out = _UNPACKED.get(packed)
    if out is None:
        values = list(map(int, packed.split(",")))
        cents = tuple(values[1::2])
        out = (tuple(accumulate(values[0::2])), cents, sum(cents))
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


def _appended(packed: str, first: int, last: int, last_cents: int, total: int,
              adds: Mapping[int, int]) -> DayBuckets | None:
    """``adds``, all on the last day (``last``, holding ``last_cents``) or after it, written
    onto the end of ``packed`` (first day ``first``, ``total`` cents): no unpacking. ``None``
    when the last bucket would become empty (the general path drops it)."""
    kept = last_cents + adds.get(last, 0)
    if not kept:
        return None
    pieces, end, end_cents = _pieces(last, ((day, adds[day]) for day in sorted(adds)
                                            if day != last))
    if not pieces:
        end_cents = kept
    head = packed if kept == last_cents else f"{packed[:packed.rfind(',') + 1]}{kept}"
    out = DayBuckets(",".join([head, *pieces]) if pieces else head)
    out._base_low, out._base_total = first, total + sum(adds.values())
    out._base_last, out._base_last_cents = end, end_cents
    return out


def _pieces(start: int, buckets: Iterable[tuple[int, int]]) -> tuple[list[str], int, int]:
    """The ``"gap,cents"`` pieces of ``buckets`` (days increasing, all after ``start``, the
    day the text they follow ends on; empty buckets left out), the last day written and its
    cents (``start`` and 0 when none is)."""
    pieces: list[str] = []
    end, end_cents = start, 0
    for day, cents in buckets:
        if cents:
            pieces.append(f"{day - end},{cents}")
            end, end_cents = day, cents
    return pieces, end, end_cents


#: How many of the last buckets :func:`_tail_merged` reads at most.
_TAIL_BUCKETS = (2, 4, 8)


def _tail_merged(packed: str, first: int, last: int, total: int,
                 adds: Mapping[int, int]) -> DayBuckets | None:
    """``adds`` merged into the last few buckets of ``packed`` (first day ``first``, last
    day ``last``, ``total`` cents), reading and rewriting only those: a purchase settles
    the purchases of the day before the newest one, which :func:`_appended` cannot take and
    which would otherwise unpack a whole window of days. ``None`` when the additions reach
    further back than :data:`_TAIL_BUCKETS` (the general path takes them)."""
    low = min(adds)
    for count in _TAIL_BUCKETS:
        parts = packed.rsplit(",", 2 * count)
        if len(parts) != 2 * count + 1:
            return None  # not that many buckets after the first one
        fields = list(map(int, parts[1:]))
        days = [0] * count
        day = last
        for i in range(count - 1, -1, -1):
            days[i] = day
            day -= fields[2 * i]
        if day < low:  # ``day``: the head's last bucket, which no addition touches
            break
    else:
        return None
    tail = dict(zip(days, fields[1::2], strict=True))
    for at, plus in adds.items():
        tail[at] = tail.get(at, 0) + plus
    pieces, end, end_cents = _pieces(day, ((at, tail[at]) for at in sorted(tail)))
    if not pieces:  # every tail bucket emptied: the head's last one is the last
        end_cents = int(parts[0].rsplit(",", 1)[1])
    out = DayBuckets(",".join([parts[0], *pieces]))
    out._base_low, out._base_total = first, total + sum(adds.values())
    out._base_last, out._base_last_cents = end, end_cents
    return out


def _remember(packed: str, days: tuple[int, ...], cents: tuple[int, ...],
              total: int | None = None) -> DayBuckets:
    """The buckets packed as ``packed``, whose days and cents (and their ``total``) are known
    already."""
    total = sum(cents) if total is None else total
    _keep(packed, (days, cents, total))
    out = DayBuckets(packed)
    if days:
        out._base_low, out._base_last, out._base_last_cents = days[0], days[-1], cents[-1]
        out._base_total = total
    return out
