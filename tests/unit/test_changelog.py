"""A late changelog write (a cut-off worker's, landing after its successor's) never replaces
a newer value on restore: the newer one is told by the source offsets each value applied."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from core.changelog import applied_offsets, superseded

offsets = st.fixed_dictionaries({}, optional={
    "last_offset": st.integers(-1, 50), "last_rp": st.integers(-1, 50),
    "last_ret": st.integers(-1, 50), "last_ret_rp": st.integers(-1, 50)})


def test_an_older_spend_record_landing_late_is_superseded() -> None:
    newer = {"settled_cents": 900, "last_offset": 41}
    late = {"settled_cents": 600, "last_offset": 37}
    assert superseded(newer, late)
    assert not superseded(late, newer)


def test_the_same_record_written_twice_is_not_superseded() -> None:
    record = {"total": 3, "last_offset": 5, "last_ret": 2}
    assert not superseded(record, dict(record))


def test_records_ahead_in_different_logs_keep_the_later_write() -> None:
    purchases_ahead = {"last_offset": 9, "last_ret": 1}
    returns_ahead = {"last_offset": 8, "last_ret": 2}
    assert not superseded(purchases_ahead, returns_ahead)
    assert not superseded(returns_ahead, purchases_ahead)


def test_values_without_offsets_and_tombstones_are_never_superseded() -> None:
    assert not superseded({"history": []}, {"history": [1]})
    assert not superseded({"last_offset": 4}, None)
    assert not superseded(None, {"last_offset": 4})


@given(offsets, offsets)
def test_superseded_means_no_log_ahead_and_one_behind(a: dict[str, Any],
                                                      b: dict[str, Any]) -> None:
    names = ("last_offset", "last_rp", "last_ret", "last_ret_rp")
    behind = [b.get(n, -1) < a.get(n, -1) for n in names]
    ahead = [b.get(n, -1) > a.get(n, -1) for n in names]
    assert superseded(a, b) == (any(behind) and not any(ahead))
    assert not (superseded(a, b) and superseded(b, a))


def test_an_older_cooldown_state_landing_late_is_superseded() -> None:
    newer = {"last_offered": {"p1\x1fsku": 50.0}, "applied": [["customers.locations", 3, 120]]}
    late = {"last_offered": {}, "applied": [["customers.locations", 3, 97]]}
    assert superseded(newer, late, applied_offsets)
    assert not superseded(late, newer, applied_offsets)


def test_cooldowns_ahead_on_different_partitions_keep_the_later_write() -> None:
    one = {"applied": [["customers.locations", 1, 9], ["customers.locations", 2, 4]]}
    other = {"applied": [["customers.locations", 1, 8], ["customers.locations", 2, 5]]}
    assert not superseded(one, other, applied_offsets)
    assert not superseded(other, one, applied_offsets)


def test_a_cooldown_state_that_lists_nothing_applied_is_behind_one_that_does() -> None:
    assert superseded({"applied": [["t", 0, 0]]}, {"applied": []}, applied_offsets)
    assert not superseded({"applied": [["t", 0, 0]]}, {"applied": "bad"}, applied_offsets)
