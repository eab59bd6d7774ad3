"""Throughput: storestream's loyalty path and its peers on the same workload, measured alike.

Every run gets a fresh copy of the topics (own prefix), its own process and consumer group,
and consumes everything from the beginning. The window is the harness's, the same for every
peer (:mod:`bench.outside`): from the poll that finds the peer's group Stable (partitions
assigned) to the poll that finds every input offset committed, with every state change in the
peer's changelog, read back and checked against an oracle's totals (a peer with wrong totals
gets no figure). CPU is the process's ``/proc`` time over that window, peak RSS its VmHWM.
What a peer reports about itself (its first and last event) is kept in ``detail.self``.

Rows (:data:`PEERS`): storestream on ``memory://`` and ``rocksdb://`` with the recipe's path
(:data:`RECIPE_ENV`: returns and attribution off, lifetime tiers) and with returns and a
365-day tier window on (:data:`LOYALTY_ON_ENV`); a plain aiokafka loop; Quix Streams with its
memory and RocksDB stores; a stock Faust agent with two tables; Kafka Streams 4.4 in four variants.
Each run is capped (``max_s``): a peer not done by then gets no figure.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from app.dev.devstack import DevStack, TopicSpec, free_port
from bench import kstreams_peer, outside
from bench.deploy import Proc, StoreDeployment, StoreWorker, wait_until
from bench.outside import Outcome, Target, Totals
from bench.procstat import Window
from bench.workload import (
    COMPACT_TOPIC_CONFIG,
    Workload,
    create_topics,
    log,
    peer_topics,
    produce,
)

#: storestream's rows against the peers: the recipe's path (what the peers compute and more:
#: tier, stamps, baskets), the returns ledger and redemption attribution off, lifetime tiers.
RECIPE_ENV = {"RETURN_WINDOW_DAYS": "0", "REDEMPTION_WINDOW_S": "0"}
#: The loyalty programme on (issue 22): the returns ledger at its default (30 days) and a
#: 365-day rolling tier window; everything else as :data:`RECIPE_ENV` (redemption attribution,
#: issue 21's, off in both rows), so the two rows differ by returns and the window only.
LOYALTY_ON_ENV = {"REDEMPTION_WINDOW_S": "0", "TIER_WINDOW_DAYS": "365"}
LOYALTY_ON = "storestream_loyalty_on"
PEERS = ("storestream", "storestream-rocksdb", LOYALTY_ON, "aiokafka", "quix-memory", "quix",
         "faust", *kstreams_peer.VARIANTS)
LABELS = {
    "storestream": "storestream worker (memory://)",
    "storestream-rocksdb": "storestream worker (rocksdb://)",
    LOYALTY_ON: "storestream (memory://), returns + 365-d tiers on",
    "aiokafka": "plain aiokafka loop (dict)",
    "quix-memory": "Quix Streams (memory store)",
    "quix": "Quix Streams (RocksDB)",
    "faust": "stock Faust agent + 2 Tables (memory)",
    **kstreams_peer.LABELS,  # Kafka Streams 4.4: in-memory and RocksDB, cache as shipped and off
}
#: Row -> store class, for the side-by-side pairings.
STORE_CLASS = {
    "storestream": "memory", "storestream-rocksdb": "rocksdb", LOYALTY_ON: "memory",
    "aiokafka": "memory", "quix-memory": "memory", "quix": "rocksdb", "faust": "memory",
    **{name: store for name, (store, _) in kstreams_peer.VARIANTS.items()},
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

    def fill_outside(self, outcome: Outcome, events: int, started: float,
                     own: dict[str, Any] | None = None) -> None:
        """Copy the harness's window in (``own``: what the peer reported about itself)."""
        window = Window(outcome.start, outcome.end, outcome.cpu_start, outcome.cpu_end, events)
        self.fill(window, outcome.peak_rss_mb, started)
        if outcome.error is not None:
            self.status = "error"
        self.detail = {
            "timing": "outside: group Stable -> every input offset committed and every "
                      "change in the changelog (read back, totals checked)",
            **({"error": outcome.error} if outcome.error else {}),
            "totals_checked": outcome.error is None,
            "commits_to_changelog_s": outcome.changelog_lag_s,
            "changelog_records": outcome.changelog_records, **outcome.detail,
            **({"self": own} if own else {}),
        }
        if own and own.get("first_ts"):
            self.detail["stable_to_first_event_s"] = round(own["first_ts"] - outcome.start, 3)

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


STARTUP_S = 120.0  # allowance from process start to the group's first assignment
CLOSE_S = 90.0  # allowance for the last commits and the changelog read-back

_EXPECTED: dict[tuple[int, str], Totals] = {}


