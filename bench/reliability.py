"""Fault injection against a real broker, checked against the input log.

``python -m bench.reliability [--quick] [--broker kafka|tansu] [--json PATH] [--seed N]
[--keep-logs] [--cluster 3]`` (``make reliability``, ``make reliability BROKER=tansu``;
``--cluster 3``, ``make reliability CLUSTER=3``: three KRaft nodes, broker, controller, pause
and network faults, :mod:`bench.cluster_faults`) starts its own
broker (Apache Kafka, one KRaft node, by default; the embedded Tansu with ``--broker
tansu``) and redis, two real ``faust -A app worker`` processes of one deployment, and then,
while purchases, malformed events and shopper positions are produced over time, SIGKILLs
and SIGTERMs random workers
at random moments (the whole process group), restarting each victim at once (same app id,
its own data dir and web port). When everything has been produced and both workers are
ready again, it checks, by state rather than by counters (a restarted worker's counters
start from zero, and redeliveries count as ``duplicate``):

* every customer's ``/customers/{id}/`` (asked of either worker: routing finds the owner)
  against a reference computed from the input log by the pure rules in ``core.loyalty``,
  and the purchase count in ``/table/spend/{id}/`` (lost / counted twice);
* the ``dead-letters`` topic, read fully: one dead letter per malformed event, exactly;
* the offers path: ``customers.promotions`` read fully (no (customer, promotion, sku)
  offered twice within the cooldown, every offer a pure replay of the positions predicts,
  none to opted-out customers or below a promotion's tier) and the Redis ``offers`` stream
  (each distinct offer pushed exactly once);
* restart -> ``/health`` 200 time for every restart;

then runs a web load test against both workers (half of the requests for customers the
other worker owns). It prints progress lines (every fault with its time and target), a
figure table, writes the figures as JSON (``bench/results/reliability.json``,
``reliability-quick.json`` with ``--quick``) and exits 1 when a figure that must be zero is
not (2 when the run itself could not be carried out).
Worker logs are kept (path printed) when something failed or with ``--keep-logs``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import redis.asyncio as redis_async
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from app.broker.topology import topic_specs
from app.dev.devstack import DevStack, ensure_topics, free_port
from app.dev.producer import MAX_REQUEST_BYTES, encode
from bench.deploy import add_broker_argument, bench_stack
from core import sample, simulation
from core.geo import DisplayIndex, parse_display
from core.loyalty import LoyaltyRules, Purchase, customer_document, replay
from core.money import to_cents
from core.offers import (
    CooldownState,
    PositionSource,
    PromotionIndex,
    decide_offers,
    parse_promotion,
    parse_tier,
)
from core.poison import poison_pills
from core.pricing import PriceHistory, with_price
from core.tiers import Tier
from tests.integration.harness import ROOT, Deployment, Worker

RESULTS = ROOT / "bench" / "results"
TOKEN = "reliability-token"
#: Event time of the first synthetic purchase: after every catalogue change of the sample.
PURCHASE_TS0 = sample.BASE_TS + 1_000
#: Event-time gap between purchases: 20,000 purchases span > 2 days, so the lateness window
#: (1 day) passes and catalogue-priced purchases get settled, not only held pending.
PURCHASE_GAP_S = 10.0
POSITION_TS0 = sample.BASE_TS + 5_000_000
UNKNOWN_PRODUCT = "gift-card"  # never in the catalogue: counted, unpriced
#: Mostly cheap products, so customers end up in every tier (tier-gated offers are checked).
PRODUCT_WEIGHTS = {"coffee": 50, "tea": 25, "dog": 1, "cat": 1, "beret": 6, "handbag": 1,
                   UNKNOWN_PRODUCT: 1}


@dataclass(frozen=True, slots=True)
class Plan:
    """Size of a run."""

    mode: str
    partitions: int
    customers: int
    purchases: int
    produce_s: float  # purchases, bad events and positions are spread over this window
    sigkills: int
    sigterms: int
    bad_rounds: int  # one malformed event of every kind per round
    shoppers: int
    positions_per_s: float
    cooldown_s: float
    load_clients: int
    load_s: float
    settle_s: float  # longest wait for the state to match after the last fault
    recovery_timeout_s: float  # a restart not ready by then counts as never ready
    progress_every_s: float


FULL = Plan("full", partitions=8, customers=500, purchases=20_000, produce_s=300,
            sigkills=10, sigterms=5, bad_rounds=56, shoppers=300, positions_per_s=40,
            cooldown_s=60, load_clients=50, load_s=30, settle_s=240,
            recovery_timeout_s=180, progress_every_s=10)
QUICK = Plan("quick", partitions=4, customers=100, purchases=1_500, produce_s=30,
             sigkills=2, sigterms=1, bad_rounds=6, shoppers=40, positions_per_s=20,
             cooldown_s=60, load_clients=10, load_s=5, settle_s=60,
             recovery_timeout_s=60, progress_every_s=5)


# ----------------------------------------------------------------------------- inputs


@dataclass(slots=True)
class Record:
    """One produced record and where it landed."""

    topic: str  # base (unprefixed) topic
    key: str | bytes | None
    value: Any
    kind: str  # purchase, user, product, display, promotion, position, or a poison kind
    bad: bool = False
    due: float = 0.0  # fraction of the production window at which it is sent
    partition: int = -1
    offset: int = -1
    error: str | None = None

    @property
    def placed(self) -> bool:
        return self.offset >= 0


@dataclass(slots=True)
class Inputs:
    """Everything a run produces, in order: setup first, then the timed stream."""

    customers: list[str]
    opted_out: set[str]
    setup: list[Record]
    stream: list[Record]

    def all(self) -> list[Record]:
        return self.setup + self.stream

    def of_kind(self, kind: str) -> list[Record]:
        return [r for r in self.all() if r.kind == kind]


def _spread(rnd: random.Random, records: list[Record]) -> None:
    """Give a stream's records increasing due times over [0, 1), randomly jittered."""
    n = len(records)
    for index, record in enumerate(records):
        record.due = (index + rnd.random()) / n


