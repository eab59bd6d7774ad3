"""The bulk writer's delivery callbacks: a table's writes register theirs once per
changelog partition, not once per batch, and another owner's callback replaces it."""

from __future__ import annotations

from app.runtime.bulk import BulkWriter


def test_a_callback_is_registered_once_per_owner_and_partition() -> None:
    writer = BulkWriter()
    store, other = object(), object()
    assert not writer.delivers_to("t-changelog", 0, store)
    writer.on_delivered("t-changelog", 0, lambda offset: None, owner=store)
    assert writer.delivers_to("t-changelog", 0, store)
    assert not writer.delivers_to("t-changelog", 1, store)  # another partition
    assert not writer.delivers_to("t-changelog", 0, other)
    writer.on_delivered("t-changelog", 0, lambda offset: None, owner=other)
    assert not writer.delivers_to("t-changelog", 0, store) and writer.delivers_to(
        "t-changelog", 0, other)


def test_a_callback_without_an_owner_is_never_taken_as_registered() -> None:
    writer = BulkWriter()
    writer.on_delivered("t-changelog", 0, lambda offset: None)
    assert not writer.delivers_to("t-changelog", 0, None)
