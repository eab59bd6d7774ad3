"""Agents for ``stores.products``, ``products.promotions`` and ``customers.locations``.

The distance join: each shopper position is matched against the displays near it (spatial
index, never a scan) whose sku or segment is on an active promotion; eligible offers go to
``customers.promotions``. Positions are not stored: only offer cooldowns are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from faust.types import StreamT

from agents.attribution import after_position, count_offers
from agents.common import (
    OK,
    apply_each,
    count_lane,
    handle,
    lane_clock,
    lane_writes,
    process_batch,
)
from agents.delivery import PUSHER
from agents.loyalty import SPEND
from app.deadletters import decode_key
from app.faust_app import METRICS, app
from app.runtime import fastlane
from app.runtime.fastlane import Source
from app.settings import SETTINGS
from app.topics import (
    associates_topic,
    displays_topic,
    held_out_topic,
    locations_topic,
    offers_topic,
    presence_topic,
    promotions_topic,
)
from core.associates import Visits
from core.caps import QUIET_HOURS, UTC_STORE, Frequency, apply_caps
from core.events import parse_display_event, parse_position, parse_promotion_event
from core.geo import Display
from core.lift import in_control_group
from core.loyalty import view_spend
from core.offers import CooldownState, Offer, PositionSource, decide_offers
from core.presence import Presence, accurate
from core.rfm import rfm_of
from tables.batch import DecodedCache, TableWrites
from tables.loyalty import RFM_CUTS, price_history, profiles, spend
from tables.offers import (
    DISPLAY_INDEX,
    PROMOTION_INDEX,
    display_key,
    display_record,
    displays,
    frequency,
    presence,
    promotion_record,
    promotions,
    shoppers,
    visits,
)

RULES = SETTINGS.loyalty
#: Decoded per-shopper records of this worker (see tables.batch.DecodedCache): a shopper's
#: positions come a second or less apart, each reading and writing them.
PRESENCE = DecodedCache(Presence.from_json)
VISITS = DecodedCache(Visits.from_json)
FREQUENCY = DecodedCache(Frequency.from_json)
COOLDOWNS = DecodedCache(CooldownState.from_json)
CONTROL_PCT = SETTINGS.control_group_pct
MAX_ACCURACY_M = SETTINGS.max_accuracy_m


async def apply_display(message: Any) -> str:
    """Record a display's position (``active: false`` keeps it, inactive)."""
    display = parse_display_event(message.value, decode_key(message.key))
    displays[display_key(display)] = display_record(display)
    return OK


async def apply_promotion(message: Any) -> str:
    """Start, change or end a promotion."""
    promotion = parse_promotion_event(message.value, decode_key(message.key), message.timestamp)
    current = promotions.get(promotion.pid)
    if current is not None and float(current.get("ts") or 0.0) > promotion.ts:
        return OK  # an older record arriving late never overrides a newer one
    promotions[promotion.pid] = promotion_record(promotion)
    return OK


def track_presence(writes: TableWrites, uid: str, nearby: Sequence[tuple[Display, float]],
                   ts: float, here: PositionSource) -> Presence:
    """Enter and leave displays' radii (events on ``displays.presence``); the shopper's
    presence after this position (``nearby``: the displays within the radius), for
    ``dwell_s``."""
    raw = writes.get(presence, uid)
    keys = [(display.store_id, display.sku) for display, _ in nearby]
    if raw is None and not keys:
        return EMPTY_PRESENCE  # far from every display, and was: nothing to record
    state = PRESENCE.get(uid, raw)
    updated, events = state.moved(uid, ts, keys, here.topic, here.partition, here.offset)
    if updated is not state:
        PRESENCE.write(writes, presence, uid, updated)
    for event in events:
        writes.emit(presence_topic, uid.encode(), orjson.dumps(event.to_record()))
        METRICS.inc("storestream_presence_events_total", event=event.kind)
    return updated


EMPTY_PRESENCE = Presence()
ASSOCIATE_TIERS = SETTINGS.associate_tiers


def announce_arrival(writes: TableWrites, uid: str, store_id: str, ts: float,
                     tier: str, here: PositionSource) -> None:
    """Tell the store's associates (``associates.alerts``, keyed by store) when a shopper of
    a watched tier starts a visit; no position."""
    raw = writes.get(visits, uid)
    state = VISITS.get(uid, raw)
    updated, arrival = state.seen(uid, store_id, ts, tier, ASSOCIATE_TIERS,
                                  CAPS.visit_gap_s)
    if updated is not state:
        written = updated.written_at(here.topic, here.partition, here.offset)
        VISITS.write(writes, visits, uid, written)
    if arrival is not None:
        writes.emit(associates_topic, store_id.encode(), orjson.dumps(arrival.to_record()))
        METRICS.inc("storestream_associate_alerts_total", store=store_id)
