"""How a customer's returns ledger is stored: a head record and one record per day of purchases.

A ledger holds every returnable purchase of the return window (a hundred for a customer who
buys three times a day over 30 days). Written as one changelog record it was rewritten whole,
~5 KB, for every batch holding one of the customer's purchases: on the loyalty benchmark
1.5 GB of changelog for a million purchases, and most of the cost of returns. It is
stored instead under two kinds of keys of the same table:

- the customer's id: the head (held returns, offsets, rejections, what was given up) and
  ``days``, the event-time days that have a record, as runs of consecutive days
  (``"20454-20483,20490"``: a few bytes where a list of 30 days took 180, in a record
  written for every batch; a list, as heads were written before, is read too);
- ``"{customer}\\x1f{day}"``: the purchases bought that day (``bought``), with the ledger's
  offsets when it was written (so a restore keeps the newest of two, see core/changelog.py).

A batch writes the days whose purchases changed (usually today's, a few rows), then the
head. Day records and head share the changelog partition, which keeps their order: when a
head is on the changelog, the day records written before it are too (a crash between them
replays the batch from its committed offset). A day left without purchases is deleted
(a tombstone).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from core.returns import BoughtRow, Ledger
from core.tiers import DAY_S, day_of

#: Between the customer's id and the day in a day record's key (never in an id we accept).
DAY_KEY_SEPARATOR = "\x1f"

#: Rows of one day that changed: purchase id -> the row now (``None``: gone).
DayChanges = dict[str, BoughtRow | None]


def row_day(row: BoughtRow | list[Any]) -> int:
    """The event-time day (UTC, days since the epoch) a ledger row's purchase was on."""
    return day_of(row[0])


def day_key(user: str, day: int) -> str:
    """The key of a customer's purchases of ``day``."""
    return f"{user}{DAY_KEY_SEPARATOR}{day}"


def changed_rows(before: Mapping[str, BoughtRow], after: Mapping[str, BoughtRow],
                 touched: Iterable[str] | None = None) -> dict[int, DayChanges]:
    """The rows that differ between two ledgers' purchases, by day.

    ``touched``: the purchase ids that can have been added or changed (the purchases
    remembered in a batch), so the work is theirs, not the ledger's; when the count shows a
    row was also dropped (the window moved), or with ``None``, every row is compared."""
    if after is before:
        return {}
    changes: dict[int, DayChanges] = {}
    if touched is not None:
        added = 0
        seen: set[str] = set()
        for pid in touched:
            if pid in seen:
                continue
            seen.add(pid)
            row = after.get(pid)
            was = before.get(pid)
            if row is not None and was is not row:
                _change(changes, pid, was, row)
                added += was is None
        if len(after) == len(before) + added:
            return changes
        changes = {}
    for pid, row in after.items():
        was = before.get(pid)
        if was is not row:
            _change(changes, pid, was, row)
    for pid, was in before.items():
        if pid not in after:
            changes.setdefault(row_day(was), {})[pid] = None
    return changes


