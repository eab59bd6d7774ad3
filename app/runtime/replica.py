"""A read-only copy of every partition of a changelog topic, kept on every worker.

Faust's ``GlobalTable`` did not replicate between two workers on the embedded broker (each
worker only ever saw the catalogue entries it wrote itself: measured with two workers, the
same failure as robinhood/faust#716). Reference data that every worker needs (the catalogue
now, displays and promotions later) is therefore written through an ordinary changelog-backed
``Table`` and followed here: a plain aiokafka consumer, no consumer group, all partitions from
the beginning, applied in offset order per partition.

Private internals mirrored (listed in app/runtime/internals.py; checked against aiokafka
0.14.0, re-check on upgrade): ``aiokafka.consumer.consumer.AIOKafkaConsumer._client`` (its
``force_metadata_update`` while the topic is not in the metadata yet).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from app.settings import SETTINGS

V = TypeVar("V")
log = logging.getLogger(__name__)

#: Every replica created in this process, in creation order (see :func:`wait_all_ready`).
REPLICAS: list[TopicReplica[Any]] = []


class TopicReplica(Generic[V]):
    """Follows a compacted topic into a dict (``None`` values are deletes)."""

    def __init__(
        self,
        topic: str,
        decode: Callable[[bytes], V],
        on_change: Callable[[str, V | None, V | None], None] | None = None,
    ) -> None:
        self.topic = topic
        self._decode = decode
        self._on_change = on_change
        self.data: dict[str, V] = {}
        self._ready = asyncio.Event()
        self.applied = 0
        REPLICAS.append(self)

    @property
    def ready(self) -> bool:
        """True once everything that existed at start-up has been read."""
        return self._ready.is_set()

    @ready.setter
    def ready(self, value: bool) -> None:
        if value:
            self._ready.set()
        else:
            self._ready.clear()

    async def wait_ready(self) -> None:
        """Return once :attr:`ready` is true."""
        await self._ready.wait()

    def get(self, key: str) -> V | None:
        """The latest value for ``key`` (``None`` when absent)."""
        return self.data.get(key)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one changelog record."""
        name = "" if key is None else key.decode("utf-8", errors="replace")
        old = self.data.get(name)
        new: V | None = None
        if value is None:
            self.data.pop(name, None)
        else:
            try:
                new = self.data[name] = self._decode(value)
            except Exception:  # a record we cannot read must not stop the replica
                log.exception("replica %s: cannot decode value for %r", self.topic, name)
                return
        self.applied += 1
        if self._on_change is not None:
            self._on_change(name, old, new)

    async def follow(self, bootstrap: str, auth: dict[str, Any], fetch_wait_ms: int) -> None:
        """:meth:`run` forever, starting over (from the beginning) after an error."""
        delay = 0.5
        while True:
            try:
                await self.run(bootstrap, auth, fetch_wait_ms)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replica %s: consumer failed, restarting in %.1f s",
                              self.topic, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def run(self, bootstrap: str, auth: dict[str, Any], fetch_wait_ms: int) -> None:
        """Consume forever (cancel to stop)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
            auto_offset_reset="earliest", fetch_max_wait_ms=fetch_wait_ms,
            isolation_level=isolation_level(), **auth,
        )
        await consumer.start()
        try:
            partitions = await self._partitions(consumer)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            targets = await consumer.end_offsets(partitions)
            while True:
                batch = await consumer.getmany(timeout_ms=fetch_wait_ms)
                for records in batch.values():
                    for record in records:
                        self.apply(record.key, record.value)
                if not self.ready and not batch and await _reached(consumer, targets):
                    # An empty fetch at or past the reported end: the broker's end offset
                    # may be too low (DESIGN section 7), the empty fetch is not.
                    self.ready = True
                    log.info("replica %s ready: %d keys", self.topic, len(self.data))
        finally:
            await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        while True:
            found = consumer.partitions_for_topic(self.topic)
            if found:
                return [TopicPartition(self.topic, p) for p in sorted(found)]
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.2)


def isolation_level() -> str:
    """``read_committed`` under exactly_once: a record of a transaction that is aborted (a
    worker killed before its commit) is never applied; e.g. an aborted dead letter would
    otherwise mark its source record as dead-lettered and the rerun would not send it."""
    exactly_once = SETTINGS.processing_guarantee == "exactly_once"
    return "read_committed" if exactly_once else "read_uncommitted"


def not_ready() -> list[str]:
    """Topics of the replicas in this process that are still loading."""
    return [replica.topic for replica in REPLICAS if not replica.ready]


async def wait_all_ready() -> None:
    """Return once every replica created in this process is ready."""
    for replica in list(REPLICAS):
        await replica.wait_ready()


async def _reached(consumer: AIOKafkaConsumer, targets: dict[TopicPartition, int]) -> bool:
    for tp, end in targets.items():
        if await consumer.position(tp) < end:
            return False
    return True


#: Reference data (catalogue, displays, promotions) changes rarely: its followers poll less
#: often than the agents do (a 10 ms wait on three idle topics cost ~8% of a worker's CPU).
REPLICA_FETCH_WAIT_MS = 250


def replica_connection(app: Any) -> tuple[str, dict[str, Any], int]:
    """Bootstrap servers, aiokafka auth settings and fetch wait for plain aiokafka clients of
    ``app``'s brokers (replicas, the live page's feed, topic administration)."""
    servers = ",".join(f"{url.host}:{url.port or 9092}" for url in app.conf.broker)
    auth = dict(credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context))
    return servers, auth, REPLICA_FETCH_WAIT_MS
