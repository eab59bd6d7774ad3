"""The fast lane's chunk adapts so that one chunk never holds the event loop for long: on a
CPU-starved host a fixed 32,768-record chunk took seconds, heartbeats waited and the group
session expired (app/runtime/transport.py, ``lane_chunk``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.runtime.transport import (
    LANE_CHUNK,
    LANE_CHUNK_MIN,
    LANE_STEP_S,
    caught_up,
    lane_chunk,
)

pytestmark = pytest.mark.timeout(60)


def test_a_slow_chunk_shrinks_the_next_to_fit_the_step() -> None:
    assert lane_chunk(LANE_CHUNK, 4 * LANE_STEP_S) == LANE_CHUNK // 4


def test_the_chunk_never_shrinks_below_the_floor() -> None:
    assert lane_chunk(LANE_CHUNK_MIN, 100.0) == LANE_CHUNK_MIN


def test_fast_chunks_grow_back_to_the_full_size() -> None:
    size = LANE_CHUNK_MIN
    for _ in range(10):
        size = lane_chunk(size, LANE_STEP_S / 10)
    assert size == LANE_CHUNK


def test_a_chunk_within_the_step_keeps_its_size() -> None:
    assert lane_chunk(20_000, LANE_STEP_S / 2) == 20_000


@given(st.integers(LANE_CHUNK_MIN, LANE_CHUNK), st.floats(0.0, 60.0))
def test_the_chunk_stays_between_floor_and_ceiling(size: int, elapsed: float) -> None:
    assert LANE_CHUNK_MIN <= lane_chunk(size, elapsed) <= LANE_CHUNK


def test_partitions_read_to_their_highwater_are_caught_up() -> None:
    assert caught_up([(99, 100), (4, 5)])  # the last offset read is the highwater's previous


def test_a_partition_with_records_left_or_unknown_is_not_caught_up() -> None:
    assert not caught_up([(99, 100), (3, 5)])
    assert not caught_up([(None, 100)])
    assert not caught_up([(99, None)])
