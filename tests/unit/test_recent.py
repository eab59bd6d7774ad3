from hypothesis import given
from hypothesis import strategies as st

from core.recent import RecentIds


def test_remembers_what_was_added() -> None:
    recent = RecentIds(3)
    recent.add("a")
    assert "a" in recent and "b" not in recent


def test_forgets_the_oldest_beyond_capacity() -> None:
    recent = RecentIds(2)
    for item in ("a", "b", "c"):
        recent.add(item)
    assert "a" not in recent and "b" in recent and "c" in recent and len(recent) == 2


def test_adding_again_makes_an_id_the_newest() -> None:
    recent = RecentIds(2)
    recent.add("a")
    recent.add("b")
    recent.add("a")
    recent.add("c")
    assert "a" in recent and "b" not in recent


@given(st.lists(st.text(max_size=3)), st.integers(min_value=1, max_value=5))
def test_holds_exactly_the_newest_distinct_ids(items: list[str], capacity: int) -> None:
    recent = RecentIds(capacity)
    for item in items:
        recent.add(item)
    newest: list[str] = []
    for item in reversed(items):
        if item not in newest:
            newest.append(item)
    expected = set(newest[:capacity])
    assert len(recent) == len(expected)
    assert all(item in recent for item in expected)
    assert not any(item in recent for item in set(items) - expected)
