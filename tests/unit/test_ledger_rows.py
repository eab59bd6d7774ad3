"""A ledger's rows in two layers (core/ledger_rows.py) read as the plain dict they replace.

The oracle is a plain dict updated batch by batch (``dict.update``), as the ledger's rows
were before the layers."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from core.ledger_rows import FOLD_MIN, LayeredRows, first_row, layers, plus_rows

ids = st.text("pq0123456789", min_size=1, max_size=3)
batches = st.lists(st.dictionaries(ids, st.integers(0, 99), max_size=12), max_size=40)


def reads_as(rows: Any, oracle: dict[str, int]) -> None:
    assert list(rows) == list(oracle)
    assert list(rows.items()) == list(oracle.items())
    assert len(rows) == len(oracle)
    assert rows == oracle
    for key, value in oracle.items():
        assert key in rows and rows[key] == value and rows.get(key) == value
    assert rows.get("absent") is None and "absent" not in rows
    assert first_row(rows) == next(iter(oracle.values()), None)


@given(st.dictionaries(ids, st.integers(0, 99)), batches)
def test_rows_added_batch_by_batch_read_as_one_plain_dict(
        start: dict[str, int], fresh_batches: list[dict[str, int]]) -> None:
    rows: Any = dict(start)
    oracle = dict(start)
    versions = []
    for fresh in fresh_batches:
        rows = plus_rows(rows, fresh)
        oracle.update(fresh)
        versions.append((rows, dict(oracle)))
        reads_as(rows, oracle)
        assert dict(rows) == oracle and list(dict(rows)) == list(oracle)  # as Ledger.to_json
    for version, then in versions:  # a version is never changed by the ones after it
        reads_as(version, then)


def test_the_small_layer_is_folded_in_once_it_outgrows_a_quarter_of_the_large() -> None:
    rows: Any = {f"p{n}": n for n in range(400)}
    for batch in range(9):  # 9 x 11 rows: 99 <= 100, still two layers
        rows = plus_rows(rows, {f"n{batch}-{n}": n for n in range(11)})
    assert len(rows._recent) == 99 and len(rows._base) == 400
    rows = plus_rows(rows, {f"n9-{n}": n for n in range(11)})
    assert len(rows._recent) == 0 and len(rows._base) == 510 == len(rows)
    small = plus_rows({}, {f"p{n}": n for n in range(FOLD_MIN)})
    assert isinstance(small, LayeredRows) and len(small._recent) == FOLD_MIN


def test_a_fresh_row_replaces_the_row_of_its_id_in_place() -> None:
    rows = plus_rows({"p1": 1, "p2": 2}, {"p1": 10})
    assert list(rows.items()) == [("p1", 10), ("p2", 2)] and len(rows) == 2
    assert plus_rows(rows, {}) is rows


def test_first_row_is_the_first_in_iteration_order() -> None:
    assert first_row({}) is None
    assert first_row(LayeredRows({}, {}, 0)) is None
    rows = plus_rows({"a": (1,), "b": (2,)}, {"c": (3,)})
    assert first_row(rows) == next(iter(rows.values())) == (1,)
    replaced = plus_rows(rows, {"a": (9,)})
    assert first_row(replaced) == next(iter(replaced.values())) == (9,)
    only_recent = LayeredRows({}, {"z": (5,)}, 1)
    assert first_row(only_recent) == (5,)


def test_layers_look_a_key_up_as_the_rows_do() -> None:
    rows = plus_rows(plus_rows({f"p{n}": (n,) for n in range(40)}, {"p1": (100,)}), {"q": (7,)})
    newer, older = layers(rows)
    for key in ("p0", "p1", "q", "absent"):
        row = newer.get(key)
        assert (older.get(key) if row is None else row) == rows.get(key)
    assert layers({"a": (1,)}) == ({}, {"a": (1,)})
