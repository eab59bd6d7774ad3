"""Throughput: storestream's loyalty path and three peers on the same workload, one by one.

Every run gets a fresh copy of the topics (own prefix) and its own process, and consumes
everything from the beginning. Figures are over the processing window (first event
processed to last event processed), so group join and start-up are excluded:

* storestream: the worker reports its own window on ``/metrics`` (wall clock and process CPU
  at the start of its first fast-lane batch and at the end of its latest one), read once
  ``/metrics`` shows every purchase counted; peak RSS is its VmHWM. With ``FAST_LANE=off``
  (no lane window) the window runs from the first poll (every :data:`POLL_S`) that shows
  purchases counted to the poll that shows all of them, leaving out those counted at the
  first poll, with the worker's ``/proc`` CPU time sampled at those two polls.
* peers print their own window (wall clock and ``getrusage`` CPU at their first and last
  event, plus their VmHWM) on one line.

Each window is capped at ``max_s`` seconds (``--max-window``); a peer still busy then
reports the rate over what it processed in the cap, marked ``complete: false``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.dev.devstack import DevStack
from bench import kstreams_peer
from bench.deploy import BenchError, Proc, StoreDeployment
from bench.procstat import Window
from bench.workload import Workload, create_topics, log, peer_topics, produce, produce_workload

POLL_S = 0.2
PEERS = ("storestream", "aiokafka", "quix", "faust", *kstreams_peer.VARIANTS)
LABELS = {
    "storestream": "storestream loyalty worker",
    "aiokafka": "plain aiokafka loop",
    "quix": "Quix Streams (RocksDB)",
    "faust": "stock Faust agent + Table",
    **kstreams_peer.LABELS,  # Kafka Streams 4.4: in-memory and RocksDB, cache as shipped and off
}


@dataclass
class PeerResult:
    """One peer's throughput figures."""

    peer: str
    status: str = "ok"
    events: int = 0
    seconds: float = 0.0
    events_per_s: float = 0.0
    cpu_percent: float = 0.0
    cpu_us_per_event: float = 0.0
    peak_rss_mb: float = 0.0
    startup_s: float = 0.0
    produce_s: float = 0.0
    complete: bool = True
    detail: dict[str, Any] = field(default_factory=dict)

    def fill(self, window: Window, peak_rss_mb: float, started: float) -> None:
        """Copy a measured window in."""
        self.events = window.events
        self.seconds = round(window.seconds, 3)
        self.events_per_s = round(window.rate, 1)
        self.cpu_percent = round(window.cpu_percent, 1)
        self.cpu_us_per_event = round(window.cpu_us_per_event, 1)
        self.peak_rss_mb = round(peak_rss_mb, 1)
        self.startup_s = round(window.wall_start - started, 2)

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


STARTUP_S = 120.0  # allowance from process start to the first event


