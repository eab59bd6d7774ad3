"""Catalogue price history and the as-of-event-time price of a purchase."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

#: A price history: ``(ts, cents)`` pairs sorted by ``ts``, at most one per ``ts``.
PriceHistory = tuple[tuple[float, int], ...]

#: Oldest entries beyond this many are dropped (a catalogue price changes rarely).
MAX_HISTORY = 512


def with_price(history: PriceHistory, ts: float, cents: int) -> PriceHistory:
    """Add a price that holds from ``ts`` on; a later event for the same ``ts`` replaces it."""
    entries = list(history)
    index = bisect.bisect_left(entries, ts, key=lambda entry: entry[0])
    if index < len(entries) and entries[index][0] == ts:
        entries[index] = (ts, cents)
    else:
        entries.insert(index, (ts, cents))
    return tuple(entries[-MAX_HISTORY:])


def price_at(history: Sequence[tuple[float, int]], ts: float) -> int | None:
    """The price in force at ``ts``: the latest entry at or before ``ts``.

    Before the first known price, the earliest known price applies; ``None`` when the
    product has never been priced.
    """
    if not history:
        return None
    last_ts, last_cents = history[-1]
    if ts >= last_ts:
        return last_cents  # the usual case: the current price
    index = bisect.bisect_right(history, ts, key=_entry_ts)
    return history[max(index - 1, 0)][1]


def _entry_ts(entry: tuple[float, int]) -> float:
    return entry[0]


def history_from_json(raw: object) -> PriceHistory:
    """Rebuild a history stored as ``[[ts, cents], ...]``."""
    if not isinstance(raw, list):
        return ()
    return tuple(sorted((float(ts), int(cents)) for ts, cents in raw))


def history_to_json(history: PriceHistory) -> list[list[float | int]]:
    """A history as JSON-friendly ``[[ts, cents], ...]``."""
    return [[ts, cents] for ts, cents in history]
