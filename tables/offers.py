"""In-store tables: display positions, promotions, and per-shopper offer cooldowns.

Displays and promotions are written by their agents on the worker owning the record's
partition and followed by every worker into a replica plus a spatial / promotion index
(see app.runtime.replica). The shopper table holds only cooldown state: no raw positions are stored.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.faust_app import app
from app.runtime.replica import TopicReplica
from core.changelog import applied_offsets
from core.geo import Display, DisplayIndex, parse_display
from core.lift import Figures
from core.offers import Promotion, PromotionIndex, parse_promotion
from tables.base import text_keyed_table

#: "store_id/sku" -> display record (normalised fields).
displays = text_keyed_table(app.Table, "displays", "Product displays and their positions")
#: pid -> promotion record (normalised fields; active=false once ended).
promotions = text_keyed_table(app.Table, "promotions", "Promotions by pid")
#: uid -> {"last_offered": {"pid\x1fsku": ts}, "opened_by": {"pid\x1fsku": [topic, partition,
#: offset]}}: each cooldown window and the record that opened it
#: (core.offers.windows_to_json); no positions.
shoppers = text_keyed_table(app.Table, "shoppers", "Offer cooldowns per shopper",
                            newest_by_offsets=applied_offsets)
#: uid -> core.attribution.AttributionState as JSON: recent offers, purchases waiting to be
#: attributed, and the offsets applied (written by the locations and the purchases lanes,
#: each in one synchronous step: both topics are keyed by customer, so one partition).
attribution = text_keyed_table(app.Table, "attribution",
                               "Recent offers and purchases awaiting attribution",
                               newest_by_offsets=applied_offsets)

#: uid -> core.presence.Presence as JSON: the displays the shopper is within the radius of,
#: since when (enter/exit events, dwell_s), and the offsets applied; no positions.
presence = text_keyed_table(app.Table, "presence", "Displays each shopper is near, since when",
                            newest_by_offsets=applied_offsets)
#: uid -> core.caps.Frequency as JSON: offers in the current visit and day (frequency caps).
frequency = text_keyed_table(app.Table, "frequency", "Offers per visit and per day",
                             newest_by_offsets=applied_offsets)
#: uid -> core.associates.Visits as JSON: each store's current visit (first, latest seen).
visits = text_keyed_table(app.Table, "visits", "Each shopper's current visit per store",
                          newest_by_offsets=applied_offsets)
#: "pid/partition" -> core.lift.Figures as JSON: a promotion's offers sent and held out,
#: redemptions and revenue on one partition; every worker follows them all (FIGURES).
promotion_figures = text_keyed_table(app.Table, "promotion_figures",
                                     "Offers, redemptions and revenue per promotion and partition")

DISPLAY_INDEX = DisplayIndex()
PROMOTION_INDEX = PromotionIndex()


def display_key(display: Display) -> str:
    """Table key of a display: its identity ``store_id/sku``."""
    return f"{display.store_id}/{display.sku}"


def display_record(display: Display) -> dict[str, Any]:
    """The stored (and replicated) form of a display."""
    return {"sku": display.sku, "lat": display.lat, "lon": display.lon,
            "segment": display.segment, "variant": display.variant,
            "store_id": display.store_id, "active": display.active}


def promotion_record(promo: Promotion) -> dict[str, Any]:
    """The stored (and replicated) form of a promotion."""
    return {"pid": promo.pid, "sku": promo.sku, "segment": promo.segment,
            "discount_pct": str(promo.discount_pct),
            "min_tier": None if promo.min_tier is None else promo.min_tier.name,
            "active": promo.active, "ts": promo.ts,
            **({"dwell_s": promo.dwell_s} if promo.dwell_s > 0 else {}),
            **({"segment_rfm": sorted(promo.segment_rfm)} if promo.segment_rfm else {})}


def _display_changed(key: str, old: Display | None, new: Display | None) -> None:
    if old is not None:
        DISPLAY_INDEX.remove(old.store_id, old.sku)
    if new is not None:
        DISPLAY_INDEX.upsert(new)


def _promotion_changed(key: str, old: Promotion | None, new: Promotion | None) -> None:
    if new is None:
        PROMOTION_INDEX.remove(key)
    else:
        PROMOTION_INDEX.upsert(new)


DISPLAYS: TopicReplica[Display] = TopicReplica(
    displays.changelog_topic.get_topic_name(),
    lambda raw: parse_display(orjson.loads(raw)),
    _display_changed,
)
PROMOTIONS: TopicReplica[Promotion] = TopicReplica(
    promotions.changelog_topic.get_topic_name(),
    lambda raw: parse_promotion(orjson.loads(raw)),
    _promotion_changed,
)


FIGURES: TopicReplica[Figures] = TopicReplica(
    promotion_figures.changelog_topic.get_topic_name(),
    lambda raw: Figures.from_json(orjson.loads(raw)),
)


def figures_key(pid: str, partition: int) -> str:
    """Key of a promotion's figures on one partition."""
    return f"{pid}/{partition}"


def figures_by_promotion() -> dict[str, Figures]:
    """Every promotion's figures, all partitions (every worker's) combined."""
    combined: dict[str, Figures] = {}
    for key, figures in list(FIGURES.data.items()):
        pid = key.rpartition("/")[0]
        combined[pid] = combined.get(pid, Figures()) + figures
    return combined


def store_snapshot(store_id: str | None = None) -> dict[str, Any]:
    """Displays (optionally of one store) and the promotions currently active, for the map."""
    shown = [display_record(d) for d in DISPLAY_INDEX
             if store_id is None or d.store_id == store_id]
    active = [promotion_record(p) for p in PROMOTIONS.data.values() if p.active]
    return {"displays": shown, "promotions": active}


