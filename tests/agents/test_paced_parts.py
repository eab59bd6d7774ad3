"""A paced lane's fetched batch is cut into parts of at most so many distinct keys: each
part's state is written in one step whose cost grows with its keys
(``app.runtime.transport.paced_parts``)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.runtime.transport import paced_parts

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Rec:
    key: bytes | None
    offset: int


def batch(keys: str) -> list[Rec]:
    return [Rec(k.encode(), n) for n, k in enumerate(keys)]


def test_a_batch_within_the_bound_is_one_part_itself() -> None:
    records = batch("abab")
    parts = list(paced_parts(records, 2))
    assert parts == [records] and parts[0] is records


def test_a_new_key_past_the_bound_starts_the_next_part() -> None:
    parts = list(paced_parts(batch("aabacbd"), 2))
    assert ["".join(r.key.decode() for r in part if r.key) for part in parts] == [
        "aaba", "cb", "d"]


@given(st.lists(st.sampled_from([b"a", b"b", b"c", b"d", b"e", None]), max_size=60),
       st.integers(min_value=1, max_value=4))
def test_parts_keep_every_record_in_order_within_the_bound(keys: list[bytes | None],
                                                           bound: int) -> None:
    records = [Rec(key, n) for n, key in enumerate(keys)]
    parts = list(paced_parts(records, bound))
    assert [r for part in parts for r in part] == records
    assert all(part and len({r.key for r in part}) <= bound for part in parts)
    # a part ends only where the next record's key would be one too many
    for part, following in itertools.pairwise(parts):
        assert len({r.key for r in part}) == bound
        assert following[0].key not in {r.key for r in part}
