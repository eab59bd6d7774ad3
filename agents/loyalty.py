"""Agents for ``products``, ``users``, ``purchases`` and ``returns``."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from faust.types import StreamT

from agents.attribution import after_purchase
from agents.common import (
    DUPLICATE,
    OK,
    apply_each,
    count_lane,
    handle,
    lane_clock,
    lane_writes,
    process_batch,
)
from app.deadletters import dead_letter_value, decode_key
from app.faust_app import METRICS, app
from app.routing.repartition import is_repartitioned
from app.runtime import fastlane
from app.runtime.fastlane import Source
from app.settings import SETTINGS
from app.topics import (
    dead_letters_topic,
    loyalty_events_topic,
    products_topic,
    purchases_topic,
    returns_topic,
    users_topic,
)
from core.events import BadEvent, parse_product, parse_purchase, parse_return, parse_user
from core.ledger_days import (
    added_rows,
    assemble,
    changed_rows,
    day_json,
    day_key,
    day_rows,
    head_json,
    listed_text,
    stored_days,
)
from core.loyalty import (
    Basket,
    LoyaltyEvent,
    Outcome,
    Spend,
    Stamps,
    apply_purchase,
    view_spend,
)
from core.pricing import history_from_json, history_to_json, with_price
from core.repartition import repartition_topic
from core.returns import (
    BoughtRow,
    Held,
    Ledger,
    LedgerBatch,
    ReturnOutcome,
    apply_return,
    remember_purchase,
)
from core.rfm import learn_boundaries
from tables.batch import DecodedCache, IdentityMemo, TableWrites
from tables.deadletters import return_letter_sent
from tables.loyalty import (
    RFM_CUTS,
    baskets,
    catalogue,
    catalogue_version,
    ledgers,
    price_history,
    profiles,
    spend,
    stamps,
)

RULES = SETTINGS.loyalty


def offset_field(topic: str) -> str:
    """The record field holding the last offset applied from ``topic``: a repartition
    topic's offsets are unrelated to its input topic's (``REPARTITION``)."""
    return "last_rp" if is_repartitioned(topic) else "last_offset"


def _offsets(record: dict[str, Any]) -> dict[str, Any]:
    return {name: record[name] for name in ("last_offset", "last_rp") if name in record}


async def apply_product(message: Any) -> str:
    """Record a catalogue price in the product's price history."""
    price = parse_product(message.value, decode_key(message.key), message.timestamp)
    record = catalogue.get(price.product_id) or {}
    seen = offset_field(message.topic)
    if record.get(seen, -1) >= message.offset:
        return DUPLICATE
    history = with_price(history_from_json(record.get("history")), price.ts, price.price_cents)
    catalogue[price.product_id] = {
        **_offsets(record),
        "category": price.category or record.get("category"),
        "history": history_to_json(history),
        seen: message.offset,
    }
    return OK


async def apply_user(message: Any) -> str:
    """Keep a customer's profile and consent (opt-out)."""
    user = parse_user(message.value, decode_key(message.key))
    record = profiles.get(user.user_id) or {}
    seen = offset_field(message.topic)
    if record.get(seen, -1) >= message.offset:
        return DUPLICATE
    profiles[user.user_id] = {
        **_offsets(record), "name": user.name, "opt_out": user.opt_out, seen: message.offset,
    }
    return OK


def loyalty_event_value(event: LoyaltyEvent) -> bytes:
    """A ``loyalty.events`` record value."""
    return orjson.dumps({
        "user_id": event.user_id, "type": event.type, "details": dict(event.details),
        "ts": event.ts,
    })


#: Decoded forms of this worker's loyalty records (see tables.batch.DecodedCache).
SPEND = DecodedCache(Spend.from_json)
STAMPS = DecodedCache(Stamps.from_json)
BASKETS = DecodedCache(Basket.from_json)
#: A ledger's head record -> the whole ledger (head and day records: core/ledger_days.py).
LEDGERS = DecodedCache(Ledger.from_json)
#: A decoded spend record -> (the catalogue's version, what its pending purchases came to
#: then): carried from a customer's batch to the next while no price changes.
PRICED: IdentityMemo[tuple[int, int]] = IdentityMemo()


