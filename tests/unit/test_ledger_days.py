"""How a returns ledger is split into a head and day records (core/ledger_days.py).

The oracle compares plain dicts: what a naive diff of two ledgers' rows finds, and the rows a
set of day records holds, computed here without the module's helpers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.events import BadEvent, parse_purchase, parse_return
from core.ledger_days import (
    added_rows,
    assemble,
    changed_rows,
    day_json,
    day_key,
    day_rows,
    days_of_text,
    days_text,
    head_json,
    listed_days,
    listed_text,
    stored_days,
)
from core.returns import Ledger, Refund

DAY = 86_400.0
T0 = 1_767_225_600.0  # 2026-01-01


def row(ts: float, product: str = "coffee", cents: int | None = None,
        refunds: tuple[Any, ...] = ()) -> tuple[float, str, int | None, tuple[Any, ...]]:
    return (ts, product, cents, refunds)


rows = st.dictionaries(
    st.text("pq0123456789", min_size=1, max_size=3),
    st.builds(row, st.floats(T0, T0 + 40 * DAY), st.sampled_from(["coffee", "tea"]),
              st.one_of(st.none(), st.integers(0, 900))),
    max_size=12)


def by_day(bought: dict[str, Any]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for pid, r in bought.items():
        out.setdefault(int(r[0] // DAY), {})[pid] = r
    return out


def stored_after(before: dict[str, Any], changes: dict[int, dict[str, Any]]
                 ) -> dict[int, dict[str, Any]]:
    """The day records of ``before`` with each day's changes written (empty days deleted)."""
    stored = by_day(before)
    for day, rows in changes.items():
        kept = day_rows({"bought": stored[day]} if day in stored else None, rows)
        if kept:
            stored[day] = kept
        else:
            stored.pop(day, None)
    return stored


