"""Key partitioners of the Kafka clients our producers use, as pure functions.

A keyed record's partition is a hash of its key bytes modulo the topic's partition count, but
clients disagree on the hash (DESIGN section 2):

* ``murmur2``: the Java clients and aiokafka (``Utils.toPositive(Utils.murmur2(key)) % n``);
* ``crc32``: librdkafka's ``consistent_random`` (the default of confluent-kafka, kcat, and the
  Go, Node and .NET clients built on it) and ``consistent``: ``rd_crc32(key) % n`` on the
  unsigned CRC-32 (IEEE, as :func:`zlib.crc32`), no sign masking;
* ``fnv1a``: Sarama's default ``NewHashPartitioner``: 32-bit FNV-1a of the key read as an
  ``int32``, Go's truncated ``%``, a negative result negated, i.e. ``abs(int32(h)) % n``.

Keyless records are not placed by a hash (clients pick a partition at random or stickily):
:func:`partition_for` answers only for keys. No faust import here.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

#: Names accepted by ``KEY_PARTITIONER``, the default first.
PARTITIONERS: tuple[str, ...] = ("murmur2", "crc32", "fnv1a")
DEFAULT = "murmur2"

_MASK32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` (seed 0x9747b28c) as an unsigned 32-bit value."""
    length = len(data)
    m = 0x5BD1E995
    h = (0x9747B28C ^ length) & _MASK32
    end = length - length % 4
    for i in range(0, end, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & _MASK32
        k ^= k >> 24
        k = (k * m) & _MASK32
        h = ((h * m) & _MASK32) ^ k
    rest = length - end
    if rest >= 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * m) & _MASK32
    h ^= h >> 13
    h = (h * m) & _MASK32
    h ^= h >> 15
    return h


def fnv1a32(data: bytes) -> int:
    """32-bit FNV-1a (offset basis 0x811c9dc5, prime 0x01000193), unsigned."""
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & _MASK32
    return h


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The Java clients' and aiokafka's partition of ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's ``consistent``/``consistent_random`` partition of a non-empty ``key``."""
    return zlib.crc32(key) % partitions


def fnv1a_partition(key: bytes, partitions: int) -> int:
    """Sarama's default (hash) partition of ``key``: ``abs(int32(fnv1a(key))) % n``."""
    h = fnv1a32(key)
    signed = h - (1 << 32) if h & 0x80000000 else h
    return abs(signed) % partitions


_BY_NAME: dict[str, Callable[[bytes, int], int]] = {
    "murmur2": murmur2_partition,
    "crc32": crc32_partition,
    "fnv1a": fnv1a_partition,
}


def partition_function(name: str) -> Callable[[bytes, int], int]:
    """``(key, partition count) -> partition`` of a partitioner named in :data:`PARTITIONERS`."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown key partitioner {name!r}: use one of "
                         f"{', '.join(PARTITIONERS)}") from None


def partition_for(name: str, key: bytes, partitions: int) -> int:
    """The partition the partitioner ``name`` gives ``key`` among ``partitions``."""
    if partitions < 1:
        raise ValueError(f"partition count must be >= 1, got {partitions}")
    return partition_function(name)(key, partitions)


def fitting(key: bytes, partition: int, partitions: int) -> tuple[str, ...]:
    """The partitioners (in :data:`PARTITIONERS` order) that put ``key`` on ``partition``."""
    return tuple(name for name in PARTITIONERS
                 if partition_for(name, key, partitions) == partition)
