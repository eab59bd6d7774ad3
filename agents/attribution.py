"""Attribution in the lanes: offers and purchases of one shopper -> ``offers.redemptions``.

The rule is :mod:`core.attribution`; here each lane reads the shopper's state, applies one
record and queues the state and the redemptions (:class:`tables.batch.TableWrites`), without
awaiting. Positions and purchases are both keyed by customer, so one worker holds a
shopper's state and both lanes write it, each in one synchronous step.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import orjson

from app.faust_app import METRICS
from app.settings import SETTINGS
from app.topics import redemptions_topic
from core.attribution import AttributionState, PurchaseMark, Redemption, Where, mark
from core.lift import Figures
from core.loyalty import Purchase
from core.offers import Offer, PositionSource
from core.pricing import price_at
from tables.batch import DecodedCache, TableWrites
from tables.loyalty import price_history
from tables.offers import (
    DISPLAY_INDEX,
    PROMOTION_INDEX,
    attribution,
    figures_key,
    promotion_figures,
)

#: Decoded attribution states of this worker (see tables.batch.DecodedCache).
STATES = DecodedCache(AttributionState.from_json)
#: Decoded promotion figures of this worker's partitions (one key per promotion and partition).
FIGURES = DecodedCache(Figures.from_json)


def window_s() -> float:
    """``REDEMPTION_WINDOW_S`` (0: attribution is off)."""
    return SETTINGS.redemption_window_s


def count_offers(writes: TableWrites, offers: Sequence[Offer], held_out: bool) -> None:
    """Count a position's offers (not a redelivered one's) in their promotions' figures."""
    for offer in offers:
        key = figures_key(offer.pid, writes.partition)
        counted = FIGURES.get(key, writes.get(promotion_figures, key)).offered(held_out)
        FIGURES.write(writes, promotion_figures, key, counted)


def after_position(writes: TableWrites, uid: str, ts: float, offers: Sequence[Offer],
                   here: PositionSource, held_out: bool = False) -> None:
    """Record a position's offers; settle the shopper's purchases the position passed."""
    window = window_s()
    if window <= 0:
        return
    raw = writes.get(attribution, uid)
    if raw is None and not offers:
        return  # a shopper never offered anything, with no purchase waiting: nothing to do
    state = STATES.get(uid, raw)
    marks = [mark(o.offer_id, o.pid, o.sku, o.ts, PROMOTION_INDEX.get(o.pid), held_out)
             for o in offers]
    updated, redeemed = state.with_position(
        uid, ts, marks, Where(here.topic, here.partition, here.offset), window)
    _write(writes, uid, state, updated, redeemed)


def after_purchase(writes: TableWrites, purchase: Purchase, topic: str, partition: int,
                   offset: int) -> None:
    """Attribute a purchase, now or once the shopper's positions have passed it."""
    window = window_s()
    if window <= 0:
        return
    uid = purchase.user_id
    raw = writes.get(attribution, uid)
    sku = purchase.product_id
    segments = DISPLAY_INDEX.segments_of(sku)
    if raw is None and not PROMOTION_INDEX.covers(sku, segments):
        return  # no offer made, none that could be: nothing to wait for
    cents = purchase.price_cents
    if cents is None:
        cents = price_at(price_history(sku), purchase.ts) or 0
    ref = purchase.purchase_id or f"{topic}/{partition}/{offset}"
    state = STATES.get(uid, raw)
    updated, redeemed = state.with_purchase(
        uid, PurchaseMark(ref, sku, purchase.ts, cents, segments),
        Where(topic, partition, offset), window)
    _write(writes, uid, state, updated, redeemed)


def _write(writes: TableWrites, uid: str, state: AttributionState, updated: AttributionState,
           redeemed: Sequence[Redemption]) -> None:
    if updated is not state:
        STATES.write(writes, attribution, uid, updated)
    key = uid.encode()
    for redemption in redeemed:
        writes.emit(redemptions_topic, key, orjson.dumps(redemption.to_record()))
        writes.after_commit(partial(METRICS.inc, "storestream_redemptions_total",
                                    pid=redemption.pid))
        where = figures_key(redemption.pid, writes.partition)
        counted = FIGURES.get(where, writes.get(promotion_figures, where)).redeemed(
            redemption.held_out, redemption.revenue_cents, redemption.first)
        FIGURES.write(writes, promotion_figures, where, counted)