CAPS = SETTINGS.caps
STORES = {store.store_id: store for store in SETTINGS.stores}


def limit_offers(writes: TableWrites, uid: str, ts: float, store_id: str | None,
                 offers: list[Offer], here: PositionSource) -> list[Offer]:
    """The offers a shopper may receive now (quiet hours of each offer's store, then the
    caps, nearest first); the others are counted by reason, never kept for later."""
    allowed: list[Offer] = []
    for offer in offers:
        if STORES.get(offer.store_id, UTC_STORE).quiet(ts):
            METRICS.inc("storestream_offers_withheld_total", reason=QUIET_HOURS)
        else:
            allowed.append(offer)
    if not CAPS.active:
        return allowed
    raw = writes.get(frequency, uid)
    state = FREQUENCY.get(uid, raw)
    store = STORES.get(allowed[0].store_id if allowed else (store_id or ""), UTC_STORE)
    kept, withheld, updated = apply_caps(allowed, state, ts, store.day(ts), CAPS, quiet=False)
    for _, reason in withheld:
        METRICS.inc("storestream_offers_withheld_total", reason=reason)
    # The visit's clock is written only now and then (a tenth of the gap), not per position.
    if (updated.visit_offers, updated.day_offers, updated.day) != (
            state.visit_offers, state.day_offers, state.day) or (
            updated.last_seen - state.last_seen >= CAPS.visit_gap_s / 10):
        counted = updated.written_at(here.topic, here.partition, here.offset)
        FREQUENCY.write(writes, frequency, uid, counted)
    return kept


def customer_tier(uid: str) -> str:
    """The shopper's current reward tier (local: locations are keyed by customer too)."""
    return customer_standing(uid, 0.0)[0]


def customer_standing(uid: str, now: float, writes: TableWrites | None = None
                      ) -> tuple[str, str | None]:
    """The shopper's tier and, with RFM on, RFM segment at event time ``now`` (read through
    ``writes`` when given: the store itself, without Faust's per-read table machinery)."""
    raw = spend.get(uid) if writes is None else writes.get(spend, uid)
    if raw is None:
        return "CLIMBING", None
    record = SPEND.get(uid, raw)
    view = view_spend(record, price_history, RULES)
    cuts = RFM_CUTS.current
    if cuts is None:
        return view.tier, None
    return view.tier, rfm_of(record.newest_ts, record.purchases, view.total_cents, now,
                             cuts).segment


def _seen(writes: TableWrites, uid: str, state: CooldownState, here: PositionSource,
          ts: float) -> None:
    """Keep the place of a position that was counted without opening a cooldown (an
    inaccurate one, or one whose offers were all withheld), so a redelivery of it is told
    as such and counted no more (:meth:`core.offers.CooldownState.redelivers`)."""
    updated = state.after((), here, ts, SETTINGS.offer_cooldown_s)
    if updated is not state:
        COOLDOWNS.write(writes, shoppers, uid, updated)


