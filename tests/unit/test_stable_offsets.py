"""Committed offsets are asked stable (OffsetFetch v7 ``require_stable``) where the broker
offers it, as before (v3) where it does not (app/runtime/stable_offsets.py)."""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka.protocol.commit import OffsetFetchRequest_v3

from app.runtime.stable_offsets import (
    OffsetFetchRequest_v7,
    StableOffsetFetchRequest,
    offsets_of,
)

PARTITIONS = [("purchases", [0, 1])]


def test_a_broker_offering_v7_is_asked_for_stable_offsets() -> None:
    request = StableOffsetFetchRequest("group", PARTITIONS).prepare({9: (0, 9)})
    assert isinstance(request, OffsetFetchRequest_v7)
    assert request.to_object()["require_stable"] is True
    assert request.encode()  # flexible encoding of every field


def test_a_broker_without_v7_is_asked_as_before() -> None:
    request = StableOffsetFetchRequest("group", PARTITIONS).prepare({9: (0, 3)})
    assert isinstance(request, OffsetFetchRequest_v3)


def test_offsets_are_read_from_either_version() -> None:
    v3 = SimpleNamespace(topics=[("purchases", [(0, 7, "", 0)])])
    v7 = SimpleNamespace(topics=[("purchases", [(0, 42, -1, None, 88, {})], {})])
    assert offsets_of(v3) == [("purchases", 0, 7, "", 0)]
    assert offsets_of(v7) == [("purchases", 0, 42, "", 88)]