def expected(workload: Workload, as_of: bool) -> Totals:
    """The oracle's totals for this workload (computed once per kind)."""
    key = (id(workload), "as_of" if as_of else "static")
    if key not in _EXPECTED:
        _EXPECTED[key] = (outside.expected_as_of if as_of else outside.expected_static)(workload)
    return _EXPECTED[key]


def input_ends(topic: str, ends: dict[int, int]) -> dict[TopicPartition, int]:
    """The producer's acknowledged ends of ``topic``, by :class:`TopicPartition`."""
    return {TopicPartition(topic, p): end for p, end in ends.items()}


def _watch(start: Callable[[], Proc], target: Target, stack: DevStack, workload: Workload,
           max_s: float, result: PeerResult) -> PeerResult:
    """Start one peer once the harness watches, measure it from outside, stop it, fill
    ``result``."""
    launch = outside.Launch(start)
    try:
        outcome = outside.measure(stack.bootstrap, target, launch,
                                  STARTUP_S + max_s + CLOSE_S,
                                  timed_changelog=stack.broker == "kafka")
        proc = launch.proc
        assert proc is not None
        own = proc.result()
        if own is None and isinstance(proc, StoreWorker) and proc.alive():
            first = proc.metric("storestream_fast_lane_first_batch_seconds")
            own = {"first_ts": first} if first else None
    finally:
        if launch.proc is not None:
            launch.proc.stop()
    result.fill_outside(outcome, workload.events, proc.started, own)
    return result


def run_storestream(stack: DevStack, workload: Workload, tmp: Path, max_s: float, *,
                    name: str = "storestream",
                    extra_env: dict[str, str] | None = None,
                    keyless: bool = False, store: str = "memory://",
                    base_env: dict[str, str] | None = None) -> PeerResult:
    """storestream's own loyalty path: a real worker (``extra_env``: settings of this run on
    top of ``base_env``, :data:`RECIPE_ENV` unless given, e.g. ``PROCESSING_GUARANTEE``).
    ``keyless``: the purchases are produced without keys, so the worker forwards each through
    ``purchases.repartition`` (``REPARTITION=keyless``, the default) and counts it there: both
    topics' offsets must be committed."""
    result = PeerResult(name)
    deployment = StoreDeployment(stack, tmp, "ss", partitions=workload.partitions,
                                 extra_env={**(RECIPE_ENV if base_env is None else base_env),
                                            "APP_STORE": store,
                                            **(extra_env or {})})
    deployment.create_topics()
    app_id = deployment.env["APP_ID"]
    stale = load_catalogue(stack, deployment, workload)
    started = time.monotonic()
    ends: dict[int, int] = {}
    asyncio.run(produce(stack.bootstrap, deployment.topic("purchases"), workload.purchases,
                        keyless=keyless, ends=ends))
    result.produce_s = round(time.monotonic() - started, 2)
    log(f"{name}: {workload.events:,} purchases produced in {result.produce_s:.1f} s; "
        "starting the worker")
    inputs = [deployment.topic("purchases")]
    if keyless:
        inputs.append(deployment.topic("purchases.repartition"))

    def changelogs(topics: Any) -> list[str]:
        return sorted(t for t in topics if t.startswith((app_id, deployment.prefix))
                      and t.endswith(("-spend-changelog", "-stamps-changelog")))

    target = Target(app_id, inputs, changelogs, outside.decode_storestream,
                    expected(workload, as_of=True), changelog_count=2,
                    input_ends={} if keyless else input_ends(inputs[0], ends),
                    stale_members=stale)
    result = _watch(lambda: deployment.start_worker("tp"), target, stack, workload, max_s,
                    result)
    result.detail["settings"] = {k: v for k, v in deployment.env.items()
                                 if k in {*RECIPE_ENV, *LOYALTY_ON_ENV, "APP_STORE",
                                          "PROCESSING_GUARANTEE", *(extra_env or {})}}
    return result


def load_catalogue(stack: DevStack, deployment: StoreDeployment,
                   workload: Workload) -> frozenset[str]:
    """Give the deployment its catalogue as a running shop has it: produce the products, run a
    worker until it has processed every product event, stop it (which flushes its catalogue
    changelog). (The peers have
    their prices compiled in; a worker started on a backlog of purchases and products at once
    settles early purchases before it knows their prices: unpriced, wrong totals.) Returns
    that worker's member ids in the group."""
    asyncio.run(produce(stack.bootstrap, deployment.topic("products"), workload.products))
    app_id = deployment.env["APP_ID"]
    worker = deployment.start_worker("catalogue")
    try:
        wait_until("every product event processed", lambda: worker.healthy() and (
            sum(worker.events("products").values()) >= len(workload.products)),
            STARTUP_S, 0.5)
        stale = outside.members(stack.bootstrap, app_id)
    finally:
        worker.stop()
    deployment.workers.remove(worker)
    return stale


