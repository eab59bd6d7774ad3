"""Opt-in timeline of what a worker's event loop did, to explain latency stalls.

``STALL_PROBE=<file>`` (debug only; off by default, costs a few microseconds per loop
callback) makes a worker append one JSON line per event to ``<file>``, each with ``t``
(epoch seconds, the clock the latency bench stamps positions with) and ``k`` (kind):

- ``lag``: the loop woke a 5-ms sleeper ``late_ms`` late (logged from 20 ms);
- ``cb``: one loop callback (a task step, a done callback) ran ``ms`` (from 15 ms), ``what``;
- ``gc``: a garbage collection of generation ``gen`` took ``ms`` (gen 2 always, else from 2 ms);
- ``commit``, ``flush``, ``drain``: Faust's offset commit, the producer's flush, the bulk
  writer's hand-over (``ms``, from the start ``t0``);
- ``fetch``: one fetch request (``ms`` send -> reply, ``parts`` partitions, ``recs`` records);
- ``produce``: one produce request (``ms``, ``batches``);
- ``push``: one Redis push round (``ms``, ``n`` offers);
- ``lane``: an urgent batch (``n`` records, ``ms`` in the handler, ``age_ms`` of its oldest
  record on entry: fetch side) from 20 ms of age or 5 ms of handling;
- ``rebalance``: partitions revoked or assigned.

Wraps private methods of faust 0.15.3 and aiokafka 0.14.0 (only when on); re-check on upgrade.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Collection
from typing import IO, Any

log = logging.getLogger(__name__)

_OUT: IO[str] | None = None
#: Loop callbacks slower than this are logged (s).
SLOW_CALLBACK_S = 0.015
#: Sleeper wake-ups later than this are logged (s).
LAG_S = 0.020
TICK_S = 0.005


def emit(kind: str, **fields: Any) -> None:
    """Append one event (no-op when the probe is off)."""
    if _OUT is not None:
        _OUT.write(json.dumps({"t": round(time.time(), 4), "k": kind, **fields}) + "\n")


def _timed(owner: Any, name: str, kind: str, min_ms: float,
           describe: Callable[..., dict[str, Any]] | None = None) -> None:
    """Wrap coroutine method ``owner.name``: emit ``kind`` with its duration from ``min_ms``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0, started = time.time(), time.perf_counter()
        result = None
        try:
            result = await original(*args, **kwargs)
            return result
        finally:
            ms = (time.perf_counter() - started) * 1000
            if ms >= min_ms:
                extra = describe(args, result) if describe is not None else {}
                emit(kind, t0=round(t0, 4), ms=round(ms, 2), **extra)

    setattr(owner, name, wrapper)


def _callback_name(handle: Any) -> str:
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        frame = getattr(coro, "cr_frame", None)
        where = f" @{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno}" if frame else ""
        return f"task {getattr(coro, '__qualname__', coro)}{where}"
    return repr(callback)[:160]


#: The callback running now: (perf_counter at its start, serial), read by the watchdog.
_RUNNING: list[Any] = [0.0, 0]
#: Main-thread stacks the watchdog took during the current slow callback.
_STACKS: list[str] = []
#: (perf_counter, main thread's run-queue wait ns) every 10 ms, newest last (the watchdog).
_WAITS: list[tuple[float, int]] = []


def _run_delay(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[1])


def _waited_ms(since: float) -> float:
    """The main thread's run-queue wait (ms) from the sample before ``since`` to the last."""
    samples = list(_WAITS)
    before = [w for t, w in samples if t <= since]
    if not before or not samples:
        return -1.0
    return round((samples[-1][1] - before[-1]) / 1e6, 1)


def _patch_handles() -> None:
    original = asyncio.events.Handle._run

    def run(self: Any) -> None:
        started, cpu, proc = time.perf_counter(), time.thread_time(), time.process_time()
        _RUNNING[0], _RUNNING[1] = started, _RUNNING[1] + 1
        original(self)
        _RUNNING[0] = 0.0
        took = time.perf_counter() - started
        if took >= SLOW_CALLBACK_S:
            emit("cb", ms=round(took * 1000, 2), cpu_ms=round((time.thread_time() - cpu) * 1000, 2),
                 proc_ms=round((time.process_time() - proc) * 1000, 2),
                 runq_ms=_waited_ms(started),
                 what=_callback_name(self), stacks=list(_STACKS))
        if _STACKS:
            _STACKS.clear()

    asyncio.events.Handle._run = run  # type: ignore[method-assign]