@dataclass(slots=True)
class _Customer:
    """A customer's decoded records while a batch is processed, and which ones changed."""

    spend: Spend
    stamps: Stamps
    basket: Basket
    changed: set[str]
    #: Read only when a purchase carries a ``purchase_id`` or a return arrives.
    ledger: Ledger | None = None
    #: The ledger as stored when the batch began (what its day records hold).
    stored_ledger: Ledger | None = None
    #: Whether a return or a held return changed the ledger (its rows are then compared
    #: whole when written, not only the purchases remembered).
    ledger_reworked: bool = False
    #: Returnable purchases of this batch, remembered as they are applied and joined to the
    #: ledger in one step at the end (while it holds no return: ``core.returns.LedgerBatch``).
    returnable: LedgerBatch | None = None
    #: The rows that remembering ``returnable`` wrote.
    fresh: Mapping[str, BoughtRow] | None = None
    #: What ``spend.pending`` comes to at the catalogue's current version (``None``: not
    #: known, priced again by the next purchase).
    pending_cents: int | None = None


def _customer(customers: dict[str, _Customer], user: str, writes: TableWrites) -> _Customer:
    customer = customers.get(user)
    if customer is None:
        record = SPEND.get(user, writes.get(spend, user))
        customer = customers[user] = _Customer(
            record,
            STAMPS.get(user, writes.get(stamps, user)),
            BASKETS.get(user, writes.get(baskets, user)),
            set(),
        )
        priced = PRICED.peek(user, record)
        if priced is not None and priced[0] == catalogue_version():
            customer.pending_cents = priced[1]
    return customer


def _ledger(customer: _Customer, user: str, writes: TableWrites) -> Ledger:
    if customer.ledger is None:
        head = writes.get(ledgers, user)
        ledger = LEDGERS.peek(user, head)
        if ledger is None:
            ledger = assemble(head, (writes.get(ledgers, day_key(user, day))
                                     for day in stored_days(head)))
            # a head still holding its purchases (written before day records): all to write
            customer.stored_ledger = Ledger() if head and "bought" in head else ledger
        else:
            customer.stored_ledger = ledger
        customer.ledger = ledger
    return customer.ledger


def _write_ledger(user: str, customer: _Customer, writes: TableWrites) -> None:
    """The day records whose purchases changed, then the head (core/ledger_days.py)."""
    ledger = customer.ledger
    assert ledger is not None
    stored = customer.stored_ledger or Ledger()
    fresh = customer.fresh
    if (fresh is not None and not customer.ledger_reworked
            and len(ledger.bought) == len(stored.bought) + len(fresh)):
        changes = added_rows(fresh)  # the usual batch: new purchases only, none dropped
    else:
        touched = None if customer.ledger_reworked or fresh is None else fresh
        changes = changed_rows(stored.bought, ledger.bought, touched)
    head = writes.get(ledgers, user)
    added: list[int] = []
    gone: list[int] = []
    for day, rows_changed in changes.items():
        key = day_key(user, day)
        rows = day_rows(writes.get(ledgers, key), rows_changed)
        if rows:
            writes.put(ledgers, key, day_json(rows, ledger))
            added.append(day)
        else:
            writes.delete(ledgers, key)
            gone.append(day)
    raw = head_json(ledger, listed_text(head, added, gone))
    LEDGERS.remember(user, raw, ledger)
    writes.put(ledgers, user, raw)


def _take(customer: _Customer, out: Outcome | ReturnOutcome) -> bool:
    """Keep the records an outcome changed; whether any did."""
    changed = False
    if out.spend is not None:
        customer.spend = out.spend
        customer.pending_cents = out.pending_cents
        customer.changed.add("spend")
        changed = True
    if out.stamps is not None:
        customer.stamps = out.stamps
        customer.changed.add("stamps")
        changed = True
    if out.basket is not None:
        customer.basket = out.basket
        customer.changed.add("basket")
        changed = True
    if isinstance(out, ReturnOutcome) and out.ledger is not None:
        customer.ledger = out.ledger
        customer.changed.add("ledger")
        customer.ledger_reworked = True
        changed = True
    return changed