def _prepared_peer(name: str, argv: list[str], env: dict[str, str], stack: DevStack,
                  workload: Workload, tmp: Path, prefix: str,
                  extra_topics: list[Any] | None = None,
                  ) -> tuple[PeerResult, Callable[[], Proc], dict[TopicPartition, int]]:
    """Produce a fresh copy of the purchases; how to start the peer, the input's ends."""
    result = PeerResult(name)
    asyncio.run(create_topics(stack.bootstrap, [*peer_topics(prefix, workload.partitions),
                                                *(extra_topics or [])]))
    started = time.monotonic()
    ends: dict[int, int] = {}
    asyncio.run(produce(stack.bootstrap, f"{prefix}purchases", workload.purchases, ends=ends))
    result.produce_s = round(time.monotonic() - started, 2)
    log(f"{name}: {workload.events:,} purchases produced in {result.produce_s:.1f} s; "
        "starting the peer")
    return (result, lambda: Proc(name, argv, env, tmp / f"{prefix}{name}.log"),
            input_ends(f"{prefix}purchases", ends))


def run_aiokafka(stack: DevStack, workload: Workload, tmp: Path, max_s: float) -> PeerResult:
    """The plain aiokafka loop."""
    prefix = f"bench-plain-{uuid.uuid4().hex[:6]}."
    changelog = f"{prefix}plain-state-changelog"
    argv = [sys.executable, "-m", "bench.plain_peer", "throughput", "--bootstrap",
            stack.bootstrap, "--prefix", prefix, "--expect", str(workload.events),
            "--max-seconds", str(max_s)]
    result, start, ends = _prepared_peer("aiokafka", argv, dict(os.environ), stack, workload, tmp,
                                 prefix, [TopicSpec(changelog, workload.partitions,
                                                    COMPACT_TOPIC_CONFIG)])
    target = Target(f"{prefix}plain", [f"{prefix}purchases"],
                    lambda topics: [t for t in topics if t == changelog],
                    outside.decode_pair, expected(workload, as_of=False), input_ends=ends)
    return _watch(start, target, stack, workload, max_s, result)


def run_quix(stack: DevStack, workload: Workload, tmp: Path, max_s: float, *,
             store: str = "rocksdb", name: str = "quix") -> PeerResult:
    """Quix Streams with its RocksDB (or memory) store and changelog (skipped when not
    installed)."""
    if importlib.util.find_spec("quixstreams") is None:
        return PeerResult(name, status="skipped",
                          detail={"reason": "quixstreams is not installed (bench extra)"})
    prefix = f"bench-quix-{uuid.uuid4().hex[:6]}."
    argv = [sys.executable, "-m", "bench.quix_peer", "--bootstrap", stack.bootstrap,
            "--prefix", prefix, "--expect", str(workload.events), "--max-seconds", str(max_s),
            "--store", store]
    result, start, ends = _prepared_peer(name, argv, dict(os.environ), stack, workload, tmp, prefix)
    target = Target(f"{prefix}quix", [f"{prefix}purchases"],
                    lambda topics: [t for t in topics if t.startswith(f"changelog__{prefix}quix")],
                    outside.decode_quix, expected(workload, as_of=False), input_ends=ends)
    return _watch(start, target, stack, workload, max_s, result)


def run_quix_memory(stack: DevStack, workload: Workload, tmp: Path,
                    max_s: float) -> PeerResult:
    """Quix Streams with its memory store."""
    return run_quix(stack, workload, tmp, max_s, store="memory", name="quix-memory")


def run_faust(stack: DevStack, workload: Workload, tmp: Path, max_s: float) -> PeerResult:
    """A stock Faust worker (``bench.stock_faust_app``)."""
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench-faust-{tag}."
    app_id = f"bench-faust-{tag}"
    datadir = tmp / f"faust-{tag}"
    datadir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BROKER_URL": stack.broker_url, "BENCH_APP_ID": app_id,
           "BENCH_PREFIX": prefix, "BENCH_PARTITIONS": str(workload.partitions),
           "BENCH_EXPECT": str(workload.events), "BENCH_MAX_S": str(max_s),
           "BENCH_DATADIR": str(datadir),
           "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "faust", "-A", "bench.stock_faust_app", "worker",
            "-l", "info", "--web-port", str(free_port())]  # it binds one even with web off
    # Faust's own topics are created here, as it would (compacted changelogs with the source's
    # partitions, the one-partition assignor topic), and known to the broker's metadata before
    # it starts: stock Faust subscribes right after creating them, and on a loaded host a
    # changelog missing from that first metadata crashed its agent (PartitionsMismatch, 0
    # partitions) and stalled it for the rest of the window.
    names = {f"{app_id}-spend-changelog", f"{app_id}-coffee-changelog"}
    own = [*(TopicSpec(name, workload.partitions, COMPACT_TOPIC_CONFIG) for name in sorted(names)),
           TopicSpec(f"{app_id}-__assignor-__leader", 1, COMPACT_TOPIC_CONFIG)]
    result, start, ends = _prepared_peer("faust", argv, env, stack, workload, tmp, prefix, own)
    target = Target(app_id, [f"{prefix}purchases"],
                    lambda topics: sorted(t for t in topics if t in names),
                    outside.decode_two_tables(outside.json_number),
                    expected(workload, as_of=False), changelog_count=2, input_ends=ends)
    return _watch(start, target, stack, workload, max_s, result)


