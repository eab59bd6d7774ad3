"""Local table state is used again only after a settled stop (app/runtime/local_state.py),
and under exactly_once a table's persisted offset follows committed transactions only."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.runtime import local_state
from app.runtime.guarantees import CommitGate, LaneWriter
from app.runtime.local_state import MARKER, prepare, record_stop


def filled(tmp_path: Path) -> tuple[Path, Path]:
    appdir = tmp_path / "v1"
    tabledir = appdir / "tables"
    (tabledir / "spend-0.db").mkdir(parents=True)
    (tabledir / "spend-0.db" / "000001.sst").write_bytes(b"x")
    return appdir, tabledir


async def processed(gate: CommitGate, events: int) -> None:
    for _ in range(events):
        async with gate.event():
            pass


def settled_gate(events: int = 3) -> CommitGate:
    gate = CommitGate()
    asyncio.run(processed(gate, events))
    gate.commit_succeeded(gate.commit_begins())
    return gate


def test_local_state_after_a_settled_stop_is_kept_and_the_marker_taken(tmp_path: Path) -> None:
    appdir, tabledir = filled(tmp_path)
    assert record_stop(appdir, crashed=False, gate=settled_gate())
    assert prepare(appdir, tabledir) == "kept"
    assert (tabledir / "spend-0.db" / "000001.sst").exists()
    # a crash during the run that follows leaves no marker: its next start deletes
    assert not (appdir / MARKER).exists()
    assert prepare(appdir, tabledir) == "deleted"
    assert not tabledir.exists()


def test_local_state_without_the_marker_is_deleted_and_restored(tmp_path: Path) -> None:
    appdir, tabledir = filled(tmp_path)
    assert prepare(appdir, tabledir) == "deleted"
    assert not tabledir.exists()


def test_a_first_start_has_nothing_to_delete(tmp_path: Path) -> None:
    assert prepare(tmp_path / "v1", tmp_path / "v1" / "tables") == "none"


def test_events_not_in_a_successful_commit_leave_no_marker(tmp_path: Path) -> None:
    gate = settled_gate()
    asyncio.run(processed(gate, 1))  # processed after the last commit
    assert gate.unsettled == 1 and not gate.settled
    assert not record_stop(tmp_path, crashed=False, gate=gate)
    assert not (tmp_path / MARKER).exists()


def test_a_crashed_worker_leaves_no_marker(tmp_path: Path) -> None:
    assert not record_stop(tmp_path, crashed=True, gate=settled_gate())
    assert not (tmp_path / MARKER).exists()


def test_dropped_output_is_never_settled_by_a_later_commit() -> None:
    gate = settled_gate()
    gate.taint("partitions revoked with output not committed")
    asyncio.run(processed(gate, 2))
    gate.commit_succeeded(gate.entered)
    assert not gate.unsettled and not gate.settled


def test_an_event_in_flight_when_a_commit_begins_is_not_settled_by_it() -> None:
    gate = CommitGate()

    async def scenario() -> None:
        started, release = asyncio.Event(), asyncio.Event()

        async def slow_event() -> None:
            async with gate.event():
                started.set()
                await release.wait()

        task = asyncio.ensure_future(slow_event())
        await started.wait()
        gate.commit_succeeded(gate.commit_begins())  # as the consumer's commit does
        assert gate.unsettled == 1 and not gate.settled
        release.set()
        await task
        assert not gate.settled  # done, but in no commit yet
        gate.commit_succeeded(gate.commit_begins())
        assert gate.settled

    asyncio.run(scenario())


def test_a_lane_writer_reports_deliveries_only_once_its_transaction_committed() -> None:
    """An acknowledged record of an open transaction may still be aborted: the table's
    persisted offset must not pass it before the commit."""
    persisted: list[int] = []

    async def scenario() -> None:
        writer = LaneWriter(asyncio.Event())
        writer.on_delivered("spend-changelog", 3, persisted.append, owner="store")
        assert writer.delivers_to("spend-changelog", 3, "store")
        loop = asyncio.get_running_loop()
        for first_offset in (10, 14):
            future = loop.create_future()
            writer._track(future, "spend-changelog", 3, count=4)
            future.set_result(SimpleNamespace(offset=first_offset))
        await asyncio.sleep(0)
        assert persisted == []  # acknowledged, not committed
        writer.committed()
        assert persisted == [17]
        writer.committed()  # nothing new acknowledged: nothing reported again
        assert persisted == [17]

    asyncio.run(scenario())


def test_only_the_worker_command_prepares_local_state(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``faust -A app topics`` run beside a worker (whose marker is gone while it runs)
    must not delete the worker's state."""
    appdir, tabledir = filled(tmp_path)
    monkeypatch.setattr(local_state, "PREPARED", [])
    app = SimpleNamespace(conf=SimpleNamespace(store="rocksdb:", appdir=appdir,
                                               tabledir=tabledir))
    local_state.on_worker_init(app, "topics")
    assert tabledir.exists() and local_state.PREPARED == []
    local_state.on_worker_init(app, "worker")
    local_state.on_worker_init(app, "worker")  # Faust sends it twice: prepared once
    assert local_state.PREPARED == ["deleted"] and not tabledir.exists()


def test_a_second_worker_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    local_state.hold(tmp_path / "v1")
    with pytest.raises(local_state.DataDirInUse, match="give each worker its own APP_DATADIR"):
        local_state.hold(tmp_path / "v1")
    local_state.hold(tmp_path / "other" / "v1")  # its own directory: fine
