"""Store associates: a shopper of a configured tier arriving in a store, once per visit.

No I/O and no framework imports. Times are event-time seconds.

A shopper's visit of a store starts with their first position there (``store_id`` on the
position) after ``visit_gap_s`` without one. If the shopper's tier is among the configured
tiers (``ASSOCIATE_TIERS``, default GOLD) at that moment, the store's associates hear of it:
one :class:`Arrival`, never the shopper's position. Its ``alert_id`` hashes the shopper, the
store and the visit's first event time, so a redelivered position yields the same id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from core.changelog import Log, advanced, applied_from_json, applied_to_json


def alert_id(uid: str, store_id: str, visit_start: float) -> str:
    """Deterministic id (32 hex chars) of a shopper's arrival for a visit."""
    payload = json.dumps([uid, store_id, round(visit_start * 1000)], separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Arrival:
    """A shopper of a watched tier entering a store (what associates hear: no position)."""

    alert_id: str
    store_id: str
    uid: str
    tier: str
    ts: float

    def to_record(self) -> dict[str, object]:
        return {"alert_id": self.alert_id, "store_id": self.store_id, "uid": self.uid,
                "tier": self.tier, "event": "arrived", "ts": self.ts}


@dataclass(frozen=True, slots=True)
class Visits:
    """Per store: the current visit's first and latest seen event time."""

    stores: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    #: Per log, the last position written with these visits (a restore keeps the newest:
    #: :func:`core.changelog.superseded`).
    applied: Mapping[Log, int] = field(default_factory=dict)

    def seen(self, uid: str, store_id: str, ts: float, tier: str, tiers: Iterable[str],
             visit_gap_s: float) -> tuple[Visits, Arrival | None]:
        """The visits after a position in ``store_id`` at ``ts``, and the arrival to announce.
        Returns this very state when nothing worth writing changed (the visit's clock is moved
        on only every tenth of the gap)."""
        current = self.stores.get(store_id)
        if current is not None and ts - current[1] <= visit_gap_s:
            if ts - current[1] < visit_gap_s / 10:
                return self, None
            start, last = current[0], max(current[1], ts)
            arrival = None
        else:
            start = last = ts
            arrival = (Arrival(alert_id(uid, store_id, ts), store_id, uid, tier, ts)
                       if tier in set(tiers) else None)
        stores = {store: visit for store, visit in self.stores.items()
                  if ts - visit[1] <= visit_gap_s and store != store_id}
        stores[store_id] = (start, last)
        return Visits(stores, self.applied), arrival

    def written_at(self, topic: str, partition: int, offset: int) -> Visits:
        """These visits as written by the position at (topic, partition, offset)."""
        return replace(self, applied=advanced(self.applied, topic, partition, offset))

    def to_json(self) -> dict[str, Any]:
        return {"stores": {store: [start, last] for store, (start, last) in
                           sorted(self.stores.items())},
                "applied": applied_to_json(self.applied)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Visits:
        if not raw:
            return cls()
        return cls({str(store): (float(v[0]), float(v[1]))
                    for store, v in (raw.get("stores") or {}).items()},
                   applied_from_json(raw.get("applied")))
