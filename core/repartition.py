"""Re-keying input records that are not where their owner's state is (``REPARTITION``).

A keyless record lands wherever its producer put it, and a misplaced one (a key hashed by
another partitioner) on a partition that does not hold its owner's state. Per input topic,
``REPARTITION`` says which of them are re-keyed by their owner field and forwarded through
the internal topic ``<topic>.repartition`` (the role of ksqlDB's PARTITION BY and Faust's
``group_by``): ``off`` (none: processed where they landed), ``keyless`` (the default) or
``all`` (keyless and misplaced ones).

Forwarded records carry their origin (source partition and offset) in the header
:data:`ORIGIN_HEADER`. The repartition topic's consumer keeps, per (its partition, origin
partition), the highest origin offset it applied and the repartition offset it came at
(:class:`Mark`): a record forwarded again after a crash (same origin, a new, higher
repartition offset) is skipped, a record of the repartition topic delivered again (same
repartition offset) goes on to the per-record offsets of the state, as any redelivery does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from core.geo import normalise_id

#: What may be forwarded, per input topic.
MODES = ("off", "keyless", "all")
DEFAULT_MODE = "keyless"

#: Suffix of an input topic's repartition topic.
SUFFIX = ".repartition"

#: Header of a forwarded record: ``b"<origin partition>:<origin offset>"``.
ORIGIN_HEADER = "storestream-origin"

#: Input topic (base name, without prefix) -> its owner field.
OWNER_FIELDS: Mapping[str, str] = {
    "products": "product_id",
    "users": "user_id",
    "purchases": "user_id",
    "returns": "user_id",
    "stores.products": "sku",
    "products.promotions": "pid",
    "customers.locations": "uid",
}

#: Input topic base name -> suffix of its ``REPARTITION_<NAME>`` override.
ENV_NAMES: Mapping[str, str] = {
    "products": "PRODUCTS",
    "users": "USERS",
    "purchases": "PURCHASES",
    "returns": "RETURNS",
    "stores.products": "DISPLAYS",
    "products.promotions": "PROMOTIONS",
    "customers.locations": "LOCATIONS",
}

PROCESS = "process"
FORWARD = "forward"


class NoOwner(ValueError):
    """A record to forward whose owner cannot be told (it goes to dead-letters)."""


def parse_mode(value: str, name: str = "REPARTITION") -> str:
    """A mode named in :data:`MODES` (case and spaces ignored), else ``ValueError``."""
    mode = value.strip().lower()
    if mode not in MODES:
        raise ValueError(f"{name} must be one of {', '.join(MODES)}, got {value!r}")
    return mode


def repartition_topic(topic: str) -> str:
    """The internal topic that records of ``topic`` are forwarded through."""
    return f"{topic}{SUFFIX}"


def decide(mode: str, key: bytes | None, placed: bool) -> str:
    """:data:`FORWARD` or :data:`PROCESS` for an input record (``placed``: its key maps to
    its partition under ``KEY_PARTITIONER``; keyless records count as placed)."""
    if mode == "off":
        return PROCESS
    if not key:
        return FORWARD
    if mode == "all" and not placed:
        return FORWARD
    return PROCESS


def owner(value: bytes | None, field: str, key: bytes | None = None) -> str:
    """The owner of a record: its ``field`` (numbers such as the demo's BIGINT SKUs become
    text), or for a keyed record without the field its key; :class:`NoOwner` otherwise."""
    try:
        event: Any = orjson.loads(value) if value else None
    except orjson.JSONDecodeError as exc:
        raise NoOwner(f"not valid JSON, so no owner field {field!r}: {exc}") from exc
    if not isinstance(event, dict):
        raise NoOwner(f"expected a JSON object with owner field {field!r}")
    raw = event.get(field)
    if raw is None:
        if key:
            return key.decode("utf-8")
        raise NoOwner(f"keyless record without owner field {field!r}: cannot repartition")
    try:
        return normalise_id(raw, field)
    except ValueError as exc:
        raise NoOwner(f"keyless record with an unusable owner field: {exc}") from exc


def origin_header(partition: int, offset: int) -> tuple[str, bytes]:
    """The header naming a forwarded record's origin."""
    return ORIGIN_HEADER, f"{partition}:{offset}".encode()


def read_origin(headers: Any) -> tuple[int, int] | None:
    """(origin partition, origin offset) from a record's headers (``None``: none)."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if name == ORIGIN_HEADER and value:
            text = value.decode() if isinstance(value, bytes | bytearray) else str(value)
            partition, _, offset = text.partition(":")
            return int(partition), int(offset)
    return None


class Mark(NamedTuple):
    """The highest origin offset applied from one origin partition, and the repartition
    offset at which it came."""

    origin_offset: int
    offset: int

    def to_json(self) -> list[int]:
        return [self.origin_offset, self.offset]

    @classmethod
    def from_json(cls, raw: Any) -> Mark | None:
        return None if raw is None else cls(int(raw[0]), int(raw[1]))


def is_forwarded_again(mark: Mark | None, origin_offset: int, offset: int) -> bool:
    """Whether a repartition record is a second forward of an origin already applied.

    The forwarder of one origin partition writes in origin order, and a record forwarded
    again always comes at a higher repartition offset than the first forward; a record at
    or below the mark's own offset is a redelivery, left to the state's per-record offsets.
    """
    return mark is not None and origin_offset <= mark.origin_offset and offset > mark.offset


def next_mark(mark: Mark | None, origin_offset: int, offset: int) -> Mark:
    """The mark after applying (or finding already applied) a repartition record."""
    if mark is None:
        return Mark(origin_offset, offset)
    return Mark(max(mark.origin_offset, origin_offset), max(mark.offset, offset))