def run_loyalty_on(stack: DevStack, workload: Workload, tmp: Path, max_s: float) -> PeerResult:
    """storestream with the returns ledger, attribution and a 365-day tier window on."""
    return run_storestream(stack, workload, tmp, max_s, name=LOYALTY_ON,
                           base_env={}, extra_env=LOYALTY_ON_ENV)


def run_storestream_rocksdb(stack: DevStack, workload: Workload, tmp: Path,
                            max_s: float) -> PeerResult:
    """storestream with ``APP_STORE=rocksdb://``."""
    return run_storestream(stack, workload, tmp, max_s, name="storestream-rocksdb",
                           store="rocksdb://")


RUNNERS = {"storestream": run_storestream, "storestream-rocksdb": run_storestream_rocksdb,
           LOYALTY_ON: run_loyalty_on, "aiokafka": run_aiokafka, "quix": run_quix,
           "quix-memory": run_quix_memory, "faust": run_faust, **kstreams_peer.runners()}


def run_all(stack: DevStack, workload: Workload, tmp: Path, max_s: float,
            peers: tuple[str, ...] = PEERS, runs: int = 1,
            progress: Callable[[dict[str, list[dict[str, Any]]]], None] | None = None,
            ) -> dict[str, dict[str, Any]]:
    """``runs`` rounds, every peer once per round in turn (so a change in the host's load
    spreads over all of them); a failing run is recorded with its error, not raised. Each
    peer's row is :func:`summarise` of its runs. ``progress`` gets every run so far after
    each one (``bench.run`` saves them, so a long run interrupted keeps what it measured)."""
    done: dict[str, list[dict[str, Any]]] = {name: [] for name in peers}
    total = runs * len(peers)
    began = time.monotonic()
    for round_ in range(runs):
        for name in peers:
            step = round_ * len(peers) + peers.index(name) + 1
            left = (time.monotonic() - began) / max(1, step - 1) * (total - step + 1) / 60
            eta = "" if step == 1 else f" (about {left:.0f} min to go)"
            log(f"throughput [{step}/{total}] run {round_ + 1}/{runs}: {LABELS[name]} ...{eta}")
            try:
                result = RUNNERS[name](stack, workload, tmp, max_s)
            except Exception as exc:
                result = PeerResult(name, status="error", detail={"error": f"{exc}"[-2000:]})
                log(f"throughput: {name} FAILED: {exc}")
            else:
                if result.status == "ok":
                    log(f"throughput: {name}: {result.events_per_s:,.0f} ev/s over "
                        f"{result.seconds:.1f} s, {result.cpu_percent:.0f}% CPU, peak "
                        f"{result.peak_rss_mb:.0f} MB, totals checked")
                else:
                    log(f"throughput: {name}: {result.status}: "
                        f"{result.detail.get('error') or result.detail.get('reason')}")
            done[name].append(result.as_dict())
            if progress is not None:
                progress(done)
    return {name: summarise(name, results) for name, results in done.items()}


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from a peer's runs: the median run's figures with the min and max events/s;
    no figure at all when any run failed or had wrong totals."""
    bad = [r for r in runs if r["status"] != "ok"]
    if bad:
        worst = next((r for r in bad if r["status"] == "error"), bad[0])
        return {**PeerResult(name, status=worst["status"], detail=worst["detail"]).as_dict(),
                "runs": runs}
    ranked = sorted(runs, key=lambda r: float(r["events_per_s"]))
    median = ranked[(len(ranked) - 1) // 2] if len(ranked) % 2 else None
    row = dict(median if median is not None else ranked[len(ranked) // 2])
    if median is None:  # an even count: the mean of the middle two rates
        middle = ranked[len(ranked) // 2 - 1: len(ranked) // 2 + 1]
        row["events_per_s"] = round(sum(float(r["events_per_s"]) for r in middle) / 2, 1)
    rates = [float(r["events_per_s"]) for r in runs]
    row.update(
        min_events_per_s=min(rates), max_events_per_s=max(rates),
        runs=runs, run_count=len(runs),
        cpu_us_per_event=sorted(float(r["cpu_us_per_event"]) for r in runs)[len(runs) // 2],
        peak_rss_mb=max(float(r["peak_rss_mb"]) for r in runs),
    )
    return row
