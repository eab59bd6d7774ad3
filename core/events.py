"""Decoding and validating the raw JSON events of the input topics.

Every function raises :class:`BadEvent` with a human-readable reason; the shell sends such
events to ``dead-letters``. Unknown extra fields are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from core.geo import Display, parse_display
from core.loyalty import Purchase
from core.money import MoneyError, to_cents
from core.offers import Promotion, parse_promotion
from core.returns import Return

#: Values larger than this are rejected before decoding (a poison pill, not an event).
MAX_VALUE_BYTES = 256 * 1024


class BadEvent(ValueError):
    """An event that cannot be decoded or fails validation."""


@dataclass(frozen=True, slots=True)
class ProductPrice:
    """A catalogue price that holds from ``ts`` on."""

    product_id: str
    price_cents: int
    ts: float
    category: str | None = None


@dataclass(frozen=True, slots=True)
class UserProfile:
    """A customer's profile and consent."""

    user_id: str
    name: str | None
    opt_out: bool


def decode_object(raw: bytes | None) -> dict[str, Any]:
    """Parse a raw value into a JSON object, or raise :class:`BadEvent`."""
    if raw is None or len(raw) == 0:
        raise BadEvent("empty value")
    if len(raw) > MAX_VALUE_BYTES:
        raise BadEvent(f"value too large ({len(raw)} bytes > {MAX_VALUE_BYTES})")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise BadEvent(f"expected a JSON object, got {type(value).__name__}")
    return value