async def apply_positions(batch: Sequence[Source], writes: TableWrites,
                          emitted: list[dict[str, object]] | None = None) -> None:
    """Match each shopper position against nearby promoted displays; emit offers.

    Offers are queued (:meth:`tables.batch.TableWrites.emit`) and cooldowns written once per
    shopper per batch, both without awaiting, so a cancelled batch leaves neither half-done.
    Each offer emitted is also appended to ``emitted`` when given.
    """
    def apply_one(source: Source) -> str:
        position = parse_position(source.value, decode_key(source.key), source.timestamp)
        uid = position.uid
        # Read straight from the store (TableWrites.get): Faust's Table.get runs its sensors
        # and, for a shopper without a profile (most), raises and catches a KeyError.
        profile = writes.get(profiles, uid) or {}
        state = COOLDOWNS.get(uid, writes.get(shoppers, uid))
        here = PositionSource(source.topic, source.partition, source.offset)
        redelivered = state.redelivers(here)
        held_out = CONTROL_PCT > 0 and in_control_group(uid, CONTROL_PCT)
        if not accurate(position.accuracy_m, MAX_ACCURACY_M):
            # Says nothing about where the shopper is: no offer, no enter or exit.
            if not redelivered:  # counted once: the record's place is kept (below)
                METRICS.inc("storestream_positions_inaccurate_total",
                            store=position.store_id or "-")
                _seen(writes, uid, state, here, position.ts)
            after_position(writes, uid, position.ts, [], here, held_out)
            return OK
        # One spatial lookup per position, for presence and offers alike.
        nearby = DISPLAY_INDEX.near(position.lat, position.lon, SETTINGS.offer_radius_m)
        near = track_presence(writes, uid, nearby, position.ts, here)
        tier, segment = customer_standing(uid, position.ts, writes)
        # Only watched shoppers' visits are kept: one who reaches a watched tier mid-visit is
        # announced with their next position, as arriving then.
        if position.store_id is not None and tier in ASSOCIATE_TIERS:
            announce_arrival(writes, uid, position.store_id, position.ts, tier, here)
        # Replays are told by the record's place in the log, never by its timestamp: a record
        # redelivered (after a crash before the commit) yields the very same offers and ids,
        # which delivery de-duplicates; any other position within a cooldown yields none.
        offers = decide_offers(
            uid, position.lat, position.lon, position.ts,
            opted_out=bool(profile.get("opt_out", False)),
            tier=tier,
            rfm_segment=segment,
            displays=DISPLAY_INDEX,
            promotions=PROMOTION_INDEX,
            last_offered=state.windows,
            radius_m=SETTINGS.offer_radius_m,
            cooldown_s=SETTINGS.offer_cooldown_s,
            source=here,
            redelivered=redelivered,
            stayed=lambda display: near.stayed((display.store_id, display.sku), position.ts),
            nearby=nearby,
        )
        withheld = False
        if not redelivered and (CAPS.active or STORES):  # a redelivered record is not capped
            proposed = len(offers)
            offers = limit_offers(writes, uid, position.ts, position.store_id, offers, here)
            withheld = len(offers) < proposed
        after_position(writes, uid, position.ts, offers, here, held_out)
        if not offers:
            if withheld:  # counted by reason once: the record's place is kept
                _seen(writes, uid, state, here, position.ts)
            return OK
        if not redelivered:  # a redelivered record's offers were counted the first time
            count_offers(writes, offers, held_out)
        updated = state.after(offers, here, position.ts, SETTINGS.offer_cooldown_s)
        if updated is not state:  # a redelivered record's effects are in the state already
            COOLDOWNS.write(writes, shoppers, uid, updated)
        for offer in offers:
            record = offer.to_record()
            if held_out:  # control group: recorded, never sent
                record["held_out"] = True
                writes.emit(held_out_topic, uid.encode(), orjson.dumps(record))
                if not redelivered:
                    METRICS.inc("storestream_offers_held_out_total",
                                store=offer.store_id or "-")
                continue
            writes.emit(offers_topic, uid.encode(), orjson.dumps(record))
            if emitted is not None:
                emitted.append(record)
            if not redelivered:
                METRICS.inc("storestream_offers_total", store=offer.store_id or "-")
        return OK

    await process_batch("locations", batch, apply_one, writes.commit)


@fastlane.lane(locations_topic.get_topic_name(), urgent=True)
async def locations_lane(batch: Sequence[Source]) -> None:
    """The fast lane for ``customers.locations``; its offers are pushed directly when direct
    push is on (:mod:`app.delivery.pusher`)."""
    started = lane_clock()
    emitted: list[dict[str, object]] | None = [] if SETTINGS.direct_push else None
    await apply_positions(batch, lane_writes(batch), emitted)
    if emitted:
        PUSHER.submit(emitted)
    count_lane(batch, started)


@app.agent(displays_topic, name="displays")
async def process_displays(stream: StreamT[bytes]) -> None:
    """Display positions."""
    async for event in stream.events():
        await handle("displays", event.message, apply_display)


@app.agent(promotions_topic, name="promotions")
async def process_promotions(stream: StreamT[bytes]) -> None:
    """Promotions starting, changing and ending."""
    async for event in stream.events():
        await handle("promotions", event.message, apply_promotion)


@app.agent(locations_topic, name="locations")
async def process_locations(stream: StreamT[bytes]) -> None:
    """The distance join: positions -> offers (when the fast lane is off)."""
    await apply_each(stream, apply_positions)
