"""KeyPartitioner (aiokafka's partitioner interface) and misplaced-record detection."""

from __future__ import annotations

import logging
import zlib

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from app.routing.partitioning import KeyPartitioner, Placement
from core.partitioners import partition_for


@given(st.binary(min_size=1, max_size=40), st.integers(min_value=1, max_value=64))
def test_murmur2_key_partitioner_is_aiokafkas_default(key: bytes, n: int) -> None:
    partitions = list(range(n))
    assert KeyPartitioner("murmur2")(key, partitions, partitions) == \
        DefaultPartitioner()(key, partitions, partitions)


def test_crc32_key_partitioner_and_keyless_records() -> None:
    crc = KeyPartitioner("crc32")
    assert crc(b"c042", [0, 1, 2, 3], [0, 1, 2, 3]) == zlib.crc32(b"c042") % 4
    assert crc(b"c042", [3, 1, 0, 2], []) == zlib.crc32(b"c042") % 4  # any order given
    assert {crc(None, [0, 1, 2, 3], [2]) for _ in range(20)} == {2}


def _records(name: str, keys: list[str], n: int) -> list[tuple[bytes, int]]:
    return [(key.encode(), partition_for(name, key.encode(), n)) for key in keys]


def test_records_placed_by_another_partitioner_are_counted_and_named(
        caplog: pytest.LogCaptureFixture) -> None:
    counted: list[str] = []
    placement = Placement("murmur2", lambda topic: 4, counted.append)
    records = _records("crc32", [f"c{i:03d}" for i in range(200)], 4)
    with caplog.at_level(logging.WARNING):
        results = [placement.check("purchases", p, offset, key)
                   for offset, (key, p) in enumerate(records)]
    misplaced = sum(not ok for ok in results)
    expected = sum(partition_for("murmur2", key, 4) != p for key, p in records)
    assert misplaced == expected == len(counted) > 100
    assert placement.report() == {"purchases": {"count": expected, "fits": "crc32"}}
    lines = [r.getMessage() for r in caplog.records]
    assert 1 <= len(lines) <= 2, lines  # once per topic (and once more when it settled)
    assert "KEY_PARTITIONER=murmur2" in lines[0] and "purchases[" in lines[0]
    assert "KEY_PARTITIONER=crc32" in lines[-1]


def test_well_placed_and_keyless_records_are_not_misplaced() -> None:
    placement = Placement("fnv1a", lambda topic: 6)
    for offset, (key, p) in enumerate(_records("fnv1a", [f"u{i}" for i in range(100)], 6)):
        assert placement.check("users", p, offset, key)
    assert placement.check("users", 5, 100, None) and placement.check("users", 5, 101, b"")
    assert placement.report() == {}


def test_unknown_partition_count_checks_nothing_and_no_partitioner_fits() -> None:
    assert Placement("crc32", lambda topic: None).check("purchases", 3, 0, b"k")
    placement = Placement("murmur2", lambda topic: 2)
    # With two partitions every partitioner puts a key on one of the two: a key that all
    # three put on the same partition, found on the other, fits none of them.
    same = next(k for k in (f"k{i}".encode() for i in range(1000))
                if len({partition_for(n, k, 2) for n in ("murmur2", "crc32", "fnv1a")}) == 1)
    assert not placement.check("t", 1 - partition_for("murmur2", same, 2), 0, same)
    assert placement.report() == {"t": {"count": 1, "fits": None}}


def test_key_partitioner_setting() -> None:
    from core.config import ConfigError, load_settings

    assert load_settings({}).key_partitioner == "murmur2"
    assert load_settings({"KEY_PARTITIONER": " CRC32 "}).key_partitioner == "crc32"
    assert load_settings({"KEY_PARTITIONER": "fnv1a"}).key_partitioner == "fnv1a"
    with pytest.raises(ConfigError, match="KEY_PARTITIONER must be one of murmur2, crc32"):
        load_settings({"KEY_PARTITIONER": "consistent_random"})