def added_rows(fresh: Mapping[str, BoughtRow]) -> dict[int, DayChanges]:
    """Rows new to a ledger (none of their ids in it before, none dropped), by day: what
    :func:`changed_rows` finds for them, without comparing."""
    changes: dict[int, DayChanges] = {}
    for pid, row in fresh.items():
        day = int(row[0] // DAY_S)  # day_of, inline: once per purchase
        rows = changes.get(day)
        if rows is None:
            changes[day] = {pid: row}
        else:
            rows[pid] = row
    return changes


def listed_days(days: list[int], added: Iterable[int], gone: Iterable[int]) -> list[int]:
    """A head's ``days`` (sorted) after days ``added`` got a record and ``gone`` lost
    theirs; ``days`` itself when neither changes it (usually today's day, listed already)."""
    new = [day for day in added if day not in days]
    dropped = [day for day in gone if day in days]
    if not new and not dropped:
        return days
    return sorted(set(days).union(new).difference(dropped))


def _change(changes: dict[int, DayChanges], pid: str, was: BoughtRow | None,
            row: BoughtRow) -> None:
    day = row_day(row)
    changes.setdefault(day, {})[pid] = row
    if was is not None and row_day(was) != day:  # a purchase id used again on another day
        changes.setdefault(row_day(was), {})[pid] = None


def day_rows(stored: Mapping[str, Any] | None, changes: DayChanges) -> dict[str, Any]:
    """A day's stored purchases with ``changes`` applied (empty: the day has none left)."""
    rows: dict[str, Any] = dict(stored["bought"]) if stored else {}
    for pid, row in changes.items():
        if row is None:
            rows.pop(pid, None)
        else:
            rows[pid] = row
    return rows


def day_json(rows: Mapping[str, Any], ledger: Ledger) -> dict[str, Any]:
    """A day record: its purchases and the ledger's offsets as written."""
    record = ledger.offsets_json()
    record["bought"] = rows
    return record


def head_json(ledger: Ledger, days: list[int] | str) -> dict[str, Any]:
    """The head record: the ledger without its purchases, and the days that have a record
    (in order, as :func:`days_text`, or that text itself)."""
    head = ledger.head_json()
    head["days"] = days if isinstance(days, str) else days_text(days)
    return head


def listed_text(head: Mapping[str, Any] | None, added: Sequence[int],
                gone: Sequence[int]) -> str:
    """A head's ``days`` text after days ``added`` got a record and ``gone`` lost theirs
    (:func:`listed_days`). In the usual batch (days on or after the last listed run's
    first, nothing gone) only the text's last run is read: the stored text itself when the
    days are listed already, else that text with the run extended or runs appended."""
    text = head.get("days") if head else None
    if isinstance(text, str) and text and not gone:
        out = _tail_listed(text, added)
        if out is not None:
            return out
    days = stored_days(head)
    listed = listed_days(days, added, gone)
    if listed is days and isinstance(text, str):
        return text  # nothing changes: the stored text as it is
    return days_text(listed)


def _tail_listed(text: str, added: Sequence[int]) -> str | None:
    """``text`` (from :func:`days_text`) listing ``added`` too, when no added day is before
    the first day of its last run; ``None`` otherwise."""
    before, _, last = text.rpartition(",")
    start, _, end = last.partition("-")
    low = int(start)
    high = int(end or start)
    new: list[int] = []
    for day in added:
        if day < low:
            return None
        if day > high:
            new.append(day)
    if not new:
        return text
    new = sorted(set(new))
    at = 0
    while at < len(new) and new[at] == high + 1:  # the last run goes on
        high = new[at]
        at += 1
    pieces = [before] if before else []
    pieces.append(start if high == low else f"{low}-{high}")
    if at < len(new):
        pieces.append(days_text(new[at:]))
    return ",".join(pieces)


def days_text(days: list[int]) -> str:
    """Sorted days as runs of consecutive days: ``[1, 2, 3, 7]`` is ``"1-3,7"``."""
    runs: list[str] = []
    at = 0
    while at < len(days):
        end = at
        while end + 1 < len(days) and days[end + 1] == days[end] + 1:
            end += 1
        runs.append(str(days[at]) if end == at else f"{days[at]}-{days[end]}")
        at = end + 1
    return ",".join(runs)


def days_of_text(text: str) -> list[int]:
    """The days :func:`days_text` wrote, in order."""
    days: list[int] = []
    for run in text.split(",") if text else ():
        first, _, last = run.partition("-")
        days.extend(range(int(first), int(last or first) + 1))
    return days


def stored_days(head: Mapping[str, Any] | None) -> list[int]:
    """The days a head says have a record, in order (none for a head that holds its
    purchases itself, as ledgers were written before day records)."""
    if not head:
        return []
    days = head.get("days", ())
    if isinstance(days, str):
        return days_of_text(days)
    return sorted({int(day) for day in days})  # a list, as heads were written before


def assemble(head: Mapping[str, Any] | None,
             day_records: Iterable[Mapping[str, Any] | None]) -> Ledger:
    """The ledger a head and its day records hold (a head that still holds its purchases
    itself is read as it is)."""
    if not head:
        return Ledger()
    bought: dict[str, Any] = dict(head.get("bought") or {})
    for record in day_records:
        if record:
            bought.update(record["bought"])
    ordered = dict(sorted(bought.items(), key=lambda item: item[1][0]))
    return Ledger.from_json({**head, "bought": ordered})