def build_inputs(plan: Plan, seed: int) -> Inputs:
    """Deterministic inputs for ``plan``: catalogue, customers, store, and the timed stream."""
    rnd = random.Random(seed)
    customers = [f"c{n:04d}" for n in range(plan.customers)]
    opted_out = {c for n, c in enumerate(customers) if n % 25 == 3}
    setup = [Record(e.topic, e.key, e.value, "product")
             for e in sample.recipe_events() if e.topic == "products"]
    setup += [Record("users", c, {"user_id": c, "name": f"Customer {c}", "opt_out": c in opted_out},
                     "user") for c in customers]
    setup += [Record("stores.products", d.sku, d.record(), "display")
              for d in simulation.floor_plan()]
    setup += [Record("products.promotions", p["pid"], p, "promotion")
              for p in simulation.promotions()]

    products, weights = zip(*PRODUCT_WEIGHTS.items(), strict=True)
    purchases = []
    for number in range(plan.purchases):
        user = rnd.choice(customers)
        event: dict[str, Any] = {"user_id": user, "product_id": rnd.choices(products, weights)[0],
                                 "purchase_id": f"p{number:06d}",
                                 "ts": PURCHASE_TS0 + number * PURCHASE_GAP_S}
        if rnd.random() < 0.2:
            event["price"] = round(rnd.uniform(0, 20), 2)
        purchases.append(Record("purchases", user, event, "purchase"))

    bad = [Record(p.topic, p.key, p.value, p.kind, bad=True)
           for round_ in range(plan.bad_rounds) for p in poison_pills(round_)]
    rnd.shuffle(bad)

    walk = simulation.StoreWalk(plan.shoppers, seed=seed)
    for shopper, uid in zip(walk.shoppers, customers, strict=False):
        shopper.uid = uid
    count = int(plan.positions_per_s * plan.produce_s)
    positions = [Record("customers.locations", p["uid"], p, "position")
                 for p in itertools.islice(walk.positions(plan.positions_per_s, POSITION_TS0),
                                           count)]
    for part in (purchases, bad, positions):
        _spread(rnd, part)
    stream = sorted(purchases + bad + positions, key=lambda r: r.due)
    return Inputs(customers, opted_out, setup, stream)


# -------------------------------------------------------------------------- reference


def reference_documents(inputs: Inputs, rules: LoyaltyRules) -> dict[str, dict[str, Any]]:
    """Every customer's ``/customers/{id}/`` document, from the input log and the pure rules."""
    prices: dict[str, PriceHistory] = {}
    for record in inputs.of_kind("product"):
        v = record.value
        prices[v["product_id"]] = with_price(prices.get(v["product_id"], ()), v["ts"],
                                             to_cents(v["price"]))

    def catalogue(product_id: str) -> PriceHistory:
        return prices.get(product_id, ())

    by_user: dict[str, list[Record]] = defaultdict(list)
    for record in inputs.of_kind("purchase"):
        if record.placed:
            by_user[record.value["user_id"]].append(record)
    docs = {}
    for user in inputs.customers:  # every customer has a profile, so a document
        ordered = sorted(by_user.get(user, []), key=lambda r: (r.partition, r.offset))
        purchases = [Purchase(user, r.value["product_id"], r.value["ts"],
                              None if r.value.get("price") is None else to_cents(r.value["price"]))
                     for r in ordered]
        spend, stamps, basket, _ = replay(purchases, catalogue, rules)
        docs[user] = customer_document(user, spend, stamps, basket, catalogue, rules)
    return docs


def reference_offers(inputs: Inputs, radius_m: float, cooldown_s: float,
                     topic: str) -> dict[str, tuple[str, str, str, float]]:
    """Offers of promotions without a tier gate, by id, replaying the positions (read from
    ``topic``, the prefixed locations topic) as the agent does (tier-gated ones depend on when
    purchases were processed, so they are checked against the final tier instead)."""
    displays = DisplayIndex()
    for record in inputs.of_kind("display"):
        displays.upsert(parse_display(record.value))
    promotions = PromotionIndex()
    for record in inputs.of_kind("promotion"):
        promotion = parse_promotion(record.value)
        if promotion.min_tier is None:
            promotions.upsert(promotion)
    state: dict[str, CooldownState] = defaultdict(CooldownState)
    expected: dict[str, tuple[str, str, str, float]] = {}
    positions = sorted((r for r in inputs.of_kind("position") if r.placed),
                       key=lambda r: (r.partition, r.offset))
    for record in positions:
        p = record.value
        uid = p["uid"]
        last = state[uid]
        source = PositionSource(topic, record.partition, record.offset)
        offers = decide_offers(uid, p["lat"], p["lon"], p["ts"],
                               opted_out=uid in inputs.opted_out, tier=None,
                               displays=displays, promotions=promotions,
                               last_offered=last.windows, radius_m=radius_m,
                               cooldown_s=cooldown_s, source=source,
                               redelivered=last.redelivers(source))
        if offers:
            state[uid] = last.after(offers, source, p["ts"], cooldown_s)
        for offer in offers:
            expected[offer.offer_id] = (offer.uid, offer.pid, offer.sku, offer.ts)
    return expected


# ---------------------------------------------------------------------------- workers


class BenchWorker(Worker):
    """A harness ``Worker`` on a fixed web port, logging each incarnation to its own file."""

    def __init__(self, deployment: Deployment, slot: str, port: int, incarnation: int,
                 extra_env: dict[str, str] | None = None,
                 wrap: Callable[[list[str]], list[str]] | None = None) -> None:
        self.deployment = deployment
        self.name = f"{slot}#{incarnation}"
        self.port = port
        datadir = deployment.tmp / f"data-{slot}"
        datadir.mkdir(parents=True, exist_ok=True)
        self.log_path = deployment.tmp / f"{slot}.{incarnation}.log"
        env = {**deployment.env, "WEB_PORT": str(port), "APP_DATADIR": str(datadir),
               **(extra_env or {})}
        argv = [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"]
        self._log = open(self.log_path, "wb")  # noqa: SIM115  closed by kill()/stop()
        self.process = subprocess.Popen(
            wrap(argv) if wrap is not None else argv,
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: killpg reaches the whole worker
        )

    def kill(self, sig: int, grace_s: float) -> tuple[float, bool]:
        """Signal the process group; returns (seconds until it exited, escalated to SIGKILL)."""
        started = time.monotonic()
        escalated = False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            escalated = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        # a SIGKILLed leader leaves nothing behind only if the group went with it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()
        return time.monotonic() - started, escalated


class Slot:
    """One of the deployment's workers: a name, a web port and a data dir kept across restarts.

    ``host`` is where its web server answers; ``extra_env`` and ``wrap`` (an argv rewriter,
    e.g. to run it in a network namespace) apply to every incarnation.
    """

    def __init__(self, deployment: Deployment, name: str, host: str = "127.0.0.1",
                 extra_env: dict[str, str] | None = None,
                 wrap: Callable[[list[str]], list[str]] | None = None) -> None:
        self.deployment = deployment
        self.name = name
        self.host = host
        self.extra_env = extra_env
        self.wrap = wrap
        self.port = free_port()
        self.incarnation = -1
        self.worker: BenchWorker | None = None
        self.busy = False  # being killed/restarted by the fault injector

    def start(self) -> BenchWorker:
        self.incarnation += 1
        self.worker = BenchWorker(self.deployment, self.name, self.port, self.incarnation,
                                  self.extra_env, self.wrap)
        return self.worker

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(slots=True)
class Restart:
    """One fault and its restart."""

    worker: str
    signal: str
    at_s: float  # since the faults began
    old_pid: int
    new_pid: int
    exit_s: float  # signal -> process gone
    escalated: bool  # SIGTERM did not stop it within the grace period
    recovery_s: float | None = None  # restart -> /health 200
    outcome: str = "pending"  # ready, killed before ready, exited, timeout


# ------------------------------------------------------------------------------ kafka


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str, timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        partitions = consumer.partitions_for_topic(topic) or set()
        if partitions or time.monotonic() > deadline:
            return partitions
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.2)


