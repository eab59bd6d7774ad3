"""Key partitioners against vectors and oracles that do not come from core/partitioners.py."""

from __future__ import annotations

import math
import zlib

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from core import partitioners as p

#: Kafka's own UtilsTest.testMurmur2 (signed Java ints).
KAFKA_MURMUR2 = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]

#: The published FNV-1a 32-bit test vectors (isthe.com/chongo/tech/comp/fnv).
FNV1A_32 = [
    (b"", 0x811C9DC5),
    (b"a", 0xE40C292C),
    (b"b", 0xE70C2DE5),
    (b"foo", 0xA9F37ED7),
    (b"foobar", 0xBF9CF968),
]

keys = st.binary(min_size=1, max_size=64)
counts = st.integers(min_value=1, max_value=1000)


@pytest.mark.parametrize(("key", "expected"), KAFKA_MURMUR2)
def test_murmur2_matches_kafkas_own_vectors(key: bytes, expected: int) -> None:
    assert p.murmur2(key) == expected & 0xFFFFFFFF


@pytest.mark.parametrize(("key", "expected"), FNV1A_32)
def test_fnv1a_matches_the_published_vectors(key: bytes, expected: int) -> None:
    assert p.fnv1a32(key) == expected


@given(keys)
def test_murmur2_agrees_with_aiokafka(key: bytes) -> None:
    assert p.murmur2(key) == aiokafka_murmur2(key)


@given(keys, counts)
def test_murmur2_partition_is_aiokafkas_default_partitioner(key: bytes, n: int) -> None:
    assert p.partition_for("murmur2", key, n) == DefaultPartitioner()(key, list(range(n)), [])


@given(keys, counts)
def test_crc32_partition_is_librdkafkas_consistent(key: bytes, n: int) -> None:
    # rd_kafka_msg_partitioner_consistent: rd_crc32(key, keylen) % partition_cnt, unsigned.
    assert p.partition_for("crc32", key, n) == (zlib.crc32(key) & 0xFFFFFFFF) % n


def _sarama(hash32: int, n: int) -> int:
    """Sarama's hashPartitioner: int32(h) % n with Go's truncated remainder, then negated
    when negative."""
    signed = hash32 - 2**32 if hash32 >= 2**31 else hash32
    partition = int(math.fmod(signed, n))
    return -partition if partition < 0 else partition


@given(keys, counts)
def test_fnv1a_partition_is_saramas_hash_partitioner(key: bytes, n: int) -> None:
    assert p.partition_for("fnv1a", key, n) == _sarama(p.fnv1a32(key), n)


def test_the_three_differ_where_the_sign_is_handled_differently() -> None:
    # FNV-1a("a") = 0xe40c292c is negative as an int32: Sarama takes abs(int32) % 3 = 0, where
    # Java's mask would give 2 and unsigned arithmetic 1.
    assert p.partition_for("fnv1a", b"a", 3) == 468965076 % 3 == 0
    assert (0xE40C292C & 0x7FFFFFFF) % 3 == 2 and 0xE40C292C % 3 == 1
    # CRC-32 of "123456789" is the check value 0xcbf43926 (high bit set, not masked).
    assert p.partition_for("crc32", b"123456789", 7) == 0xCBF43926 % 7


@given(st.sampled_from(p.PARTITIONERS), keys, counts)
def test_every_partition_is_in_range(name: str, key: bytes, n: int) -> None:
    assert 0 <= p.partition_for(name, key, n) < n


@given(keys, st.integers(min_value=1, max_value=64))
def test_fitting_names_exactly_the_partitioners_that_place_the_key_there(
        key: bytes, n: int) -> None:
    for partition in range(n):
        names = p.fitting(key, partition, n)
        assert all(p.partition_for(name, key, n) == partition for name in names)
        assert all(p.partition_for(name, key, n) != partition
                   for name in p.PARTITIONERS if name not in names)


def test_unknown_names_and_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="murmur2, crc32, fnv1a"):
        p.partition_for("round_robin", b"k", 4)
    with pytest.raises(ValueError, match=">= 1"):
        p.partition_for("crc32", b"k", 0)