def _write(customers: dict[str, _Customer], writes: TableWrites,
           repartitioned: bool = False) -> None:
    for user, customer in customers.items():
        if customer.returnable is not None and customer.ledger is not None:
            customer.ledger, customer.fresh = customer.returnable.finish()
            customer.changed.add("ledger")
        if "spend" in customer.changed:
            SPEND.write(writes, spend, user, customer.spend)
            if customer.pending_cents is not None:
                PRICED.remember(user, customer.spend, (catalogue_version(),
                                                       customer.pending_cents))
        if "stamps" in customer.changed:
            STAMPS.write(writes, stamps, user, customer.stamps)
        if "basket" in customer.changed:
            BASKETS.write(writes, baskets, user, customer.basket)
        if "ledger" in customer.changed and customer.ledger is not None:
            _write_ledger(user, customer, writes)
    writes.commit()


def _dead_letter_held(writes: TableWrites, user: str, held: Held, reason: str) -> None:
    """Dead-letter a held return given up (with its own topic, partition and offset)."""
    topic = returns_topic.get_topic_name()
    if held.offset < 0:  # read from the returns' repartition topic (core.returns.return_mark)
        topic = repartition_topic(topic)
    source = Source(topic, held.partition, -1 - held.offset if held.offset < 0 else held.offset,
                    held.ts, user.encode(), held.raw.encode())
    if return_letter_sent(source.topic, source.partition, source.offset):
        return  # a redelivered purchase gave it up again: its letter is out already
    writes.after_commit(partial(METRICS.inc, "storestream_dead_letters_total",
                                topic=source.topic))
    writes.emit(dead_letters_topic, user.encode(), dead_letter_value(source, reason))


def _repricing(customers: dict[str, _Customer]) -> Callable[[], None]:
    """After a paced batch let the loop run: if the catalogue changed meanwhile, what each
    customer's pending purchases came to is priced again by their next purchase."""
    version = catalogue_version()

    def resumed() -> None:
        nonlocal version
        now = catalogue_version()
        if now != version:
            version = now
            for customer in customers.values():
                customer.pending_cents = None
    return resumed


async def apply_purchases(batch: Sequence[Source], writes: TableWrites) -> None:
    """Price each purchase as of its event time; update spend, stamps and basket.

    ``batch`` holds records of one partition in offset order; they are applied customer by
    customer, each customer's in offset order (``process_batch(keyed=True)``). Each
    customer's records are decoded once per batch and written once per batch
    (:class:`tables.batch.TableWrites`).
    """
    customers: dict[str, _Customer] = {}
    repartitioned = is_repartitioned(batch[0].topic) if batch else False

    def apply_one(source: Source) -> str:
        purchase = parse_purchase(source.value, decode_key(source.key), source.timestamp)
        user = purchase.user_id
        customer = _customer(customers, user, writes)
        outcome: Any = apply_purchase(purchase, source.offset, customer.spend,
                                      customer.stamps, customer.basket, price_history, RULES,
                                      repartitioned=repartitioned,
                                      pending_cents=customer.pending_cents)
        remembered = False
        if purchase.purchase_id is not None and RULES.return_window_s > 0:
            ledger = customer.ledger or _ledger(customer, user, writes)
            if not ledger.held and not ledger.given_up:
                # the usual case: remembered at the end of the batch (no return waits for a
                # purchase, none given up that a redelivered purchase would report again)
                if customer.returnable is None:
                    customer.returnable = LedgerBatch(ledger, RULES,
                                                      repartitioned=repartitioned)
                remembered = customer.returnable.add(source.offset, purchase, outcome.free)
            else:  # returns held for a purchase: applied with it, one purchase at a time
                outcome = remember_purchase(purchase, source.offset, outcome,
                                            customer.spend, ledger, price_history, RULES,
                                            repartitioned=repartitioned)
                for held, reason in outcome.expired:
                    _dead_letter_held(writes, user, held, reason)
        after_purchase(writes, purchase, source.topic, source.partition, source.offset)
        if not _take(customer, outcome) and not remembered:
            return DUPLICATE
        for change in outcome.events:
            writes.emit(loyalty_events_topic, user.encode(), loyalty_event_value(change))
        return OK

    await process_batch("purchases", batch, apply_one,
                        lambda: _write(customers, writes, repartitioned),
                        _repricing(customers), keyed=True)