async def read_topic(bootstrap: str, topic: str, *, at_least: int = 0, timeout: float = 60.0,
                     quiet_s: float = 1.5, isolation: str = "read_uncommitted") -> list[Any]:
    """Every record of ``topic``, from the start of every partition.

    Reads until at least ``at_least`` records arrived, every partition is past the end offset
    reported when reading began, and nothing new came for ``quiet_s`` (the embedded broker's
    end offsets can be low, DESIGN section 7), or until ``timeout``. Under exactly_once read
    with ``isolation="read_committed"``: aborted transactions' records are not output.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level=isolation,
                                max_partition_fetch_bytes=MAX_REQUEST_BYTES)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        tps = [TopicPartition(topic, p)
               for p in sorted(await topic_partitions(consumer, topic, timeout))]
        consumer.assign(tps)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=250)
            for records in batch.values():
                out.extend(records)
                if records:
                    last_new = time.monotonic()
            at_end = True
            for tp in tps:
                at_end = at_end and await consumer.position(tp) >= ends[tp]
            if at_end and len(out) >= at_least and time.monotonic() - last_new >= quiet_s:
                break
        return out
    finally:
        await consumer.stop()


async def group_lag_by_partition(
    bootstrap: str, group: str, ends: dict[TopicPartition, int]
) -> dict[TopicPartition, int] | None:
    """Per partition of ``ends``: records not yet committed by the group (``None``: unknown)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        # the partitions must be named: the embedded broker's answer for "all" fails to parse
        committed = await admin.list_consumer_group_offsets(group, partitions=list(ends))
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    lags: dict[TopicPartition, int] = {}
    for tp, end in ends.items():
        meta = committed.get(tp)
        done = meta.offset if meta is not None and meta.offset >= 0 else 0
        lags[tp] = max(0, end - done)
    return lags


async def group_lag(bootstrap: str, group: str, ends: dict[TopicPartition, int]) -> int | None:
    """Records of ``ends`` not yet committed by the consumer group (``None``: unknown)."""
    lags = await group_lag_by_partition(bootstrap, group, ends)
    return None if lags is None else sum(lags.values())


