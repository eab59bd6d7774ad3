"""Standby and active changelog seeks during recovery: whatever the last-read offsets hold,
the consumer is only ever asked to seek to an int >= 0 (issue 16: ``None`` reached aiokafka's
``seek`` and three workers exited with ``ValueError: Offset must be a positive integer``)."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest
from faust.types import TP

import app as storestream
from app.runtime.recovery import ProbingRecovery, seek_positions


class SeekRecorder:
    """The consumer call a changelog seek makes, recorded; a stand-in for Faust's consumer
    that rejects what aiokafka 0.14's ``seek`` rejects."""

    def __init__(self) -> None:
        self.seeks: list[dict[TP, Any]] = []

    async def seek_wait(self, partitions: dict[TP, Any]) -> None:
        self.seeks.append(dict(partitions))
        for offset in partitions.values():
            if not isinstance(offset, int) or offset < 0:
                raise ValueError("Offset must be a positive integer")


def fresh_recovery() -> ProbingRecovery:
    """A recovery service of the app's table manager, not started, with its own offsets."""
    app = storestream.app
    app.finalize()
    manager = app.tables
    return ProbingRecovery(app, manager, beacon=manager.beacon)


def changelog() -> str:
    return next(iter(storestream.app.tables.changelog_topics))


async def test_standby_seek_never_hands_a_negative_offset_to_the_consumer(
        caplog: pytest.LogCaptureFixture) -> None:
    topic = changelog()
    tps = [TP(topic, partition) for partition in range(7)]
    values: list[Any] = [-1, -2, -7, None, 3.0, 5, True]
    offsets: Counter[TP] = Counter()
    for tp, value in zip(tps, values, strict=True):
        offsets[tp] = value
    consumer = SeekRecorder()
    with caplog.at_level(logging.WARNING, logger="app.runtime.recovery"):
        await fresh_recovery()._seek_offsets(consumer, set(tps), offsets, "standby")

    assert len(consumer.seeks) == 1
    sought = consumer.seeks[0]
    assert set(sought) == set(tps)
    for offset in sought.values():
        assert type(offset) is int
        assert offset >= 0
    assert sought[tps[0]] == 0  # -1 ("nothing read"): the start, as in Faust
    assert sought[tps[5]] == 5  # a real offset is kept
    for tp in (tps[1], tps[2], tps[3], tps[4], tps[6]):
        assert sought[tp] == 0  # unusable: read the changelog from its start

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    for partition in (1, 2, 3, 4, 6):
        assert f"{topic}[{partition}]={values[partition]!r}" in warnings[0]
    for partition in (0, 5):  # -1 is normal and 5 is kept: not worth a warning
        assert f"{topic}[{partition}]" not in warnings[0]
    # Faust's bookkeeping sees "nothing read yet" where reading restarts at 0.
    assert [offsets[tp] for tp in tps] == [-1, -1, -1, -1, -1, 5, -1]


async def test_a_standby_assigned_after_offsets_were_built_is_sought_to_its_start(
        caplog: pytest.LogCaptureFixture) -> None:
    """What happened in the fault run: a rebalance adds a standby partition (its offset is
    ``None`` until ``_build_offsets`` runs) just before recovery seeks the standbys."""
    tables: Any = storestream.app.tables
    recovery = fresh_recovery()
    topic = changelog()
    table = tables._changelogs[topic]
    old, new = TP(topic, 0), TP(topic, 1)
    recovery.add_standby(table, old)
    await recovery._build_offsets(broker({old: 4}), {old}, recovery.standby_offsets,
                                  "standby")
    assert recovery.standby_offsets[old] == 3
    recovery.add_standby(table, new)  # the rebalance, after the offsets were built
    assert recovery.standby_offsets[new] is None  # Faust's own placeholder

    consumer = SeekRecorder()
    with caplog.at_level(logging.WARNING, logger="app.runtime.recovery"):
        await recovery._seek_offsets(consumer, recovery.standby_tps,
                                     recovery.standby_offsets, "standby")

    assert consumer.seeks == [{old: 3, new: 0}]
    assert any(f"{topic}[1]=None" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)
    assert recovery.standby_offsets[new] == -1
    recovery.standby_highwaters.update({old: 9, new: 9})
    assert recovery.standby_remaining() == Counter({old: 6})  # None here: TypeError


async def test_an_active_seek_with_an_earliest_offset_of_minus_one_starts_at_zero() -> None:
    """The broker answered an earliest offset of -1 once: Faust's start offset is then -2."""
    tables: Any = storestream.app.tables
    recovery = fresh_recovery()
    topic = changelog()
    tp = TP(topic, 2)
    recovery.add_active(tables._changelogs[topic], tp)
    await recovery._build_offsets(broker({tp: -1}), {tp}, recovery.active_offsets,
                                  "active")
    assert recovery.active_offsets[tp] == -2
    consumer = SeekRecorder()
    await recovery._seek_offsets(consumer, {tp}, recovery.active_offsets, "active")
    assert consumer.seeks == [{tp: 0}]
    recovery.active_highwaters[tp] = 4
    assert recovery.active_remaining() == Counter({tp: 5})  # offsets 0..4 still to read


def broker(earliest: dict[TP, int]) -> Any:
    return EarliestAt(earliest)


class EarliestAt:
    """The one consumer call ``_build_offsets`` makes: the broker's earliest offsets."""

    def __init__(self, earliest: dict[TP, int]) -> None:
        self._earliest = earliest

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: self._earliest[tp] for tp in tps if tp in self._earliest}


def test_seek_positions_keep_ints_and_start_everything_else_at_zero() -> None:
    a, b, c, d = (TP("t", n) for n in range(4))
    positions, unusable = seek_positions({a: 0, b: 12, c: -3}, [a, b, c, d])
    assert positions == {a: 0, b: 12, c: 0, d: 0}
    assert unusable == {c: -3, d: None}