def _watchdog(main: int) -> None:
    """Every 10 ms: a callback running for 30 ms or more gets its stack sampled (up to 4);
    the main thread's run-queue wait sampled; every second, CPU ticks per thread."""
    ticks: dict[str, int] = {}
    next_threads = time.monotonic() + 1.0
    native = next((t.native_id for t in threading.enumerate() if t.ident == main), None)
    native = os.getpid() if native is None else native
    while True:
        time.sleep(0.01)
        try:
            _WAITS.append((time.perf_counter(), _run_delay(native)))
            del _WAITS[:-200]
        except OSError:
            pass
        if time.monotonic() >= next_threads:  # CPU ticks per thread over the last second
            next_threads += 1.0
            now: dict[str, int] = {}
            for tid in os.listdir("/proc/self/task"):
                try:
                    with open(f"/proc/self/task/{tid}/stat") as f:
                        fields = f.read().rsplit(")", 1)
                    name = fields[0].split("(", 1)[1]
                    rest = fields[1].split()
                    now[f"{tid}:{name}"] = int(rest[11]) + int(rest[12])
                except (OSError, IndexError, ValueError):
                    continue
            emit("threads", ticks={k: v - ticks.get(k, 0) for k, v in now.items()
                                   if v - ticks.get(k, 0) > 0})
            ticks = now
        started, serial = _RUNNING[0], _RUNNING[1]
        if started and time.perf_counter() - started >= 0.03 and len(_STACKS) < 4:
            frame = sys._current_frames().get(main)
            if frame is not None and _RUNNING[1] == serial:
                stack = traceback.extract_stack(frame)[-14:]
                _STACKS.append(f"{(time.perf_counter() - started) * 1000:.0f}ms: " + " < ".join(
                    f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}"
                    for f in reversed(stack)))


def _gc_callback() -> Callable[[str, dict[str, Any]], None]:
    started = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1000
        if info["generation"] == 2 or ms >= 2:
            emit("gc", gen=info["generation"], ms=round(ms, 2),
                 collected=info.get("collected"))
    return callback


async def _lag_monitor() -> None:
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + TICK_S
        await asyncio.sleep(TICK_S)
        late = loop.time() - due
        if late >= LAG_S:
            emit("lag", late_ms=round(late * 1000, 1))


def _fetch_parts(args: tuple[Any, ...], result: Any) -> dict[str, Any]:
    request = args[3] if len(args) > 3 else None
    topics = getattr(request, "topics", None) or []
    names = ",".join(f"{topic.split('.', 1)[-1]}:{len(parts)}" for topic, parts in topics)
    return {"parts": sum(len(parts) for _, parts in topics), "new": bool(result),
            "topics": names[:300]}


def install(path: str) -> None:
    """Open ``path`` and wrap what the probe times (once per process)."""
    global _OUT
    if _OUT is not None:
        return
    _OUT = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process's life
    from aiokafka.consumer.fetcher import Fetcher
    from aiokafka.producer.sender import Sender
    from faust.app.base import App
    from faust.transport import consumer as faust_consumer

    from app.delivery.pusher import DirectPusher
    from app.runtime import fastlane, transport
    from app.runtime.bulk import BulkWriter

    _patch_handles()
    threading.Thread(target=_watchdog, args=(threading.get_ident(),), daemon=True,
                     name="stall-probe").start()
    gc.callbacks.append(_gc_callback())
    _timed(faust_consumer.Consumer, "_commit_offsets", "commit", 0)
    _timed(transport.Producer, "flush", "flush", 0)
    _timed(BulkWriter, "drain", "drain", 5)
    _timed(Fetcher, "_proc_fetch_request", "fetch", 0, _fetch_parts)
    _timed(Sender, "_send_produce_req", "produce", 0,
           lambda args, result: {"batches": len(args[2]) if len(args) > 2 else 0})
    _timed(DirectPusher, "push_round", "push", 0)
    _timed(App, "_on_partitions_revoked", "revoked", 0)
    _timed(App, "_on_partitions_assigned", "assigned", 0)
    original_lane = transport.Consumer._run_lane

    async def run_lane(self: Any, tp: Any, batch: list[Any], handler: Any,
                       pace: Any = None) -> bool:
        if tp.topic not in fastlane.URGENT or not batch:
            started = time.perf_counter()
            finished: bool = await original_lane(self, tp, batch, handler, pace)
            ms = (time.perf_counter() - started) * 1000
            if ms >= 5:
                emit("other_lane", topic=tp.topic.split(".", 1)[-1], p=tp.partition,
                     n=len(batch), ms=round(ms, 2))
            return finished
        t0, started = time.time(), time.perf_counter()
        oldest = min(r.timestamp for r in batch) / 1000
        finished = await original_lane(self, tp, batch, handler, pace)
        ms = (time.perf_counter() - started) * 1000
        age = (t0 - oldest) * 1000
        if age >= 20 or ms >= 5:
            emit("lane", t0=round(t0, 4), n=len(batch), ms=round(ms, 2), age_ms=round(age, 1),
                 p=tp.partition)
        return finished

    transport.Consumer._run_lane = run_lane  # type: ignore[method-assign]
    from app.runtime import fetch_actions

    original_skip = fetch_actions.skip_paused

    def skip_paused(fetcher: Any, loop: asyncio.AbstractEventLoop,
                    log: fetch_actions.FetchLog | None = None,
                    urgent: Collection[str] = ()) -> None:
        original_skip(fetcher, loop, log, urgent)
        decide = fetcher._get_actions_per_node

        def actions(assignment: Any) -> Any:
            result = decide(assignment)
            if not result[0] and not fetcher._in_flight:
                now = time.monotonic()
                emit("nofetch", timeout=result[2], resets=len(result[1]),
                     invalid=result[3], resume=len(result[4]),
                     held={f"{tp.topic.split('.', 1)[-1]}[{tp.partition}]":
                           round((now - rec._created) * 1000, 1)
                           for tp, rec in list(fetcher._records.items())[:20]})
            return result

        fetcher._get_actions_per_node = actions

    fetch_actions.skip_paused = skip_paused
    asyncio.get_event_loop().create_task(_lag_monitor())
    log.warning("stall probe on: %s", path)