async def describe_group(bootstrap: str, group: str) -> dict[str, Any]:
    """The broker's view of the consumer group (state, protocol, members)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        (response, *_) = await admin.describe_consumer_groups([group])
        _, _, state, _, protocol, members = response.groups[0][:6]
        return {"state": state, "protocol": protocol, "members": [m[0] for m in members]}
    except Exception as exc:
        return {"error": repr(exc)}
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


# ------------------------------------------------------------------------------- run


def metric(text: Any, name: str, **labels: str) -> float:
    """Sum of the Prometheus series ``name`` matching ``labels`` in a ``/metrics`` text."""
    total = 0.0
    for line in str(text).splitlines():
        if line.startswith((name + "{", name + " ")) and all(
                f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Run:
    """One fault-injection run."""

    def __init__(self, plan: Plan, seed: int, stack: DevStack, run_dir: Path,
                 worker_env: dict[str, str] | None = None) -> None:
        self.plan = plan
        self.seed = seed
        self.rnd = random.Random(seed)
        self.stack = stack
        self.run_dir = run_dir
        self.deployment = Deployment(stack, run_dir, partitions=plan.partitions, token=TOKEN,
                                     extra_env={"OFFER_COOLDOWN_S": str(plan.cooldown_s),
                                                **(worker_env or {})})
        self.settings = self.deployment.settings
        self.group = self.settings.app_id
        self.slots = self.make_slots()
        self.inputs = build_inputs(plan, seed)
        self.restarts: list[Restart] = []
        self.trackers: list[asyncio.Task[None]] = []
        self.unexpected_exits: list[str] = []
        self.t0 = time.monotonic()
        self.faults_t0 = 0.0
        self.phase = "setup"
        self.sent = 0
        self.placed = 0
        self.failed = 0
        self.figures: dict[str, Any] = {}
        self.session: aiohttp.ClientSession | None = None

    @property
    def isolation(self) -> str:
        """How the checks read output topics: committed records only under exactly_once."""
        return ("read_committed" if self.settings.processing_guarantee == "exactly_once"
                else "read_uncommitted")

    def make_slots(self) -> list[Slot]:
        """The deployment's workers (two on loopback here)."""
        return [Slot(self.deployment, "w1"), Slot(self.deployment, "w2")]

    def producer_options(self) -> dict[str, Any]:
        """Settings of the input producer beyond the bootstrap servers."""
        return {"linger_ms": 20, "acks": "all", "max_request_size": MAX_REQUEST_BYTES}

    # -- output
    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {message}", flush=True)

    # -- http
    async def get(self, port: int, path: str, timeout: float = 10.0) -> tuple[int, Any]:
        assert self.session is not None
        try:
            host = next((s.host for s in self.slots if s.port == port), "127.0.0.1")
            async with self.session.get(f"http://{host}:{port}{path}",
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                raw = await resp.read()
                if "json" in (resp.headers.get("Content-Type") or ""):
                    return resp.status, orjson.loads(raw)
                return resp.status, raw.decode("utf-8", errors="replace")
        except (TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError):
            return 0, None

    async def ready(self, slot: Slot) -> bool:
        return (await self.get(slot.port, "/health", timeout=3.0))[0] == 200

    async def wait_until(self, what: str, check: Callable[[], Any], timeout: float,
                         interval: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = await check()
            if last:
                return last
            await asyncio.sleep(interval)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")

    # -- producing
    def _landed(self, record: Record, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            record.error = "cancelled"
        elif future.exception() is not None:
            record.error = repr(future.exception())
        else:
            meta = future.result()
            record.partition, record.offset = meta.partition, meta.offset
        if record.error:
            self.failed += 1
        else:
            self.placed += 1

    async def send(self, producer: AIOKafkaProducer, record: Record) -> asyncio.Future[Any]:
        key = record.key.encode() if isinstance(record.key, str) else record.key
        future: asyncio.Future[Any] = await producer.send(
            self.deployment.topic(record.topic), encode(record.value), key=key)
        future.add_done_callback(lambda f: self._landed(record, f))
        self.sent += 1
        return future

    async def produce_all(self, producer: AIOKafkaProducer, records: list[Record]) -> None:
        futures = [await self.send(producer, r) for r in records]
        await asyncio.gather(*futures, return_exceptions=True)

    async def produce_over(self, producer: AIOKafkaProducer, records: list[Record],
                           window_s: float) -> None:
        """Send ``records`` paced by their due times over ``window_s`` seconds."""
        start = time.monotonic()
        futures = []
        index = 0
        while index < len(records):
            now = (time.monotonic() - start) / window_s
            while index < len(records) and records[index].due <= now:
                futures.append(await self.send(producer, records[index]))
                index += 1
            await asyncio.sleep(0.02)
        await asyncio.gather(*futures, return_exceptions=True)

    # -- faults
    async def kill_and_restart(self, slot: Slot, sig: int, was_ready: bool = True) -> None:
        worker = slot.worker
        assert worker is not None
        slot.busy = True
        try:
            at = time.monotonic() - self.faults_t0
            old_pid = worker.process.pid
            exit_s, escalated = await asyncio.to_thread(worker.kill, sig, 30.0)
            started = time.monotonic()
            new = slot.start()
            restart = Restart(slot.name, signal.Signals(sig).name, round(at, 1), old_pid,
                              new.process.pid, round(exit_s, 2), escalated)
            self.restarts.append(restart)
            self.trackers.append(asyncio.create_task(self.track(restart, new, slot, started)))
        finally:
            slot.busy = False
        kills = Counter(r.signal for r in self.restarts)
        total = self.plan.sigkills + self.plan.sigterms
        self.say(f"{self.phase}: FAULT {len(self.restarts)}/{total} at {restart.at_s:.1f} s: "
                 f"{restart.signal} to {worker.name} (pid {old_pid}, "
                 f"{'ready' if was_ready else 'still recovering'}), gone in {exit_s:.1f} s"
                 f"{', escalated to SIGKILL' if escalated else ''} -> restarted as "
                 f"{new.name} (pid {new.process.pid}); so far {kills['SIGKILL']} SIGKILL, "
                 f"{kills['SIGTERM']} SIGTERM")

    async def track(self, restart: Restart, worker: BenchWorker, slot: Slot,
                    started: float) -> None:
        """Time from restart to /health 200 of this incarnation."""
        while True:
            if worker.process.poll() is not None:
                restart.outcome = ("killed before ready" if slot.worker is not worker
                                   or slot.busy else "exited")
                return
            if await self.ready(slot) and worker.process.poll() is None:
                restart.recovery_s = round(time.monotonic() - started, 2)
                restart.outcome = "ready"
                self.say(f"{self.phase}: {worker.name} ready {restart.recovery_s:.1f} s after "
                         f"its restart ({restart.signal})")
                return
            if time.monotonic() - started > self.plan.recovery_timeout_s:
                restart.outcome = "timeout"
                self.say(f"{self.phase}: {worker.name} NOT ready "
                         f"{self.plan.recovery_timeout_s:.0f} s after its restart")
                return
            await asyncio.sleep(0.2)

    async def inject_faults(self) -> None:
        plan = self.plan
        sigs = [signal.SIGKILL] * plan.sigkills + [signal.SIGTERM] * plan.sigterms
        self.rnd.shuffle(sigs)
        moments = sorted(self.rnd.uniform(0.03, 0.95) * plan.produce_s for _ in sigs)
        for at, sig in zip(moments, sigs, strict=True):
            await asyncio.sleep(max(0.0, self.faults_t0 + at - time.monotonic()))
            # a random worker among those ready at that moment, so most restarts get a
            # recovery time; when neither is ready, either (a kill during recovery)
            ready = [slot for slot in self.slots if await self.ready(slot)]
            target = self.rnd.choice(ready or self.slots)
            await self.kill_and_restart(target, sig, was_ready=target in ready)

    async def watch(self, stop: asyncio.Event) -> None:
        """Progress lines; restart (and count) workers that exit without being killed."""
        next_line = time.monotonic()
        while not stop.is_set():
            for slot in self.slots:
                worker = slot.worker
                if worker is not None and not slot.busy and worker.process.poll() is not None:
                    code = worker.process.returncode
                    self.unexpected_exits.append(f"{worker.name} exit code {code}")
                    self.say(f"{self.phase}: {worker.name} EXITED on its own (code {code}); "
                             f"log {worker.log_path}; restarting")
                    worker._log.close()
                    slot.start()
            if time.monotonic() >= next_line:
                next_line += self.plan.progress_every_s
                states = [f"{s.name}={'ready' if await self.ready(s) else 'not ready'}"
                          for s in self.slots]
                kills = Counter(r.signal for r in self.restarts)
                bad = sum(1 for r in self.inputs.stream if r.bad and r.placed)
                lag = await group_lag(self.stack.bootstrap, self.group, self.input_ends())
                self.say(f"{self.phase}: produced {self.placed:,}/{len(self.inputs.all()):,} "
                         f"(bad {bad:,}), not yet consumed {_n(lag)}, kills "
                         f"{kills['SIGKILL']} SIGKILL + {kills['SIGTERM']} SIGTERM, "
                         f"{', '.join(states)}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    # -- checks
    async def both_ready(self) -> bool:
        if not all([await self.ready(s) for s in self.slots]):
            return False
        for slot in self.slots:
            status, hosts = await self.get(slot.port, "/router/")
            if status != 200 or not isinstance(hosts, dict) or len(hosts) != len(self.slots):
                return False
        return True

    def input_ends(self) -> dict[TopicPartition, int]:
        ends: dict[TopicPartition, int] = {}
        for record in self.inputs.all():
            if record.placed:
                tp = TopicPartition(self.deployment.topic(record.topic), record.partition)
                ends[tp] = max(ends.get(tp, 0), record.offset + 1)
        return ends

    async def snapshot(self) -> dict[str, tuple[int, Any, int, Any]]:
        """Every customer's document and spend record, asking the two workers alternately."""
        gate = asyncio.Semaphore(16)

        async def one(index: int, user: str) -> tuple[str, tuple[int, Any, int, Any]]:
            count = len(self.slots)
            first, second = self.slots[index % count], self.slots[(index + 1) % count]
            async with gate:
                doc = await self.get(first.port, f"/customers/{user}/")
                spend = await self.get(second.port, f"/table/spend/{user}/")
            return user, (*doc, *spend)

        pairs = await asyncio.gather(*(one(i, u) for i, u in enumerate(self.inputs.customers)))
        return dict(pairs)

    def compare(self, snap: dict[str, tuple[int, Any, int, Any]],
                expected: dict[str, dict[str, Any]],
                ref_purchases: Counter[str]) -> dict[str, Any]:
        lost = twice = coffee_lost = coffee_twice = counted = coffee_counted = 0
        differing: list[dict[str, Any]] = []
        statuses: Counter[str] = Counter()
        for user, want in expected.items():
            doc_status, doc, spend_status, spend = snap[user]
            statuses[f"customers {doc_status}"] += 1
            statuses[f"spend {spend_status}"] += 1
            got = spend.get("purchases", 0) if spend_status == 200 and isinstance(
                spend, dict) else 0
            counted += got
            lost += max(0, ref_purchases[user] - got)
            twice += max(0, got - ref_purchases[user])
            coffee = doc["coffee"]["total"] if doc_status == 200 and isinstance(doc, dict) else 0
            coffee_counted += coffee
            lost_c = want["coffee"]["total"] - coffee
            coffee_lost += max(0, lost_c)
            coffee_twice += max(0, -lost_c)
            if doc_status != 200 or doc != want or spend_status != 200:
                differing.append({"user_id": user, "status": doc_status, "expected": want,
                                  "got": doc, "purchases_expected": ref_purchases[user],
                                  "purchases_counted": got, "spend_status": spend_status})
        return {"purchases_reference": sum(ref_purchases.values()), "purchases_counted": counted,
                "lost": lost, "counted_twice": twice,
                "coffee_reference": sum(d["coffee"]["total"] for d in expected.values()),
                "coffee_counted": coffee_counted, "coffee_lost": coffee_lost,
                "coffee_counted_twice": coffee_twice, "customers": len(expected),
                "customers_differing": len(differing), "differences": differing,
                "statuses": dict(statuses)}

    async def verify_state(self, deadline: float) -> dict[str, Any]:
        expected = reference_documents(self.inputs, self.settings.loyalty)
        ref_purchases = Counter(r.value["user_id"] for r in self.inputs.of_kind("purchase")
                                if r.placed)
        started = time.monotonic()
        previous: tuple[Any, ...] | None = None
        stable = 0
        polls = 0
        while True:
            polls += 1
            result = self.compare(await self.snapshot(), expected, ref_purchases)
            perfect = (result["customers_differing"] == 0 and result["lost"] == 0
                       and result["counted_twice"] == 0)
            signature = (result["lost"], result["counted_twice"],
                         tuple(d["user_id"] for d in result["differences"]),
                         tuple(sorted(result["statuses"].items())))
            stable = stable + 1 if signature == previous else 0
            previous = signature
            waited = time.monotonic() - started
            if perfect or (stable >= 4 and waited >= 15) or time.monotonic() >= deadline:
                break
            if polls % 3 == 1:
                self.say(f"verify: {result['customers_differing']} customers differ, lost "
                         f"{result['lost']}, counted twice {result['counted_twice']} "
                         f"(poll {polls}, {waited:.0f} s): waiting for them to settle")
            await asyncio.sleep(3.0)
        result["settle_s"] = round(time.monotonic() - started, 1)
        result["polls"] = polls
        self.say(f"verify: {result['customers']} customers, {result['customers_differing']} "
                 f"differ, purchases {result['purchases_counted']:,}/"
                 f"{result['purchases_reference']:,} (lost {result['lost']}, twice "
                 f"{result['counted_twice']}) after {result['settle_s']} s")
        for diff in result["differences"][:5]:
            self.say(f"verify: DIFFERS {diff['user_id']}: status {diff['status']}, purchases "
                     f"{diff['purchases_counted']}/{diff['purchases_expected']}, got "
                     f"{json.dumps(diff['got'])[:300]} expected "
                     f"{json.dumps(diff['expected'])[:300]}")
        return result

    async def verify_dead_letters(self, wait_s: float) -> dict[str, Any]:
        bad = {(self.deployment.topic(r.topic), r.partition, r.offset): r.kind
               for r in self.inputs.stream if r.bad and r.placed}
        records = await read_topic(self.stack.bootstrap, self.deployment.topic("dead-letters"),
                                   at_least=len(bad), timeout=wait_s, quiet_s=3.0,
                                   isolation=self.isolation)
        letters = [orjson.loads(r.value) for r in records]
        sources = Counter((d.get("topic"), d.get("partition"), d.get("offset")) for d in letters)
        for_valid = [d for d in letters if (d.get("topic"), d.get("partition"),
                                            d.get("offset")) not in bad]
        result = {
            "bad_produced": len(bad),
            "bad_kinds": len(set(bad.values())),
            "records": len(letters),
            "distinct_sources": len(sources),
            "duplicates": sum(n - 1 for n in sources.values()),
            "for_valid_events": len(for_valid),
            # offers and associate alerts whose delivery was given up (their source is the
            # offers or alerts topic): none unless redis or Ably was unreachable for longer
            # than the retries
            "delivery_letters": sum(1 for d in for_valid if d.get("topic") in (
                self.deployment.topic("customers.promotions"),
                self.deployment.topic("associates.alerts"))),
            "bad_without_letter": sum(1 for k in bad if k not in sources),
            "examples_for_valid_events": [
                {k: d.get(k) for k in ("topic", "partition", "offset", "error")}
                for d in for_valid[:5]],
            "examples_without_letter": [
                {"topic": t, "partition": p, "offset": o, "kind": kind}
                for (t, p, o), kind in sorted(bad.items()) if (t, p, o) not in sources][:10],
        }
        duplicated = [k for k, n in sources.items() if n > 1]
        result["duplicated_kinds"] = dict(Counter(bad.get(k, "valid?") for k in duplicated))
        self.say(f"dead letters: {result['records']:,} records, {result['distinct_sources']:,} "
                 f"distinct sources, {len(bad):,} bad events produced")
        return result

    async def verify_offers(self, final_docs: dict[str, dict[str, Any]],
                            wait_s: float) -> dict[str, Any]:
        topic = self.deployment.topic("customers.promotions")
        records = await read_topic(self.stack.bootstrap, topic, timeout=wait_s, quiet_s=3.0,
                                   isolation=self.isolation)
        offers = [orjson.loads(r.value) for r in records]
        by_id: dict[str, dict[str, Any]] = {}
        for offer in offers:
            by_id.setdefault(offer["offer_id"], offer)
        windows: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        for offer in by_id.values():
            windows[(offer["uid"], offer["pid"], offer["sku"])].append(float(offer["ts"]))
        cooldown = self.settings.offer_cooldown_s
        twice = [(key, a, b) for key, stamps in windows.items()
                 for a, b in itertools.pairwise(sorted(stamps)) if b - a < cooldown]
        expected = reference_offers(self.inputs, self.settings.offer_radius_m, cooldown,
                                    self.settings.topics.locations)
        gates = {p["pid"]: parse_tier(p.get("min_tier"))
                 for p in (r.value for r in self.inputs.of_kind("promotion"))}
        ungated = {oid for oid, o in by_id.items() if gates.get(o["pid"]) is None}
        above_tier = [o for o in by_id.values() if (gate := gates.get(o["pid"])) is not None
                      and Tier[final_docs.get(o["uid"], {}).get("reward_level", "CLIMBING")]
                      < gate]
        to_opted_out = [o for o in by_id.values() if o["uid"] in self.inputs.opted_out]

        # every distinct offer pushed to the Redis stream exactly once
        stream = f"{self.settings.topics.prefix}offers"
        client = redis_async.from_url(self.stack.redis_url, decode_responses=True)
        try:
            started = time.monotonic()
            while True:
                xlen = await client.xlen(stream)
                if xlen >= len(by_id) or time.monotonic() - started > wait_s:
                    break
                await asyncio.sleep(1.0)
            await asyncio.sleep(1.0)  # anything more than expected is a failure too
            entries = await client.xrange(stream) or []
            xlen = await client.xlen(stream)
        finally:
            await client.aclose()
        pushed = Counter((fields or {}).get("offer_id") for _, fields in entries)
        result = {
            "records": len(offers),
            "distinct_ids": len(by_id),
            "redelivered_records": len(offers) - len(by_id),
            "twice_within_cooldown": len(twice),
            "twice_examples": [[*k, a, b] for k, a, b in twice[:5]],
            "expected_ungated": len(expected),
            "missing": len(set(expected) - ungated),
            "unexpected": len(ungated - set(expected)),
            "missing_examples": [expected[k] for k in sorted(set(expected) - ungated)[:5]],
            "unexpected_examples": [[by_id[k][f] for f in ("uid", "pid", "sku", "ts")]
                                    for k in sorted(ungated - set(expected))[:5]],
            "tier_gated": len(by_id) - len(ungated),
            "above_final_tier": len(above_tier),
            "to_opted_out": len(to_opted_out),
            "redis_xlen": xlen,
            "redis_distinct": len(pushed),
            "pushed_more_than_once": sum(n - 1 for n in pushed.values()),
            "not_pushed": len(set(by_id) - set(pushed)),
            "pushed_unknown": len(set(pushed) - set(by_id)),
        }
        self.say(f"offers: {result['records']:,} records, {result['distinct_ids']:,} distinct, "
                 f"redis stream {xlen:,} entries ({result['redis_distinct']:,} distinct)")
        return result

    async def owners(self) -> dict[str, int]:
        """Owning slot of every customer, from Faust's own ``/router/spend/{key}/``."""
        ports = {slot.port: index for index, slot in enumerate(self.slots)}
        out: dict[str, int] = {}
        for user in self.inputs.customers:
            status, url = await self.get(self.slots[0].port, f"/router/spend/{user}/")
            if status == 200 and isinstance(url, str):
                port = urlsplit(url if "://" in url else f"http://{url}").port
                if port in ports:
                    out[user] = ports[port]
        return out

    async def load_test(self, expected: dict[str, dict[str, Any]]) -> dict[str, Any]:
        plan = self.plan
        owner = await self.owners()
        count = len(self.slots)
        by_owner: dict[int, list[str]] = {index: [] for index in range(count)}
        for user, index in owner.items():
            by_owner[index].append(user)
        if not all(by_owner.values()):
            return {"error": "customers by owner: "
                    + "/".join(str(len(users)) for users in by_owner.values())}
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        remote = 0
        connector = aiohttp.TCPConnector(limit=plan.load_clients * 2)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            stop_at = time.monotonic() + plan.load_s

            async def client(number: int) -> None:
                nonlocal remote
                rnd = random.Random(self.seed * 1000 + number)
                home = number % count
                sent = 0
                while time.monotonic() < stop_at:
                    other = (home + 1 + rnd.randrange(count - 1)) % count
                    target = home if sent % 2 == 0 else other
                    user = rnd.choice(by_owner[target])
                    url = f"{self.slots[home].url}/customers/{user}/"
                    started = time.perf_counter()
                    try:
                        async with session.get(url, timeout=aiohttp.ClientTimeout(10)) as resp:
                            body = await resp.read()
                            status = resp.status
                    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                        errors[type(exc).__name__] += 1
                    else:
                        if status != 200:
                            errors[f"HTTP {status}"] += 1
                        elif orjson.loads(body) != expected[user]:
                            errors["wrong answer"] += 1
                    latencies.append(time.perf_counter() - started)
                    remote += target != home
                    sent += 1

            begun = time.monotonic()
            await asyncio.gather(*(client(n) for n in range(plan.load_clients)))
            elapsed = time.monotonic() - begun
        total = len(latencies)
        result = {
            "clients": plan.load_clients, "seconds": round(elapsed, 1), "requests": total,
            "requests_per_s": round(total / elapsed, 1) if elapsed else 0.0,
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
            "errors": sum(errors.values()), "error_kinds": dict(errors),
            "error_rate": round(sum(errors.values()) / total, 6) if total else 1.0,
            "remote_share": round(remote / total, 3) if total else 0.0,
            "customers_by_owner": [len(users) for users in by_owner.values()],
        }
        self.say(f"load: {total:,} requests in {elapsed:.1f} s ({result['requests_per_s']}/s), "
                 f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                 f"errors {result['errors']}")
        return result

    def log_findings(self) -> dict[str, int]:
        """Tracebacks and crash lines in every worker log."""
        found: Counter[str] = Counter()
        for path in sorted(self.run_dir.glob("w*.log")):
            text = path.read_text(errors="replace")
            found["logs"] += 1
            found["tracebacks"] += text.count("Traceback")
            found["crashed"] += text.lower().count("crashed")
        return dict(found)

    # -- the whole run
    async def execute(self) -> dict[str, Any]:
        plan = self.plan
        figures = self.figures
        figures.update(mode=plan.mode, seed=self.seed, workers=len(self.slots),
                       partitions=plan.partitions, plan=asdict(plan), logs=str(self.run_dir),
                       app_id=self.group)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            self.session = session
            await ensure_topics(self.stack.bootstrap, topic_specs(self.settings))
            self.phase = "start"
            self.say(f"start: broker {self.stack.broker_url}, redis {self.stack.redis_url}, "
                     f"{plan.partitions} partitions, app id {self.group}, logs {self.run_dir}")
            for slot in self.slots:
                slot.start()
            await self.wait_until("both workers ready and owning partitions", self.both_ready,
                                  plan.recovery_timeout_s)
            figures["startup_s"] = round(time.monotonic() - self.t0, 1)
            self.say(f"start: both workers ready after {figures['startup_s']} s")

            producer = AIOKafkaProducer(bootstrap_servers=self.stack.bootstrap,
                                        **self.producer_options())
            await producer.start()
            stop_watch = asyncio.Event()
            watcher = asyncio.create_task(self.watch(stop_watch))
            try:
                self.phase = "setup"
                await self.produce_all(producer, self.inputs.setup)
                displays = len(self.inputs.of_kind("display"))
                promotions = len(self.inputs.of_kind("promotion"))

                async def store_loaded() -> bool:
                    for slot in self.slots:
                        status, text = await self.get(slot.port, "/metrics")
                        if status != 200 or metric(text, "storestream_replica_keys",
                                                   table="displays") != displays or metric(
                                text, "storestream_replica_keys",
                                table="promotions") != promotions:
                            return False
                    return True

                await self.wait_until("both workers to know every display and promotion",
                                      store_loaded, max(60.0, plan.recovery_timeout_s))
                self.say(f"setup: {len(self.inputs.setup):,} records (catalogue, "
                         f"{plan.customers} customers, {displays} displays, {promotions} "
                         f"promotions) produced and replicated")

                self.phase = "faults"
                self.faults_t0 = time.monotonic()
                self.say(f"faults: producing {len(self.inputs.stream):,} records over "
                         f"{plan.produce_s:.0f} s with {plan.sigkills} SIGKILLs and "
                         f"{plan.sigterms} SIGTERMs at random moments")
                await asyncio.gather(
                    self.produce_over(producer, self.inputs.stream, plan.produce_s),
                    self.inject_faults(),
                )
                figures["fault_phase_s"] = round(time.monotonic() - self.faults_t0, 1)
            finally:
                await producer.stop()

            self.phase = "settle"
            self.say(f"settle: all {self.placed:,} records produced ({self.failed} failed); "
                     f"waiting for restarts to recover and both workers to be ready")
            settle_started = time.monotonic()
            deadline = settle_started + plan.settle_s

            def remaining() -> float:
                return max(1.0, deadline - time.monotonic())

            if self.trackers:  # restarts still recovering; past the deadline they count as never
                await asyncio.wait(self.trackers, timeout=remaining())

            try:
                await self.wait_until("both workers ready and owning partitions",
                                      self.both_ready, remaining())
                figures["both_ready"] = True
            except TimeoutError as exc:
                figures["both_ready"] = False
                self.say(f"settle: {exc}")
            group = figures["consumer_group"] = await describe_group(self.stack.bootstrap,
                                                                     self.group)
            self.say(f"settle: the broker's view of consumer group {self.group}: {group}")
            healthy = figures["both_ready"]
            ends = self.input_ends()

            async def drained() -> bool:
                return await group_lag(self.stack.bootstrap, self.group, ends) == 0

            if healthy:
                with contextlib.suppress(TimeoutError):
                    await self.wait_until("the consumer group to commit every input record",
                                          drained, remaining(), interval=1.0)
            figures["input_lag_end"] = await group_lag(self.stack.bootstrap, self.group, ends)
            figures["drain_s"] = round(time.monotonic() - settle_started, 1)
            self.say(f"settle: uncommitted input records {figures['input_lag_end']} after "
                     f"{figures['drain_s']} s")
            if figures["input_lag_end"]:
                lags = await group_lag_by_partition(self.stack.bootstrap, self.group, ends) or {}
                self.say("settle: uncommitted by partition: " + ", ".join(
                    f"{tp.topic}[{tp.partition}] {lag}/{ends[tp]}"
                    for tp, lag in sorted(lags.items()) if lag))

            self.phase = "verify"
            figures["state"] = await self.verify_state(deadline + 15)
            wait = 60.0 if healthy else 15.0
            figures["dead_letters"] = await self.verify_dead_letters(wait)
            expected = reference_documents(self.inputs, self.settings.loyalty)
            figures["offers"] = await self.verify_offers(expected, wait)
            stop_watch.set()
            await watcher

            self.phase = "load"
            both = await self.both_ready()
            figures["load"] = await self.load_test(expected) if both else {
                "error": "a worker was not ready for the load test"}
            self.session = None
        return figures

    def stop_workers(self) -> None:
        for slot in self.slots:
            if slot.worker is not None and slot.worker.process.poll() is None:
                slot.worker.kill(signal.SIGTERM, 20.0)
            elif slot.worker is not None:
                slot.worker._log.close()

    def summarise(self, runtime_s: float) -> dict[str, Any]:
        figures = self.figures
        figures["runtime_s"] = round(runtime_s, 1)
        kinds = Counter(r.kind for r in self.inputs.all() if r.placed and not r.bad)
        bad = [r for r in self.inputs.all() if r.placed and r.bad]
        figures["produced"] = {
            "valid": sum(kinds.values()), "bad": len(bad),
            "bad_kinds": len({r.kind for r in bad}), "valid_by_kind": dict(kinds),
            "bad_by_kind": dict(Counter(r.kind for r in bad)),
            "failed": sum(1 for r in self.inputs.all() if r.error),
        }
        recoveries = [r.recovery_s for r in self.restarts if r.recovery_s is not None]
        figures["faults"] = {
            "sigkill": sum(1 for r in self.restarts if r.signal == "SIGKILL"),
            "sigterm": sum(1 for r in self.restarts if r.signal == "SIGTERM"),
            "sigterm_escalated": sum(1 for r in self.restarts if r.escalated),
            "unexpected_exits": len(self.unexpected_exits),
            "unexpected_exit_details": self.unexpected_exits,
            "restarts": [asdict(r) for r in self.restarts],
            "recovery_s": {
                "min": min(recoveries, default=None),
                "median": statistics.median(recoveries) if recoveries else None,
                "max": max(recoveries, default=None),
            },
            "killed_before_ready": sum(1 for r in self.restarts
                                       if r.outcome == "killed before ready"),
            "never_ready": sum(1 for r in self.restarts
                               if r.outcome in ("timeout", "exited", "pending")),
        }
        figures["worker_logs"] = self.log_findings()
        figures["failures"] = failures(figures)
        return figures


# ----------------------------------------------------------------------------- report


def failures(figures: dict[str, Any]) -> list[str]:
    """Every must-be-zero (or must-match) figure that is not."""
    out: list[str] = []
    plan = figures.get("plan", {})

    def need(ok: bool, message: str) -> None:
        if not ok:
            out.append(message)

    if "error" in figures:
        out.append(f"run error: {figures['error']}")
    produced = figures.get("produced", {})
    need(produced.get("failed", 1) == 0, f"produce failures: {produced.get('failed')}")
    faults = figures.get("faults", {})
    need(faults.get("sigkill", 0) >= plan.get("sigkills", 1),
         f"SIGKILLs {faults.get('sigkill')} < {plan.get('sigkills')}")
    need(faults.get("sigterm", 0) >= plan.get("sigterms", 1),
         f"SIGTERMs {faults.get('sigterm')} < {plan.get('sigterms')}")
    need(faults.get("never_ready", 1) == 0, f"restarts never ready: {faults.get('never_ready')}")
    need(faults.get("unexpected_exits", 1) == 0,
         f"workers that exited on their own: {faults.get('unexpected_exits')}")
    need(figures.get("both_ready") is True, "both workers not ready at the end")
    need(figures.get("input_lag_end") == 0,
         f"input records never committed by the group: {figures.get('input_lag_end')}")
    state = figures.get("state")
    if state is None:
        out.append("state not verified")
    else:
        need(state["lost"] == 0, f"lost purchases: {state['lost']}")
        need(state["counted_twice"] == 0, f"purchases counted twice: {state['counted_twice']}")
        need(state["coffee_lost"] == 0, f"coffee stamps lost: {state['coffee_lost']}")
        need(state["coffee_counted_twice"] == 0,
             f"coffee stamps counted twice: {state['coffee_counted_twice']}")
        need(state["customers_differing"] == 0,
             f"customers that differ: {state['customers_differing']}")
    letters = figures.get("dead_letters")
    if letters is None:
        out.append("dead letters not verified")
    else:
        need(letters["records"] == letters["bad_produced"],
             f"dead letters {letters['records']} != bad events {letters['bad_produced']}")
        need(letters["for_valid_events"] == 0,
             f"dead letters for valid events: {letters['for_valid_events']}")
        need(letters["bad_without_letter"] == 0,
             f"bad events without a dead letter: {letters['bad_without_letter']} "
             f"(e.g. {letters.get('examples_without_letter', [])[:3]})")
    offers = figures.get("offers")
    if offers is None:
        out.append("offers not verified")
    else:
        for key, label in (("twice_within_cooldown", "offered twice within cooldown"),
                           ("missing", "offers missing"), ("unexpected", "unexpected offers"),
                           ("above_final_tier", "offers above the customer's tier"),
                           ("to_opted_out", "offers to opted-out customers"),
                           ("pushed_more_than_once", "offers pushed more than once"),
                           ("not_pushed", "offers not pushed"),
                           ("pushed_unknown", "pushed offers not in the topic")):
            need(offers[key] == 0, f"{label}: {offers[key]}")
        need(offers["redis_xlen"] == offers["distinct_ids"],
             f"redis stream length {offers['redis_xlen']} != distinct offers "
             f"{offers['distinct_ids']}")
        need(offers["distinct_ids"] > 0, "no offers at all")
    load = figures.get("load")
    if load is None or "error" in load:
        out.append(f"load test not run: {(load or {}).get('error')}")
    else:
        need(load["errors"] == 0, f"load test errors: {load['errors']} {load['error_kinds']}")
        need(load["requests"] > 0, "load test made no requests")
    return out


def _n(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(figures: dict[str, Any]) -> str:
    """The figure table as aligned plain text."""
    rows: list[tuple[str, str, str]] = []

    def row(label: str, value: Any, want: str = "") -> None:
        rows.append((label, value if isinstance(value, str) else _n(value), want))

    produced = figures.get("produced", {})
    state = figures.get("state", {})
    letters = figures.get("dead_letters", {})
    faults = figures.get("faults", {})
    offers = figures.get("offers", {})
    load = figures.get("load", {})
    rec = faults.get("recovery_s", {})
    by_kind = produced.get("valid_by_kind", {})
    row("events produced, valid", produced.get("valid"))
    row("  purchases / positions / other",
        f"{_n(by_kind.get('purchase'))} / {_n(by_kind.get('position'))} / "
        f"{_n(sum(v for k, v in by_kind.items() if k not in ('purchase', 'position')))}")
    row("events produced, bad (kinds)",
        f"{_n(produced.get('bad'))} ({_n(produced.get('bad_kinds'))})")
    row("customers", state.get("customers"))
    row("purchases: reference / counted",
        f"{_n(state.get('purchases_reference'))} / {_n(state.get('purchases_counted'))}")
    row("purchases lost", state.get("lost"), "0")
    row("purchases counted twice", state.get("counted_twice"), "0")
    row("coffee stamps lost / counted twice",
        f"{_n(state.get('coffee_lost'))} / {_n(state.get('coffee_counted_twice'))}", "0 / 0")
    row("customers that differ", state.get("customers_differing"), "0")
    row("input records never consumed (group lag)", figures.get("input_lag_end"), "0")
    row("dead letters (distinct sources)",
        f"{_n(letters.get('records'))} ({_n(letters.get('distinct_sources'))})",
        f"= bad ({_n(letters.get('bad_produced'))})")
    row("dead letters for valid events", letters.get("for_valid_events"), "0")
    row("SIGKILLs / SIGTERMs (escalated)",
        f"{_n(faults.get('sigkill'))} / {_n(faults.get('sigterm'))} "
        f"({_n(faults.get('sigterm_escalated'))})")
    row("recovery restart->/health 200 s",
        f"min {_n(rec.get('min'))} / med {_n(rec.get('median'))} / max {_n(rec.get('max'))}")
    row("restarts never ready", faults.get("never_ready"), "0")
    row("restarts killed again before ready", faults.get("killed_before_ready"))
    row("workers exiting on their own", faults.get("unexpected_exits"), "0")
    row("offers produced (distinct ids)",
        f"{_n(offers.get('records'))} ({_n(offers.get('distinct_ids'))})")
    row("offered twice within cooldown", offers.get("twice_within_cooldown"), "0")
    row("offers missing / unexpected (replay)",
        f"{_n(offers.get('missing'))} / {_n(offers.get('unexpected'))}", "0 / 0")
    row("offers above tier / to opted-out",
        f"{_n(offers.get('above_final_tier'))} / {_n(offers.get('to_opted_out'))}", "0 / 0")
    row("redis offers stream (distinct)",
        f"{_n(offers.get('redis_xlen'))} ({_n(offers.get('redis_distinct'))})",
        f"= distinct ({_n(offers.get('distinct_ids'))})")
    row("offers pushed twice / not pushed",
        f"{_n(offers.get('pushed_more_than_once'))} / {_n(offers.get('not_pushed'))}", "0 / 0")
    row("web load: clients x seconds",
        f"{_n(load.get('clients'))} x {_n(load.get('seconds'))}")
    row("web load: requests/s", load.get("requests_per_s"))
    row("web load: p50 / p99 ms", f"{_n(load.get('p50_ms'))} / {_n(load.get('p99_ms'))}")
    row("web load: error rate (remote share)",
        f"{_n(load.get('error_rate'))} ({_n(load.get('remote_share'))})", "0")
    row("runtime s", figures.get("runtime_s"))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    title = (f"storestream reliability ({figures.get('mode')}, {figures.get('broker')}): "
             f"{figures.get('workers')} workers, {figures.get('partitions')} partitions, "
             f"seed {figures.get('seed')}")
    lines = [title, "-" * len(title),
             f"{'figure':<{width[0]}}  {'value':>{width[1]}}  must be"]
    lines += [f"{a:<{width[0]}}  {b:>{width[1]}}  {c}" for a, b, c in rows]
    restarts = faults.get("restarts", [])
    if restarts:
        lines.append("")
        lines.append("restarts: at s, worker, signal, exit s, recovery s, outcome")
        lines += [f"  {r['at_s']:7.1f}  {r['worker']}  {r['signal']:<7}  {r['exit_s']:5.1f}  "
                  f"{_n(r['recovery_s']):>6}  {r['outcome']}" for r in restarts]
    fails = figures.get("failures", [])
    lines.append("")
    lines.append("RESULT: " + ("OK, every must-be-zero figure is zero" if not fails
                               else "FAILED: " + "; ".join(fails)))
    return "\n".join(lines)


def run(plan: Plan, seed: int = 7, keep_logs: bool = False,
        broker: str = "kafka") -> dict[str, Any]:
    """One run on its own broker (``kafka`` or ``tansu``) and redis; returns the figures."""
    started = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix=f"storestream-reliability-{plan.mode}-"))
    figures: dict[str, Any]
    print(f"[  0.0s] stack: starting {broker} and redis-server", flush=True)
    with bench_stack(broker) as stack:
        print(f"[{time.monotonic() - started:6.1f}s] stack: {broker} at {stack.broker_url}, "
              f"redis at {stack.redis_url}", flush=True)
        bench = Run(plan, seed, stack, run_dir)
        bench.t0 = started
        bench.figures["broker"] = broker
        try:
            asyncio.run(bench.execute())
        except Exception as exc:
            bench.figures["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            bench.stop_workers()
        figures = bench.summarise(time.monotonic() - started)
    if figures["failures"] or keep_logs:
        print(f"worker logs kept in {run_dir}", flush=True)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        figures["logs"] = None
    return figures


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small run of the test suite")
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep-logs", action="store_true", help="keep worker logs")
    parser.add_argument("--cluster", type=int, default=0, metavar="N",
                        help="N KRaft nodes with broker, controller, pause and network faults "
                             "(bench/cluster_faults.py; N=3)")
    add_broker_argument(parser, default="kafka")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.cluster:
        from bench.cluster_faults import cluster_main

        return cluster_main(args.cluster, args.quick, args.seed, args.keep_logs, args.json)
    plan = QUICK if args.quick else FULL
    path = args.json or RESULTS / ("reliability-quick.json" if args.quick
                                   else "reliability.json")
    figures = run(plan, args.seed, args.keep_logs, args.broker)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print()
    print(table(figures))
    print(f"\nfigures written to {path}", flush=True)
    if "error" in figures and not figures.get("state"):
        return 2
    return 1 if figures["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