def naive_changed(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    return {pid for pid in {*before, *after} if before.get(pid) != after.get(pid)}


@given(rows, rows)
def test_writing_the_changed_days_turns_the_stored_days_into_the_new_ledger(
        before: dict[str, Any], after: dict[str, Any]) -> None:
    after = {pid: (before[pid] if pid in before and pid[0] == "p" else r)
             for pid, r in after.items()}  # some rows kept as they were (the same object)
    changes = changed_rows(before, after)
    assert stored_after(before, changes) == by_day(after)
    reported = {pid for rows in changes.values() for pid in rows}
    assert naive_changed(before, after) <= reported


@given(rows, rows)
def test_purchases_remembered_in_a_batch_are_found_from_their_ids_alone(
        before: dict[str, Any], new: dict[str, Any]) -> None:
    after = {**before, **{pid: r for pid, r in new.items() if pid not in before}}
    touched = list(new) + list(new)[:2]  # a purchase id can repeat in a batch
    changes = changed_rows(before, after, touched)
    assert stored_after(before, changes) == by_day(after)
    assert {pid for rows in changes.values() for pid in rows} == naive_changed(before, after)


@given(rows, rows)
def test_rows_dropped_beside_the_remembered_ones_are_found_too(
        before: dict[str, Any], new: dict[str, Any]) -> None:
    kept = {pid: r for pid, r in before.items() if r[0] >= T0 + 10 * DAY}
    after = {**kept, **{pid: r for pid, r in new.items() if pid not in before}}
    changes = changed_rows(before, after, list(new))
    assert stored_after(before, changes) == by_day(after)


def test_a_dropped_row_is_found_although_only_new_ids_were_given() -> None:
    before = {"p1": row(T0), "p2": row(T0 + 2 * DAY)}
    after = {"p2": before["p2"], "p3": row(T0 + 3 * DAY)}
    assert changed_rows(before, after, ["p3"]) == {
        int(T0 // DAY): {"p1": None}, int((T0 + 3 * DAY) // DAY): {"p3": after["p3"]}}


@given(rows)
def test_a_head_and_its_day_records_give_back_the_ledger(bought: dict[str, Any]) -> None:
    ledger = Ledger(bought, (), T0 + 41 * DAY, ((7, "no"),), 41, -1, 3, -1, ())
    days = by_day(bought)
    head = head_json(ledger, sorted(days))
    assert "bought" not in head and stored_days(head) == sorted(days)
    records = [day_json(days[day], ledger) for day in sorted(days)]
    assert assemble(head, records) == ledger
    assert all(record["last_offset"] == 41 and record["last_ret"] == 3 for record in records)


@given(st.sets(st.integers(0, 30_000), max_size=40))
def test_the_days_listed_read_back_as_written(days: set[int]) -> None:
    text = days_text(sorted(days))
    assert days_of_text(text) == sorted(days)
    runs = [tuple(map(int, run.split("-"))) for run in text.split(",")] if text else []
    assert len(runs) == sum(1 for day in days if day - 1 not in days)  # one per run, maximal
    assert all(len(run) == 1 or run[0] < run[1] for run in runs)


def test_a_head_holds_what_is_not_empty_and_its_days_as_runs() -> None:
    ledger = Ledger({}, (), T0, (), 41, -1, -1, -1, ())
    head = head_json(ledger, [20454, 20455, 20456, 20460])
    assert head == {"newest_ts": T0, "last_offset": 41, "days": "20454-20456,20460"}
    assert assemble(head, []) == ledger
    assert day_json({}, ledger) == {"bought": {}, "last_offset": 41}


def test_a_head_listing_its_days_as_a_list_is_read_as_it_was() -> None:
    head = {"held": [], "newest_ts": T0, "rejected": [[3, "no"]], "last_offset": 41,
            "last_rp": -1, "last_ret": 3, "days": [20455, 20454]}
    assert stored_days(head) == [20454, 20455]
    assert assemble(head, []) == Ledger({}, (), T0, ((3, "no"),), 41, -1, 3, -1, ())


def test_a_head_written_before_day_records_is_read_as_it_was() -> None:
    ledger = Ledger({"p1": row(T0, cents=250, refunds=(Refund(4, 100, False),))}, (), T0,
                    (), 9, -1, 4, -1, ())
    assert assemble(ledger.to_json(), []) == ledger
    assert stored_days(ledger.to_json()) == []


def test_no_head_is_a_new_customer() -> None:
    assert assemble(None, []) == Ledger()


def test_day_keys_cannot_collide_with_a_customer_id() -> None:
    assert day_key("kris", 20454) == "kris\x1f20454"
    for parse in (parse_purchase, parse_return):
        with pytest.raises(BadEvent, match="U\\+001F"):
            parse(b'{"user_id": "kris\\u001f20454", "product_id": "tea", "purchase_id": "p1"}',
                  None, T0)


@given(rows, rows)
def test_rows_new_to_a_ledger_are_written_to_their_days_as_a_full_comparison_finds(
        before: dict[str, Any], fresh: dict[str, Any]) -> None:
    fresh = {f"n{pid}": r for pid, r in fresh.items()}  # ids the ledger does not hold
    assert stored_after(before, added_rows(fresh)) == by_day({**before, **fresh})


@given(st.sets(st.integers(0, 60)), st.sets(st.integers(0, 60)), st.sets(st.integers(0, 60)))
def test_the_head_lists_each_day_that_has_a_record_once_in_order(
        listed: set[int], added: set[int], gone: set[int]) -> None:
    gone -= added
    days = sorted(listed)
    out = listed_days(days, sorted(added), sorted(gone))
    assert out == sorted((listed | added) - gone)
    if added <= listed and not gone & listed:
        assert out is days  # nothing to rewrite


@given(st.sets(st.integers(0, 60)), st.sets(st.integers(0, 60)), st.sets(st.integers(0, 60)),
       st.booleans())
def test_a_heads_days_text_is_kept_as_it_is_when_the_batch_lists_no_new_day(
        listed: set[int], added: set[int], gone: set[int], as_list: bool) -> None:
    gone -= added
    text = days_text(sorted(listed))
    head = {"days": sorted(listed) if as_list else text}  # a list, as heads were written before
    out = listed_text(head, sorted(added), sorted(gone))
    assert days_of_text(out) == sorted((listed | added) - gone)
    if added <= listed and not gone and not as_list:
        assert out is text  # nothing unpacked or rewritten
    assert listed_text(None, sorted(added), []) == days_text(sorted(added))


@given(st.sets(st.integers(0, 60)), st.lists(st.integers(0, 8), max_size=6))
def test_days_from_the_last_listed_run_on_are_listed_from_the_text_s_tail(
        listed: set[int], later: list[int]) -> None:
    """The usual batch: its days are the newest listed one or after it (in any order,
    repeated); the text read only at its tail lists exactly what unpacking it would."""
    newest = max(listed, default=0)
    added = [newest + step for step in later]
    text = days_text(sorted(listed))
    out = listed_text({"days": text}, added, [])
    assert days_of_text(out) == sorted(listed | set(added))
    assert out == days_text(sorted(listed | set(added)))  # one text for a set of days
    if set(added) <= listed:
        assert out is text