def run_storestream(stack: DevStack, workload: Workload, tmp: Path, max_s: float, *,
                    name: str = "storestream",
                    extra_env: dict[str, str] | None = None,
                    keyless: bool = False) -> PeerResult:
    """storestream's own loyalty path: a real worker, timed through ``/metrics``
    (``extra_env``: settings of this run, e.g. ``PROCESSING_GUARANTEE``). ``keyless``: the
    purchases are produced without keys, so the worker forwards each through
    ``purchases.repartition`` (``REPARTITION=keyless``, the default) and counts it there;
    the window runs from the first lane batch on either topic to the last on either."""
    result = PeerResult(name)
    deployment = StoreDeployment(stack, tmp, "ss", partitions=workload.partitions,
                                 extra_env=extra_env)
    deployment.create_topics()
    result.produce_s = round(asyncio.run(produce_workload(
        stack.bootstrap, deployment.prefix, workload, keyless_purchases=keyless)), 2)
    counted_on = "purchases.repartition" if keyless else "purchases"
    log(f"{name}: {workload.events:,} purchases produced in {result.produce_s:.1f} s; "
        "starting the worker")
    worker = deployment.start_worker("tp")
    try:
        deadline = time.monotonic() + STARTUP_S + max_s
        window = Window()
        counted, last_log = 0, time.monotonic()
        first_count = 0
        while time.monotonic() < deadline:
            if not worker.alive():
                raise BenchError(f"worker exited:\n{worker.log_tail()}")
            cpu = worker.cpu_seconds()
            counts = worker.events(counted_on)
            stamp = time.time()
            counted = int(sum(counts.values()))
            if counted and not first_count:
                first_count = counted
                window.wall_start, window.cpu_start = stamp, cpu
            if counted >= workload.events or (first_count and stamp - window.wall_start >= max_s):
                window.wall_end, window.cpu_end = stamp, cpu
                window.events = counted - first_count
                timing = "metrics polls (first event seen -> all counted)"
                lane = lane_window(worker, "purchases")
                if keyless:
                    lane = spanning(lane, lane_window(worker, counted_on))
                if lane is not None and counted >= workload.events:
                    window, timing = lane, "self-reported (first lane batch -> last batch)"
                    window.events = counted
                result.fill(window, worker.memory_mb()[1], worker.started)
                result.complete = counted >= workload.events
                result.detail = {"outcomes": counts, "counted_at_first_poll": first_count,
                                 "timing": timing}
                break
            if time.monotonic() - last_log > 10:
                log(f"{name}: {counted:,}/{workload.events:,} purchases processed")
                last_log = time.monotonic()
            time.sleep(POLL_S)
        else:
            raise BenchError(f"{name} processed {counted:,} of {workload.events:,} "
                             f"purchases before the time limit")
    finally:
        worker.stop()
    return result


def lane_window(worker: Any, base_topic: str) -> Window | None:
    """The fast lane's self-reported busy window for a topic (``None`` without a lane)."""
    topic = worker.deployment.topic(base_topic)
    edges = [worker.metric(f"storestream_fast_lane_{name}", topic=topic) for name in (
        "first_batch_seconds", "last_batch_seconds",
        "first_batch_cpu_seconds", "last_batch_cpu_seconds")]
    if not all(edges):
        return None
    window = Window()
    window.wall_start, window.wall_end, window.cpu_start, window.cpu_end = edges
    return window


def spanning(first: Window | None, second: Window | None) -> Window | None:
    """The window from the earlier start to the later end of two lane windows (the process's
    CPU clock read at those two edges); ``None`` if either is missing."""
    if first is None or second is None:
        return None
    window = Window()
    window.wall_start, window.cpu_start = min((first.wall_start, first.cpu_start),
                                              (second.wall_start, second.cpu_start))
    window.wall_end, window.cpu_end = max((first.wall_end, first.cpu_end),
                                          (second.wall_end, second.cpu_end))
    return window


def _reporting_peer(name: str, argv: list[str], env: dict[str, str], stack: DevStack,
                    workload: Workload, tmp: Path, prefix: str, max_s: float,
                    extra_topics: list[Any] | None = None) -> PeerResult:
    """Produce a fresh copy of the purchases, run a peer process, read its own result line."""
    result = PeerResult(name)
    asyncio.run(create_topics(stack.bootstrap, [*peer_topics(prefix, workload.partitions),
                                                *(extra_topics or [])]))
    started = time.monotonic()
    asyncio.run(produce(stack.bootstrap, f"{prefix}purchases", workload.purchases))
    result.produce_s = round(time.monotonic() - started, 2)
    log(f"{name}: {workload.events:,} purchases produced in {result.produce_s:.1f} s; "
        "starting the peer")
    proc = Proc(name, argv, env, tmp / f"{prefix}{name}.log")
    try:
        report = proc.wait_result(STARTUP_S + max_s + 30)
    finally:
        proc.stop()
    window = Window(report["first_ts"], report["last_ts"], report["cpu_start"],
                    report["cpu_end"], int(report["events"]))
    result.fill(window, float(report["peak_rss_mb_self"]), proc.started)
    result.complete = bool(report.get("complete", True))
    result.detail = {"timing": "self-reported (first event -> last event processed)",
                     **{k: v for k, v in report.items() if k == "customers"}}
    return result


