"""``KEY_PARTITIONER`` in the worker: where keyed records go, and input records placed otherwise.

:class:`KeyPartitioner` is the aiokafka partitioner Faust is configured with
(``producer_partitioner``). Faust uses that one setting for everything keyed: its producer
(loyalty events, offers, dead letters, the fast lane's keyed records in :mod:`app.runtime.bulk`),
``key_partition`` under exactly_once, and the router that sends ``/customers/{id}/`` to the
worker owning the key (``assignor.key_store`` -> ``producer.key_partition``). With it set to
the partitioner of the input topics' producers, the partition Faust computes for a customer
is the partition the customer's events are on, and so the worker that holds the state.

:class:`Placement` checks input records: a keyed record on another partition than the one
``KEY_PARTITIONER`` gives its key is *misplaced* (its producer hashes keys otherwise, or chose
partitions itself); it is counted per topic, logged once per topic with the partitioners that
would have put it there, and reported on ``/health``. The record is still processed where it
is (as before): the count says that state may be split or tier lookups wrong.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.partitioners import PARTITIONERS, fitting, partition_function

log = logging.getLogger(__name__)

#: Keys whose partition is remembered per topic (customers repeat: hashing once is enough).
CACHE_LIMIT = 100_000


class KeyPartitioner:
    """An aiokafka partitioner (``(key, all_partitions, available) -> partition``) hashing keys
    as the named client does; keyless records go to a random (available) partition."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._partition = partition_function(name)

    def __call__(self, key: bytes | None, all_partitions: Sequence[int],
                 available: Sequence[int]) -> int:
        if key is None:
            return random.choice(list(available) or list(all_partitions))
        index = self._partition(key, len(all_partitions))
        return int(sorted(all_partitions)[index])

    def __repr__(self) -> str:
        return f"KeyPartitioner({self.name!r})"


@dataclass
class TopicPlacement:
    """What was seen of one topic's misplaced records."""

    count: int = 0
    #: Partitioners that fit every misplaced record so far (``None``: none seen yet).
    fits: tuple[str, ...] | None = None
    logged: int = 0

    def describe(self) -> dict[str, Any]:
        """``{"count": N, "fits": "crc32"}`` (``fits`` joined by " or ", ``None`` when none)."""
        names = self.fits or ()
        return {"count": self.count, "fits": " or ".join(names) if names else None}


@dataclass
class Placement:
    """Counts input records whose key does not map to their partition under ``name``."""

    name: str
    #: Topic -> partition count, or ``None`` when it is not known (yet).
    partition_count: Callable[[str], int | None]
    #: Called with the topic for every misplaced record (the metric).
    on_misplaced: Callable[[str], None] = lambda topic: None
    topics: dict[str, TopicPlacement] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._partition = partition_function(self.name)
        self._cache: dict[str, tuple[int, dict[bytes, int]]] = {}
        self._lock = threading.Lock()

    def check(self, topic: str, partition: int, offset: int, key: bytes | None) -> bool:
        """Whether the record is where ``name`` puts its key (keyless records are)."""
        if not key:
            return True
        entry = self._cache.get(topic)
        if entry is None:
            count = self.partition_count(topic)
            if not count:
                return True
            entry = self._cache[topic] = (count, {})
        count, known = entry
        expected = known.get(key)
        if expected is None:
            if len(known) >= CACHE_LIMIT:
                known.clear()
            expected = known[key] = self._partition(key, count)
        if expected == partition:
            return True
        self._misplaced(topic, partition, offset, key, expected, count)
        return False

    def _misplaced(self, topic: str, partition: int, offset: int, key: bytes,
                   expected: int, count: int) -> None:
        fit = fitting(key, partition, count)
        with self._lock:
            seen = self.topics.setdefault(topic, TopicPlacement())
            seen.count += 1
            before = seen.fits
            seen.fits = fit if before is None else tuple(n for n in before if n in fit)
            first, settled = seen.logged == 0, (
                seen.logged == 1 and before is not None and len(before) > 1
                and len(seen.fits) <= 1)
            if first or settled:
                seen.logged += 1
        self.on_misplaced(topic)
        if first:
            shown = key[:64].decode("utf-8", errors="replace")
            log.warning(
                "storestream: %s[%d]@%d has key %r, which KEY_PARTITIONER=%s puts on "
                "partition %d of %d: the topic's producer partitions keys otherwise (%s). "
                "Misplaced records are processed where they are (a customer's state may be "
                "split, tier lookups wrong) and counted in storestream_misplaced_records_total "
                "and /health; logged once per topic.",
                topic, partition, offset, shown, self.name, expected, count,
                _fits_text(fit, count))
        elif settled:
            log.warning("storestream: misplaced records of %s: after %d records, %s",
                        topic, seen.count, _fits_text(seen.fits or (), count))

    def report(self) -> dict[str, dict[str, Any]]:
        """Topic -> ``{"count", "fits"}`` for every topic with misplaced records."""
        with self._lock:
            return {topic: seen.describe() for topic, seen in sorted(self.topics.items())}


def _fits_text(names: Sequence[str], count: int) -> str:
    if not names:
        return (f"none of {', '.join(PARTITIONERS)} puts it there with {count} partitions: "
                "a custom partitioner, explicit partitions, or a keyless producer")
    if len(names) == 1:
        return f"KEY_PARTITIONER={names[0]} fits it"
    return f"{' or '.join(f'KEY_PARTITIONER={n}' for n in names)} would fit it"
