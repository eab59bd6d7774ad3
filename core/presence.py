"""Presence: which displays a shopper is within the radius of, since when; enter and exit.

No I/O and no framework imports. Times are event-time seconds.

A shopper *enters* a display's radius with the first accurate position within it and *exits*
with the first accurate position outside it; the stay between is the dwell, which a promotion
may require (``dwell_s``) before its offer goes out. Positions whose ``accuracy_m`` exceeds
``MAX_ACCURACY_M`` say nothing about where the shopper is: they neither enter, exit nor
trigger an offer, and are counted. Replays are told by source offset, per log, as for offer
cooldowns: a redelivered position changes nothing and emits no event again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

#: A display: (store_id, sku).
DisplayKey: TypeAlias = tuple[str, str]
#: A log: (topic, partition).
Log: TypeAlias = tuple[str, int]

ENTER = "enter"
EXIT = "exit"


def accurate(accuracy_m: float | None, max_accuracy_m: float) -> bool:
    """Whether a position may trigger offers: no limit (``max_accuracy_m`` 0), no accuracy
    reported, or one within the limit."""
    return max_accuracy_m <= 0 or accuracy_m is None or accuracy_m <= max_accuracy_m


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A shopper entering or leaving a display's radius."""

    uid: str
    store_id: str
    sku: str
    kind: str
    ts: float
    #: How long the shopper stayed (on exit).
    dwell_s: float | None = None

    def to_record(self) -> dict[str, object]:
        record: dict[str, object] = {"uid": self.uid, "store_id": self.store_id,
                                     "sku": self.sku, "event": self.kind, "ts": self.ts}
        if self.dwell_s is not None:
            record["dwell_s"] = self.dwell_s
        return record


@dataclass(frozen=True, slots=True)
class Presence:
    """The displays a shopper is within the radius of (since when), and per log the offset of
    the last position that changed them."""

    near: Mapping[DisplayKey, float] = field(default_factory=dict)
    applied: Mapping[Log, int] = field(default_factory=dict)

    def redelivers(self, topic: str, partition: int, offset: int) -> bool:
        """True when this position was applied to this state already."""
        return offset <= self.applied.get((topic, partition), -1)

    def stayed(self, key: DisplayKey, ts: float) -> float:
        """Seconds the shopper has been within the display's radius at ``ts`` (-1: not)."""
        since = self.near.get(key)
        return -1.0 if since is None else ts - since

    def moved(self, uid: str, ts: float, here: Iterable[DisplayKey], topic: str,
              partition: int, offset: int) -> tuple[Presence, list[PresenceEvent]]:
        """The state after an accurate position within the radius of the displays ``here``,
        and its enter and exit events (exits first, then entries, each by display). A
        redelivered position, or one that changes nothing, returns this very state."""
        if self.redelivers(topic, partition, offset):
            return self, []
        now = set(here)
        left = sorted(key for key in self.near if key not in now)
        came = sorted(key for key in now if key not in self.near)
        if not left and not came:
            return self, []
        events = [PresenceEvent(uid, store, sku, EXIT, ts,
                                round(max(0.0, ts - self.near[(store, sku)]), 3))
                  for store, sku in left]
        events += [PresenceEvent(uid, store, sku, ENTER, ts) for store, sku in came]
        near = {key: since for key, since in self.near.items() if key in now}
        near.update((key, ts) for key in came)
        applied = dict(self.applied)
        applied[(topic, partition)] = max(offset, applied.get((topic, partition), -1))
        return Presence(near, applied), events

    def to_json(self) -> dict[str, Any]:
        return {"near": [[store, sku, since] for (store, sku), since in sorted(self.near.items())],
                "applied": [[t, p, o] for (t, p), o in sorted(self.applied.items())]}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Presence:
        if not raw:
            return cls()
        return cls({(str(s), str(k)): float(t) for s, k, t in raw.get("near") or ()},
                   {(str(t), int(p)): int(o) for t, p, o in raw.get("applied") or ()})