def required_str(event: Mapping[str, Any], name: str) -> str:
    """A required, non-empty string field."""
    if name not in event or event[name] is None:
        raise BadEvent(f"missing required field {name!r}")
    value = event[name]
    if not isinstance(value, str):
        raise BadEvent(f"field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise BadEvent(f"field {name!r} must not be empty")
    return value


def optional_str(event: Mapping[str, Any], name: str) -> str | None:
    """An optional string field (``None`` when absent or null)."""
    value = event.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadEvent(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def optional_bool(event: Mapping[str, Any], name: str, default: bool) -> bool:
    """An optional boolean field."""
    value = event.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadEvent(f"field {name!r} must be true or false, got {value!r}")
    return value


#: isinstance() classes as constants: ``int | float`` written in the call builds a union
#: object per call (120 against 23 ns), and these checks run for every event.
_NUMBER = (int, float)
_ID = (str, int)


def number(event: Mapping[str, Any], name: str) -> float:
    """A required finite number."""
    if name not in event or event[name] is None:
        raise BadEvent(f"missing required field {name!r}")
    return _finite(event[name], name)


def _finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, _NUMBER):
        raise BadEvent(f"field {name!r} must be a number, got {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result):
        raise BadEvent(f"field {name!r} must be finite, got {value!r}")
    return result


def event_time(event: Mapping[str, Any], record_ts: float) -> float:
    """The event's ``ts`` (epoch seconds), or the Kafka record timestamp when absent."""
    value = event.get("ts")
    if value is None:
        return record_ts
    ts = _finite(value, "ts")
    if ts < 0:
        raise BadEvent(f"field 'ts' must be epoch seconds >= 0, got {value!r}")
    return ts


def price_cents(event: Mapping[str, Any], name: str = "price") -> int:
    """A required price as exact cents."""
    if name not in event or event[name] is None:
        raise BadEvent(f"missing required field {name!r}")
    try:
        return to_cents(event[name])
    except MoneyError as exc:
        raise BadEvent(str(exc)) from exc


def customer_id(event: Mapping[str, Any]) -> str:
    """The ``user_id`` of a purchase or return: a required string without the unit separator
    (U+001F), which keys a ledger's day records (core/ledger_days.py)."""
    user_id = required_str(event, "user_id")
    if "\x1f" in user_id:
        raise BadEvent("field 'user_id' must not contain the control character U+001F")
    return user_id


def check_key(key: str | None, value: str, field_name: str) -> None:
    """Events must be keyed by their owner's id, or state would land on the wrong partition."""
    if key is not None and key != value:
        raise BadEvent(f"record key {key!r} does not match {field_name} {value!r}")


def parse_product(raw: bytes | None, key: str | None, record_ts: float) -> ProductPrice:
    """A ``products`` event."""
    event = decode_object(raw)
    product_id = required_str(event, "product_id")
    check_key(key, product_id, "product_id")
    return ProductPrice(
        product_id=product_id,
        price_cents=price_cents(event),
        ts=event_time(event, record_ts),
        category=optional_str(event, "category"),
    )


def parse_user(raw: bytes | None, key: str | None) -> UserProfile:
    """A ``users`` event."""
    event = decode_object(raw)
    user_id = required_str(event, "user_id")
    check_key(key, user_id, "user_id")
    return UserProfile(
        user_id=user_id,
        name=optional_str(event, "name"),
        opt_out=optional_bool(event, "opt_out", False),
    )


def parse_purchase(raw: bytes | None, key: str | None, record_ts: float) -> Purchase:
    """A ``purchases`` event."""
    event = decode_object(raw)
    user_id = customer_id(event)
    check_key(key, user_id, "user_id")
    purchase_id = event.get("purchase_id")
    if purchase_id is not None and (
        isinstance(purchase_id, bool) or not isinstance(purchase_id, _ID)
    ):
        raise BadEvent("field 'purchase_id' must be a string or an integer")
    return Purchase(
        user_id=user_id,
        product_id=required_str(event, "product_id"),
        ts=event_time(event, record_ts),
        price_cents=price_cents(event) if event.get("price") is not None else None,
        purchase_id=None if purchase_id is None else str(purchase_id),
    )


def parse_return(raw: bytes | None, key: str | None, record_ts: float) -> Return:
    """A ``returns`` event: the purchase returned and, for a partial return, the amount."""
    event = decode_object(raw)
    user_id = customer_id(event)
    check_key(key, user_id, "user_id")
    purchase_id = event.get("purchase_id")
    if purchase_id is None:
        raise BadEvent("missing required field 'purchase_id'")
    if isinstance(purchase_id, bool) or not isinstance(purchase_id, _ID):
        raise BadEvent("field 'purchase_id' must be a string or an integer")
    amount = price_cents(event, "amount") if event.get("amount") is not None else None
    if amount is not None and amount <= 0:
        raise BadEvent("field 'amount' must be above zero")
    return Return(user_id, str(purchase_id), event_time(event, record_ts), amount)


@dataclass(frozen=True, slots=True)
class Position:
    """A validated shopper position (``customers.locations``)."""

    uid: str
    lat: float
    lon: float
    ts: float
    store_id: str | None = None
    accuracy_m: float | None = None


def _coordinates(event: dict[str, Any]) -> tuple[float, float]:
    """``lat``/``lon`` (or ``latitude``/``longitude``), range-checked like GEO_DISTANCE."""
    for short, long in (("lat", "latitude"), ("lon", "longitude")):
        if event.get(short) is None and event.get(long) is not None:
            event[short] = event[long]
    lat, lon = number(event, "lat"), number(event, "lon")
    if not -90.0 <= lat <= 90.0:
        raise BadEvent(f"latitude {lat!r} is outside [-90, 90]")
    if not -180.0 <= lon <= 180.0:
        raise BadEvent(f"longitude {lon!r} is outside [-180, 180]")
    return lat, lon


def parse_position(raw: bytes | None, key: str | None, record_ts: float) -> Position:
    """A ``customers.locations`` event."""
    event = decode_object(raw)
    uid = required_str(event, "uid")
    check_key(key, uid, "uid")
    lat, lon = _coordinates(event)
    accuracy = event.get("accuracy_m")
    if accuracy is not None and _finite(accuracy, "accuracy_m") < 0:
        raise BadEvent("field 'accuracy_m' must be >= 0")
    store = event.get("store_id")
    if store is not None and (isinstance(store, bool) or not isinstance(store, _ID)):
        raise BadEvent("field 'store_id' must be a string")
    return Position(uid=uid, lat=lat, lon=lon, ts=event_time(event, record_ts),
                    store_id=None if store is None else str(store),
                    accuracy_m=None if accuracy is None else float(accuracy))


def parse_display_event(raw: bytes | None, key: str | None) -> Display:
    """A ``stores.products`` event (``sku`` may be a number; it becomes a string)."""
    event = decode_object(raw)
    _coordinates(event)
    try:
        display = parse_display(event)
    except ValueError as exc:
        raise BadEvent(str(exc)) from exc
    check_key(key, display.sku, "sku")
    return display


def parse_promotion_event(raw: bytes | None, key: str | None, record_ts: float) -> Promotion:
    """A ``products.promotions`` event (``active: false`` ends the promotion)."""
    event = decode_object(raw)
    if event.get("ts") is None:
        event["ts"] = record_ts
    else:
        event_time(event, record_ts)
    try:
        promotion = parse_promotion(event)
    except ValueError as exc:
        raise BadEvent(str(exc)) from exc
    check_key(key, promotion.pid, "pid")
    return promotion