def run_aiokafka(stack: DevStack, workload: Workload, tmp: Path, max_s: float) -> PeerResult:
    """The plain aiokafka loop."""
    from app.dev.devstack import TopicSpec
    from bench.workload import COMPACT_TOPIC_CONFIG

    prefix = f"bench-plain-{uuid.uuid4().hex[:6]}."
    changelog = TopicSpec(f"{prefix}plain-state-changelog", workload.partitions,
                          COMPACT_TOPIC_CONFIG)
    argv = [sys.executable, "-m", "bench.plain_peer", "throughput", "--bootstrap",
            stack.bootstrap, "--prefix", prefix, "--expect", str(workload.events),
            "--max-seconds", str(max_s)]
    return _reporting_peer("aiokafka", argv, dict(os.environ), stack, workload, tmp, prefix,
                           max_s, [changelog])


def run_quix(stack: DevStack, workload: Workload, tmp: Path, max_s: float) -> PeerResult:
    """Quix Streams with RocksDB state and its changelog (skipped when not installed)."""
    if importlib.util.find_spec("quixstreams") is None:
        return PeerResult("quix", status="skipped",
                          detail={"reason": "quixstreams is not installed (bench extra)"})
    prefix = f"bench-quix-{uuid.uuid4().hex[:6]}."
    argv = [sys.executable, "-m", "bench.quix_peer", "--bootstrap", stack.bootstrap,
            "--prefix", prefix, "--expect", str(workload.events), "--max-seconds", str(max_s)]
    return _reporting_peer("quix", argv, dict(os.environ), stack, workload, tmp, prefix, max_s)


def run_faust(stack: DevStack, workload: Workload, tmp: Path, max_s: float) -> PeerResult:
    """A stock Faust worker (``bench.stock_faust_app``)."""
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench-faust-{tag}."
    datadir = tmp / f"faust-{tag}"
    datadir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BROKER_URL": stack.broker_url, "BENCH_APP_ID": f"bench-faust-{tag}",
           "BENCH_PREFIX": prefix, "BENCH_PARTITIONS": str(workload.partitions),
           "BENCH_EXPECT": str(workload.events), "BENCH_MAX_S": str(max_s),
           "BENCH_DATADIR": str(datadir),
           "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "faust", "-A", "bench.stock_faust_app", "worker",
            "-l", "info"]
    return _reporting_peer("faust", argv, env, stack, workload, tmp, prefix, max_s)


RUNNERS = {"storestream": run_storestream, "aiokafka": run_aiokafka, "quix": run_quix,
           "faust": run_faust, **kstreams_peer.runners()}


def run_all(stack: DevStack, workload: Workload, tmp: Path, max_s: float,
            peers: tuple[str, ...] = PEERS) -> dict[str, dict[str, Any]]:
    """Run every peer in turn; a failing peer is recorded with its error, not raised."""
    out: dict[str, dict[str, Any]] = {}
    for name in peers:
        log(f"throughput: {LABELS[name]} ...")
        try:
            result = RUNNERS[name](stack, workload, tmp, max_s)
        except Exception as exc:
            result = PeerResult(name, status="error", detail={"error": f"{exc}"[-2000:]})
            log(f"throughput: {name} FAILED: {exc}")
        else:
            if result.status == "ok":
                log(f"throughput: {name}: {result.events_per_s:,.0f} ev/s, "
                    f"{result.cpu_percent:.0f}% CPU, peak {result.peak_rss_mb:.0f} MB"
                    + ("" if result.complete else
                       f" ({result.events:,} events in the {max_s:.0f} s cap)"))
        out[name] = result.as_dict()
    return out
