"""Committed offsets fetched *stable* under exactly_once (KIP-447's ``require_stable``).

aiokafka asks for committed offsets with OffsetFetch v3, and the group coordinator answers a
partition whose offset commit is pending in a transaction (sent with the transaction, its
commit marker not yet applied to the group) with the offset committed before it: measured on
Apache Kafka 4.4, 7 while 42 was pending (``tests/integration/test_exactly_once.py``). A worker
taking a partition over right after its previous owner committed its last transaction can
lose that race and read again records whose output is committed. OffsetFetch v7 with
``require_stable`` answers ``UNSTABLE_OFFSET_COMMIT`` instead until the pending commit is
applied (then 42); the Java consumer asks so under ``read_committed``.

:func:`ask_stable` marks a consumer's client; :func:`install` makes aiokafka's group
coordinator fetch a marked client's committed offsets with OffsetFetch v7 ``require_stable``
(v3 as before when the broker does not offer v7), retrying while they are unstable.

Private internals mirrored (listed in app/runtime/internals.py; checked against aiokafka
0.14.0, re-check on upgrade): ``aiokafka.consumer.group_coordinator``:
``GroupCoordinator._do_fetch_commit_offsets`` (replaced, the same handling of errors),
``GroupCoordinator._client``, ``GroupCoordinator._send_req``,
``GroupCoordinator.coordinator_dead``; ``AIOKafkaConsumer._client``. No Faust import.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, TypeAlias

from aiokafka import errors as Errors
from aiokafka.consumer import group_coordinator
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.commit import (
    OffsetFetchRequest_v1,
    OffsetFetchRequest_v2,
    OffsetFetchRequest_v3,
)
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)
from aiokafka.structs import OffsetAndMetadata, TopicPartition

log = logging.getLogger(__name__)

#: The attribute that marks a client whose committed offsets are fetched stable.
STABLE_MARK = "_storestream_stable_offsets"
#: Kafka's UNSTABLE_OFFSET_COMMIT error code (not in aiokafka 0.14's errors).
UNSTABLE_OFFSET_COMMIT = 88
#: aiokafka's "no committed offset".
UNKNOWN_OFFSET = -1


class UnstableOffsetCommit(Errors.KafkaError):  # type: ignore[misc]
    """A transactional offset commit of the partition is pending: ask again."""

    errno = UNSTABLE_OFFSET_COMMIT
    retriable = True


class OffsetFetchResponse_v7(Response):  # type: ignore[misc]
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("topics", CompactArray(
            ("topic", CompactString("utf-8")),
            ("partitions", CompactArray(
                ("partition", Int32),
                ("offset", Int64),
                ("leader_epoch", Int32),
                ("metadata", CompactString("utf-8")),
                ("error_code", Int16),
                ("tags", TaggedFields),
            )),
            ("tags", TaggedFields),
        )),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class OffsetFetchRequest_v7(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = OffsetFetchResponse_v7
    SCHEMA = Schema(
        ("consumer_group", CompactString("utf-8")),
        ("topics", CompactArray(
            ("topic", CompactString("utf-8")),
            ("partitions", CompactArray(Int32)),
            ("tags", TaggedFields),
        )),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


StableFetchStruct: TypeAlias = (
    OffsetFetchRequest_v1 | OffsetFetchRequest_v2 | OffsetFetchRequest_v3 | OffsetFetchRequest_v7
)


class StableOffsetFetchRequest(Request[StableFetchStruct]):  # type: ignore[misc]
    """OffsetFetch for the given partitions: v7 ``require_stable`` where offered."""

    API_KEY = 9

    def __init__(self, group: str, partitions: list[tuple[str, list[int]]]) -> None:
        self._group = group
        self._partitions = partitions

    def build(self, request_struct_class: type[StableFetchStruct]) -> StableFetchStruct:
        if request_struct_class is OffsetFetchRequest_v7:
            return OffsetFetchRequest_v7(
                self._group, [(topic, parts, {}) for topic, parts in self._partitions], True,
                {})
        return request_struct_class(self._group, self._partitions)


def ask_stable(consumer: Any) -> None:
    """Fetch ``consumer``'s committed offsets stable (before it starts)."""
    setattr(consumer._client, STABLE_MARK, True)


def offsets_of(response: Any) -> list[tuple[str, int, int, str, int]]:
    """``(topic, partition, offset, metadata, error_code)`` of any OffsetFetch version."""
    out = []
    for topic, partitions, *_ in response.topics:
        for row in partitions:
            if len(row) >= 6:  # v7: partition, offset, leader epoch, metadata, error, tags
                partition, offset, _, metadata, error_code = row[:5]
            else:
                partition, offset, metadata, error_code = row
            out.append((topic, partition, offset, metadata or "", error_code))
    return out


_ORIGINAL = group_coordinator.GroupCoordinator._do_fetch_commit_offsets


async def _fetch_commit_offsets(self: Any, partitions: Any) -> dict[TopicPartition,
                                                                     OffsetAndMetadata]:
    """aiokafka's ``_do_fetch_commit_offsets``, stable for a marked client."""
    if not getattr(self._client, STABLE_MARK, False):
        return await _ORIGINAL(self, partitions)  # type: ignore[no-any-return]
    by_topic: dict[str, list[int]] = collections.defaultdict(list)
    for tp in partitions:
        by_topic[tp.topic].append(tp.partition)
    response = await self._send_req(StableOffsetFetchRequest(self.group_id,
                                                             list(by_topic.items())))
    offsets: dict[TopicPartition, OffsetAndMetadata] = {}
    for topic, partition, offset, metadata, error_code in offsets_of(response):
        tp = TopicPartition(topic, partition)
        if error_code == UNSTABLE_OFFSET_COMMIT:
            log.debug("committed offset of %s not stable yet: asking again", tp)
            raise UnstableOffsetCommit()  # retried by fetch_committed_offsets
        error_type = Errors.for_code(error_code)
        if error_type is not Errors.NoError:
            if error_type is Errors.GroupLoadInProgressError:
                raise error_type()
            if error_type is Errors.NotCoordinatorForGroupError:
                self.coordinator_dead()
                raise error_type()
            if error_type is Errors.UnknownTopicOrPartitionError:
                log.warning("OffsetFetchRequest -- unknown topic %s", topic)
                continue
            if error_type is Errors.GroupAuthorizationFailedError:
                raise error_type(self.group_id)
            raise Errors.KafkaError(repr(error_type()))
        if offset != UNKNOWN_OFFSET:
            offsets[tp] = OffsetAndMetadata(offset, metadata)
    return offsets


def install() -> None:
    """Replace aiokafka's committed offsets fetch (once; unmarked clients keep its own)."""
    coordinator = group_coordinator.GroupCoordinator
    if coordinator._do_fetch_commit_offsets is not _fetch_commit_offsets:
        coordinator._do_fetch_commit_offsets = _fetch_commit_offsets
