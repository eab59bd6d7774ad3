"""Frequency caps and quiet hours: offers a shopper may still receive.

No I/O and no framework imports. Times are event-time seconds.

Caps
    At most ``per_visit`` offers per visit (a visit ends after ``visit_gap_s`` without
    positions) and ``per_day`` per day (the calendar day in the store's time zone, UTC for a
    store without settings), across all promotions; 0 means no cap. The nearest offers of a
    position go first.

Quiet hours
    A store's settings (id, time zone, quiet hours such as ``21:00-08:00``) silence it: no
    offer during its quiet hours, in its own time zone.

Offers withheld by a cap or quiet hours are counted by reason and never queued for later: a
later position may trigger an offer again once allowed. A redelivered position is not capped
again (its offers were counted the first time).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar
from zoneinfo import ZoneInfo

from core.changelog import Log, advanced, applied_from_json, applied_to_json

VISIT_CAP = "visit_cap"
DAY_CAP = "day_cap"
QUIET_HOURS = "quiet_hours"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily span of local time in minutes after midnight: ``[start, end)``, wrapping past
    midnight when ``end <= start`` (``21:00-08:00``)."""

    start: int
    end: int

    def holds(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


def _minute(text: str) -> int:
    hours, _, minutes = text.strip().partition(":")
    value = int(hours) * 60 + int(minutes or 0)
    if not 0 <= int(hours) <= 24 or not 0 <= int(minutes or 0) < 60 or value > 24 * 60:
        raise ValueError(f"not a time of day (HH:MM): {text!r}")
    return value % (24 * 60)


def parse_quiet_hours(text: str) -> tuple[QuietHours, ...]:
    """``"21:00-08:00, 12:30-13:00"`` -> spans; empty text: none."""
    spans = []
    for part in text.split(","):
        if not part.strip():
            continue
        start, sep, end = part.partition("-")
        if not sep:
            raise ValueError(f"quiet hours must read HH:MM-HH:MM, got {part.strip()!r}")
        spans.append(QuietHours(_minute(start), _minute(end)))
    return tuple(spans)


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """A store's own settings."""

    store_id: str
    timezone: str = "UTC"
    quiet_hours: tuple[QuietHours, ...] = ()

    def __post_init__(self) -> None:
        ZoneInfo(self.timezone)  # raises for an unknown zone

    def local(self, ts: float) -> datetime:
        return datetime.fromtimestamp(ts, ZoneInfo(self.timezone))

    def quiet(self, ts: float) -> bool:
        """Whether ``ts`` falls in the store's quiet hours, in its time zone."""
        if not self.quiet_hours:
            return False
        minute = _local_second(self.timezone, _second(ts))[0]
        return any(span.holds(minute) for span in self.quiet_hours)

    def day(self, ts: float) -> str:
        """The store's calendar day at ``ts`` (``YYYY-MM-DD``)."""
        return _local_second(self.timezone, _second(ts))[1]


def _second(ts: float) -> int:
    """The epoch second ``ts`` falls in, as ``datetime.fromtimestamp`` sees it (it rounds to
    the microsecond first: 0.9999997 is the next second)."""
    return math.floor(round(ts, 6))


@lru_cache(maxsize=4096)
def _local_second(timezone: str, second: int) -> tuple[int, str]:
    """(minute of the day, ``YYYY-MM-DD``) in ``timezone`` during the epoch ``second``.

    Zone offsets are whole seconds, so both are the same for every instant of a second; a
    store's positions come many per second, and each asked for a time-zone conversion twice
    (quiet hours, then the day of the caps)."""
    when = datetime.fromtimestamp(second, ZoneInfo(timezone))
    return when.hour * 60 + when.minute, when.date().isoformat()


UTC_STORE = StoreSettings("")


@dataclass(frozen=True, slots=True)
class Caps:
    """``MAX_OFFERS_PER_VISIT``, ``MAX_OFFERS_PER_DAY`` (0: none) and ``VISIT_GAP_S``."""

    per_visit: int = 0
    per_day: int = 0
    visit_gap_s: float = 1800.0

    @property
    def active(self) -> bool:
        return self.per_visit > 0 or self.per_day > 0


#: No log written yet (shared: an applied map is never changed, ``advanced`` copies it).
NO_LOGS: Mapping[Log, int] = MappingProxyType({})


class Frequency(NamedTuple):
    """A shopper's offers in the current visit and day.

    A named tuple, not a frozen dataclass: three are built for each position of a capped
    shopper, and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field)
    cost ~1 us each, a tuple's a fifth of it."""

    last_seen: float = float("-inf")
    visit_offers: int = 0
    day: str = ""
    day_offers: int = 0
    #: Per log, the last position written with these counts (a restore keeps the newest:
    #: :func:`core.changelog.superseded`).
    applied: Mapping[Log, int] = NO_LOGS

    def at(self, ts: float, day: str, caps: Caps) -> Frequency:
        """The counts as of a position at ``ts`` on ``day``: a new visit after the gap, a new
        day at midnight (the counts start over)."""
        visit = 0 if ts - self.last_seen > caps.visit_gap_s else self.visit_offers
        today = self.day_offers if day == self.day else 0
        return Frequency(max(self.last_seen, ts), visit, day, today, self.applied)

    def written_at(self, topic: str, partition: int, offset: int) -> Frequency:
        """These counts as written by the position at (topic, partition, offset)."""
        return Frequency(self.last_seen, self.visit_offers, self.day, self.day_offers,
                         advanced(self.applied, topic, partition, offset))

    def to_json(self) -> dict[str, Any]:
        return {"last_seen": None if self.last_seen == float("-inf") else self.last_seen,
                "visit_offers": self.visit_offers, "day": self.day,
                "day_offers": self.day_offers, "applied": applied_to_json(self.applied)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Frequency:
        if not raw:
            return cls()
        seen = raw.get("last_seen")
        return cls(float("-inf") if seen is None else float(seen), int(raw["visit_offers"]),
                   str(raw["day"]), int(raw["day_offers"]), applied_from_json(raw.get("applied")))


def apply_caps(offers: Sequence[T], frequency: Frequency, ts: float, day: str, caps: Caps,
               quiet: bool) -> tuple[list[T], list[tuple[T, str]], Frequency]:
    """Of ``offers`` (nearest first), those that may go out and those withheld with their
    reason, and the shopper's counts after them."""
    now = frequency.at(ts, day, caps)
    if quiet:
        return [], [(offer, QUIET_HOURS) for offer in offers], now
    kept: list[T] = []
    withheld: list[tuple[T, str]] = []
    visit, today = now.visit_offers, now.day_offers
    for offer in offers:
        if caps.per_visit > 0 and visit >= caps.per_visit:
            withheld.append((offer, VISIT_CAP))
        elif caps.per_day > 0 and today >= caps.per_day:
            withheld.append((offer, DAY_CAP))
        else:
            kept.append(offer)
            visit += 1
            today += 1
    # built directly: dataclasses.replace costs several microseconds, once per position
    return kept, withheld, Frequency(now.last_seen, visit, now.day, today, now.applied)
