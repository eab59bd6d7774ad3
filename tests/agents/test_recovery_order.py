"""The end of a recovery: stream partitions are sought to their committed offsets before
they resume, so nothing fetched from an older position is processed first."""

from __future__ import annotations

from typing import Any

import pytest
from faust.types import TP

import app as storestream
from app.runtime.recovery import ProbingRecovery


class RecordingConsumer:
    """The four consumer calls the end of a recovery makes, in the order it makes them."""

    def __init__(self, assignment: set[TP]) -> None:
        self._assignment = assignment
        self.calls: list[Any] = []

    def assignment(self) -> set[TP]:
        return self._assignment

    async def perform_seek(self) -> None:
        self.calls.append("seek")

    def resume_partitions(self, tps: set[TP]) -> None:
        self.calls.append(("resume", frozenset(tps)))

    def resume_flow(self) -> None:
        self.calls.append("flow")


class IdleFetcher:
    async def maybe_start(self) -> None:
        return None


async def finish(monkeypatch: pytest.MonkeyPatch, assignment: set[TP],
                 generation: int) -> RecordingConsumer:
    app = storestream.app
    app.finalize()
    consumer = RecordingConsumer(assignment)
    monkeypatch.setattr(app, "_consumer", consumer)
    monkeypatch.setattr(app, "_fetcher", IdleFetcher(), raising=False)
    recovery = app.tables.recovery
    assert isinstance(recovery, ProbingRecovery)
    await recovery._complete_recovery(generation)
    return consumer


async def test_stream_partitions_are_sought_before_they_resume(
        monkeypatch: pytest.MonkeyPatch) -> None:
    app = storestream.app
    changelog = next(iter(app.tables.changelog_topics))
    purchases, locations = TP("purchases", 0), TP("customers.locations", 1)
    consumer = await finish(monkeypatch, {purchases, locations, TP(changelog, 0)},
                            app.consumer_generation_id)
    assert consumer.calls == ["seek", ("resume", frozenset({purchases, locations})), "flow"]


async def test_a_newer_rebalance_leaves_the_streams_paused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    app = storestream.app
    consumer = await finish(monkeypatch, {TP("purchases", 0)}, app.consumer_generation_id - 1)
    assert consumer.calls == []