async def apply_returns(batch: Sequence[Source], writes: TableWrites) -> None:
    """Take each returned purchase back (spend at the price counted, stamp, campaign part);
    a return that cannot apply is dead-lettered with the reason (``core/returns.py``)."""
    customers: dict[str, _Customer] = {}
    repartitioned = is_repartitioned(batch[0].topic) if batch else False

    def apply_one(source: Source) -> str:
        ret = parse_return(source.value, decode_key(source.key), source.timestamp)
        if RULES.return_window_s <= 0:
            raise BadEvent("returns are off (RETURN_WINDOW_DAYS=0)")
        user = ret.user_id
        customer = _customer(customers, user, writes)
        raw = b"" if source.value is None else source.value
        outcome = apply_return(ret, source.offset, customer.spend, customer.stamps,
                               customer.basket, _ledger(customer, user, writes),
                               price_history, RULES, partition=source.partition,
                               raw=raw.decode("utf-8", errors="replace"),
                               repartitioned=repartitioned)
        changed = _take(customer, outcome)
        for change in outcome.events:
            writes.emit(loyalty_events_topic, user.encode(), loyalty_event_value(change))
        if outcome.rejected is not None:
            raise BadEvent(outcome.rejected)
        return OK if changed else DUPLICATE

    await process_batch("returns", batch, apply_one, lambda: _write(customers, writes),
                        _repricing(customers), keyed=True)


@fastlane.lane(purchases_topic.get_topic_name(), paced=True)
async def purchases_lane(batch: Sequence[Source]) -> None:
    """The fast lane for ``purchases``: one changelog write per customer and table per batch."""
    started = lane_clock()
    await apply_purchases(batch, lane_writes(batch))
    count_lane(batch, started)


@fastlane.lane(returns_topic.get_topic_name(), paced=True)
async def returns_lane(batch: Sequence[Source]) -> None:
    """The fast lane for ``returns``."""
    started = lane_clock()
    await apply_returns(batch, lane_writes(batch))
    count_lane(batch, started)


@app.agent(products_topic, name="products")
async def process_products(stream: StreamT[bytes]) -> None:
    """The catalogue: each product's price history."""
    async for event in stream.events():
        await handle("products", event.message, apply_product)


@app.agent(users_topic, name="users")
async def process_users(stream: StreamT[bytes]) -> None:
    """Customer profiles and consent."""
    async for event in stream.events():
        await handle("users", event.message, apply_user)


@app.agent(purchases_topic, name="purchases")
async def process_purchases(stream: StreamT[bytes]) -> None:
    """Spend and tier, coffee stamps, basket campaigns (when the fast lane is off)."""
    await apply_each(stream, apply_purchases)


@app.agent(returns_topic, name="returns")
async def process_returns(stream: StreamT[bytes]) -> None:
    """Returns (when the fast lane is off)."""
    await apply_each(stream, apply_returns)


def learn_rfm(now: float) -> None:
    """Quintile RFM boundaries from the customers this worker holds (``RFM=learn``)."""
    if RULES.rfm is None:
        return
    population = []
    for user, raw in list(spend.data.items()):
        record = SPEND.get(user, raw)
        total = view_spend(record, price_history, RULES).total_cents
        population.append((record.newest_ts, record.purchases, total))
    RFM_CUTS.current = learn_boundaries(population, now, RULES.rfm)
    RFM_CUTS.learnt_at = now


if RULES.rfm is not None and RULES.rfm_learn:
    @app.timer(interval=RULES.rfm_refresh_s, name="learn_rfm")  # type: ignore[untyped-decorator]
    async def refresh_rfm() -> None:
        """Refresh the learnt RFM boundaries (every ``RFM_REFRESH_S``)."""
        learn_rfm(time.time())
