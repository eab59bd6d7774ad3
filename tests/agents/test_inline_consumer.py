"""aiokafka runs on the worker's own event loop unless CONSUMER_THREAD=on."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.faust_app import app
from app.runtime.transport import FetchWaitConsumerThread, InlineConsumerThread


def test_consumer_service_runs_on_the_worker_loop_by_default() -> None:
    thread = app.consumer._thread
    assert type(thread) is InlineConsumerThread
    assert thread.thread_loop is thread.parent_loop


def test_calls_meant_for_the_consumer_thread_run_in_place() -> None:
    thread = app.consumer._thread
    seen: list[tuple[object, object]] = []

    async def fetch(value: int) -> int:
        seen.append((asyncio.get_running_loop(), threading.current_thread()))
        return value * 2

    async def scenario() -> tuple[int, int]:
        awaited = await thread.call_thread(fetch, 21)
        plain = await thread.call_thread(lambda: 5)
        assert seen == [(asyncio.get_running_loop(), threading.main_thread())]
        return awaited, plain

    assert asyncio.run(scenario()) == (42, 5)


def test_errors_of_a_call_reach_the_caller() -> None:
    thread = app.consumer._thread

    async def broken() -> None:
        raise RuntimeError("broker said no")

    with pytest.raises(RuntimeError, match="broker said no"):
        asyncio.run(thread.call_thread(broken))


def test_faust_thread_is_kept_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    import app.runtime.transport as transport

    monkeypatch.setattr(transport, "SETTINGS", transport.SETTINGS.__class__(
        consumer_thread=True))
    thread = app.consumer._new_consumer_thread()
    assert type(thread) is FetchWaitConsumerThread
    assert thread.thread_loop is not thread.parent_loop
    thread.thread_loop.close()
