"""Location-to-offer latency: storestream's distance join next to a plain aiokafka loop doing
the same matching.

Shoppers stand at one promoted display (``OFFER_COOLDOWN_S=0``), so every position gives
exactly one offer. Positions are produced at a steady rate with ``ts`` = send time; a
consumer reads the offers topic and records ``receive time - ts`` ("topic" latency), and each
offer's entry in the Redis offers stream gives ``entry id (the redis server's clock, ms) - ts``
("Redis" latency: the offer pushed). The plain loop (``bench.plain_peer match``) follows the
same displays and promotions topics into a grid, and per position does the grid lookup, the
haversine distance, the promotion check, produces the offer and pushes it to Redis (XADD +
PUBLISH, one pipeline per batch). Producer, positions and measuring consumer are the same for
every peer.

Peers (:data:`PEERS`): ``aiokafka`` (the plain loop), ``storestream`` (the worker with its
defaults), and the worker with issue 21's campaign rules all off (``rules-off``) and all on
(``rules-on``: control group, accuracy limit, a dwell promotion on the same display, caps and
quiet hours configured but never withholding the measured offers, associates alerted for every
tier, attribution). Each trial runs on a fresh deployment with fresh topics, the peers taking
turns (forward, then reverse order, round after round); each peer's figure is the median of
its per-trial p99s (min-max beside it), with every trial's p50/p95/p99 and latency histogram
in the JSON. The first second of each trial is warm-up and left out.
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.dev.devstack import DevStack, TopicSpec
from bench.deploy import ROOT, BenchError, Proc, StoreDeployment, wait_until
from bench.procstat import host_cpu_ticks, steal_percent
from bench.workload import EVENT_TOPIC_CONFIG, create_topics, delete_topics, log

DISPLAY = {"sku": "9001", "lat": 51.5, "lon": -0.1, "segment": "bench", "store_id": "s1"}
PROMOTION = {"pid": "p-bench", "sku": "9001", "discount_pct": 10, "ts": 1.0}
#: With the rules on: a second promotion of the same display that needs an hour's dwell, so
#: every position runs the presence and dwell rules but this one never fires in a trial.
DWELL_PROMOTION = {"pid": "p-dwell", "segment": "bench", "discount_pct": 5, "dwell_s": 3600,
                   "ts": 1.0}
#: Every position's reported accuracy (within ``MAX_ACCURACY_M`` of the rules-on variant).
ACCURACY_M = 1.0
#: Issue 21's campaign rules all off, and all on without withholding the measured offers.
RULES_OFF = {"CONTROL_GROUP_PCT": "0", "MAX_ACCURACY_M": "0", "MAX_OFFERS_PER_VISIT": "0",
             "MAX_OFFERS_PER_DAY": "0", "ASSOCIATE_TIERS": "", "REDEMPTION_WINDOW_S": "0"}
RULES_ON = {"CONTROL_GROUP_PCT": "10", "MAX_ACCURACY_M": "5",
            "MAX_OFFERS_PER_VISIT": "1000000", "MAX_OFFERS_PER_DAY": "1000000",
            "ASSOCIATE_TIERS": "CLIMBING,BRONZE,SILVER,GOLD", "REDEMPTION_WINDOW_S": "7200"}
#: Upper edges (ms) of the latency histogram's buckets (the last one is open).
HISTOGRAM_MS = (1, 2, 5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000)
SHOPPERS = 1_000
#: Offers at least this slow (ms) are listed in a trial's ``slow_offers`` (up to SLOW_KEPT).
SLOW_MS = 50.0
SLOW_KEPT = 300
WARMUP_S = 1.0
#: Length (s) of each peer's discarded trial before the first round (:func:`warm_up`).
WARMUP_TRIAL_S = 5.0
FETCH_WAIT_MS = 10
#: Host CPU steal (% of all CPU time, over a trial) above which the trial counts as disturbed:
#: on this kind of shared machine steal went from 0 to 43% within minutes and moved a 15-s
#: trial's p99 by up to 25x, for either peer.
STEAL_LIMIT = 5.0

#: Measures one window: ``(seconds, drain_s) -> result``.
Window = Callable[[float, float], dict[str, Any]]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values`` (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _position(uid: str, ts: float) -> bytes:
    return orjson.dumps({"uid": uid, "lat": DISPLAY["lat"], "lon": DISPLAY["lon"],
                         "store_id": "s1", "accuracy_m": ACCURACY_M, "ts": ts})


def histogram(values_ms: list[float]) -> list[int]:
    """Counts per bucket of :data:`HISTOGRAM_MS` (one more, open, bucket at the end)."""
    counts = [0] * (len(HISTOGRAM_MS) + 1)
    for value in values_ms:
        counts[next((i for i, edge in enumerate(HISTOGRAM_MS) if value <= edge),
                    len(HISTOGRAM_MS))] += 1
    return counts


def distribution(prefix: str, values_ms: list[float]) -> dict[str, Any]:
    """p50/p95/p99/max and the histogram of one latency sample, keys prefixed."""
    return {f"{prefix}p50_ms": round(percentile(values_ms, 50), 1),
            f"{prefix}p95_ms": round(percentile(values_ms, 95), 1),
            f"{prefix}p99_ms": round(percentile(values_ms, 99), 1),
            f"{prefix}max_ms": round(max(values_ms, default=0.0), 1),
            f"{prefix}histogram": histogram(values_ms)}


def redis_latency(redis_url: str, stream: str, run: str, measure_from: float) -> dict[str, Any]:
    """Location -> Redis latency of one trial's measured offers (uids ``m{run}-``, positions
    sent at or after ``measure_from``): each offers stream entry's id (ms, the redis server's
    clock on this host) minus the offer's position ``ts``."""
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries: Any = client.xrange(stream, min=f"{int((measure_from - 5) * 1000)}-0",
                                     max="+")
    finally:
        client.close()
    ms: list[float] = []
    for entry_id, fields in entries or ():
        if str(fields.get("uid", "")).startswith(f"m{run}-"):
            ts = float(fields.get("ts", "0"))
            if ts >= measure_from:
                ms.append((int(str(entry_id).split("-")[0]) / 1000 - ts) * 1000)
    return {"redis_offers": len(ms), **distribution("redis_", ms)}


async def _consumer(bootstrap: str, *topics: str | None) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=FETCH_WAIT_MS)
    await consumer.start()
    assigned: list[TopicPartition] = []
    for topic in topics:
        if topic is None:
            continue
        partitions = consumer.partitions_for_topic(topic)
        deadline = time.monotonic() + 30
        while not partitions and time.monotonic() < deadline:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
            await asyncio.sleep(0.2)
        if not partitions:
            await consumer.stop()
            raise BenchError(f"topic {topic} never appeared")
        assigned += [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    return consumer


async def measure(bootstrap: str, source: str, sink: str, rate: float, seconds: float,
                  drain_s: float, held_out: str | None = None) -> dict[str, Any]:
    """Warm the path up, then send ``rate`` positions/s for ``seconds``; collect latencies.

    ``held_out``: a topic whose records (offers held out for a control group) count as
    outputs for completeness (not for latency)."""
    consumer = await _consumer(bootstrap, sink, held_out)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
    await producer.start()
    run = uuid.uuid4().hex[:4]
    latencies: list[float] = []
    stamps: list[float] = []  # each measured offer's position ts, beside its latency
    last_hop: list[float] = []  # output record's own timestamp -> received
    seen = {"warm": 0, "measured": 0}
    last_received = [0.0]
    stop = asyncio.Event()
    measure_from = math.inf

    async def collect() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50)
            received = time.time()
            for tp, records in batch.items():
                counted_only = tp.topic == held_out
                for record in records:
                    value = orjson.loads(record.value)
                    uid = str(value.get("uid", ""))
                    if uid.startswith(f"w{run}-"):
                        seen["warm"] += 1
                    elif uid.startswith(f"m{run}-"):
                        seen["measured"] += 1
                        last_received[0] = received
                        if not counted_only and float(value["ts"]) >= measure_from:
                            latencies.append(received - float(value["ts"]))
                            stamps.append(float(value["ts"]))
                            if record.timestamp is not None and record.timestamp > 0:
                                last_hop.append(received - record.timestamp / 1000)

    collector = asyncio.create_task(collect())
    try:
        for n in range(20):
            await producer.send(source, _position(f"w{run}-{n}", time.time()),
                                key=f"w{run}-{n}".encode())
        await producer.flush()
        deadline = time.monotonic() + 60
        while seen["warm"] < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if seen["warm"] < 20:
            raise BenchError(f"warm-up: {seen['warm']}/20 outputs within 60 s")
        total = int(rate * seconds)
        loop = asyncio.get_running_loop()
        started, wall_started = loop.time(), time.time()
        measure_from = time.time() + WARMUP_S
        sent = 0
        while sent < total:
            due = min(total, int((loop.time() - started) * rate) + 1)
            while sent < due:
                uid = f"m{run}-{sent % SHOPPERS}"
                await producer.send(source, _position(uid, time.time()), key=uid.encode())
                sent += 1
            await asyncio.sleep(0.002)
        send_s = loop.time() - started
        await producer.flush()
        deadline = time.monotonic() + drain_s
        while seen["measured"] < total and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        received = seen["measured"]
    finally:
        stop.set()
        await collector
        await producer.stop()
        await consumer.stop()
    ms = [x * 1000 for x in latencies]
    send_rate = total / send_s
    # Offers per second from the first send to the last offer received: well below the send
    # rate means the path fell behind (latency then measures the queue, not the path).
    output_rate = received / max(1e-9, last_received[0] - wall_started)
    return {
        "rate": rate, "sent": total, "send_rate": round(send_rate, 1),
        "received": received, "measured": len(ms),
        "output_rate": round(output_rate, 1),
        "saturated": received < total * 0.99 or output_rate < 0.9 * send_rate,
        **distribution("", ms),
        "mean_ms": round(statistics.fmean(ms), 1) if ms else 0.0,
        "run": run, "measure_from": measure_from,
        # The last hop alone (output produced -> received), the same broker work for both.
        "last_hop_p50_ms": round(percentile([x * 1000 for x in last_hop], 50), 1),
        "last_hop_p99_ms": round(percentile([x * 1000 for x in last_hop], 99), 1),
        # The slow offers themselves (position ts, ms), to set beside a worker's timeline.
        "slow_offers": [[round(ts, 4), round(x, 1)] for ts, x in zip(stamps, ms, strict=True)
                        if x >= SLOW_MS][:SLOW_KEPT],
    }


@contextmanager
def storestream(stack: DevStack, tmp: Path, rate: float, env: Mapping[str, str] | None = None,
                idle_s: float = 0.0, rules: bool = False) -> Iterator[Window]:
    """A storestream worker (positions -> offers) on fresh topics, ready; yields its
    measuring function.

    ``env`` overrides the worker's settings (``bench.broker_workarounds`` compares variants);
    with ``idle_s`` each window first measures the ready, idle worker's CPU over that many
    seconds (``idle_cpu_percent``). ``rules``: also the dwell promotion and store ``s1``'s
    quiet hours (:func:`quiet_hours_config`), for the rules-on variant.
    """
    extra = {"OFFER_COOLDOWN_S": "0", **stack.worker_env, **(env or {})}
    if rules:
        extra["STORESTREAM_CONFIG"] = str(quiet_hours_config(tmp))
    deployment = StoreDeployment(stack, tmp, f"lat{int(rate)}", partitions=8, extra_env=extra)
    deployment.create_topics()
    worker = deployment.start_worker("lat")
    try:
        worker.wait_ready(180)
        from app.dev.producer import produce

        promotions = [PROMOTION, DWELL_PROMOTION] if rules else [PROMOTION]
        asyncio.run(produce(stack.broker_url, [
            (deployment.topic("stores.products"), str(DISPLAY["sku"]), DISPLAY),
            *((deployment.topic("products.promotions"), str(p["pid"]), p) for p in promotions),
        ]))
        wait_until("display and promotions on the worker", lambda: worker.metric(
            "storestream_replica_keys", table="displays") >= 1 and worker.metric(
            "storestream_replica_applied_total", table="promotions") >= len(promotions), 60)
        held_out = deployment.topic("offers.held_out") if rules else None

        def window(seconds: float, drain_s: float) -> dict[str, Any]:
            idle_cpu = None
            if idle_s > 0:
                cpu0, t0 = worker.cpu_seconds(), time.monotonic()
                time.sleep(idle_s)
                idle_cpu = 100 * (worker.cpu_seconds() - cpu0) / (time.monotonic() - t0)
            result = _timed(worker.cpu_seconds, lambda: measure(
                stack.bootstrap, deployment.topic("customers.locations"),
                deployment.topic("customers.promotions"), rate, seconds, drain_s,
                held_out=held_out))
            if idle_cpu is not None:
                result["idle_cpu_percent"] = round(idle_cpu, 2)
            result["redis_stream"] = f"{deployment.prefix}offers"  # the worker's offers stream
            result["dead_letters"] = worker.metric("storestream_dead_letters_total")
            result["withheld"] = worker.metric("storestream_offers_withheld_total")
            result["held_out"] = worker.metric("storestream_offers_held_out_total")
            result["worker_side"] = worker_side_lag(worker)
            return result

        yield window
    finally:
        worker.stop()
        _delete(stack, [deployment.prefix, f"{deployment.env['APP_ID']}-"])


def quiet_hours_config(tmp: Path) -> Path:
    """faust.ini plus ``[store s1]`` whose quiet hour is 12 hours away (UTC): configured,
    checked for every offer, never withholding one in a trial."""
    import datetime

    hour = (datetime.datetime.now(datetime.UTC).hour + 12) % 24
    path = tmp / "faust-quiet-hours.ini"
    path.write_text((ROOT / "faust.ini").read_text() + "\n[store s1]\ntimezone = UTC\n"
                    f"quiet_hours = {hour:02d}:00-{hour:02d}:59\n")
    return path


def _timed(cpu_seconds: Callable[[], float],
           run: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    """Run one measurement; add the peer's CPU share and the host's steal over it."""
    cpu0, host0, t0 = cpu_seconds(), host_cpu_ticks(), time.monotonic()
    result = asyncio.run(run())
    used = cpu_seconds() - cpu0
    result["cpu_percent"] = round(100 * used / (time.monotonic() - t0), 1)
    result["cpu_seconds"] = round(used, 3)
    result["steal_percent"] = steal_percent(host0, host_cpu_ticks())
    return result


def worker_side_lag(worker: Any) -> dict[str, float]:
    """Share of position batches whose newest record was processed within each bound.

    From the worker's ``storestream_agent_latency_seconds{agent="locations"}`` histogram
    (record timestamp -> end of its batch): splits the end-to-end latency into the part
    before the offer is queued in the worker and the part after (produce, broker, fetch).
    """
    samples = worker.metrics()
    count = next((v for k, v in samples.items() if k.startswith(
        "storestream_agent_latency_seconds_count{") and 'agent="locations"' in k), 0.0)
    out: dict[str, float] = {}
    for series, value in samples.items():
        if (series.startswith("storestream_agent_latency_seconds_bucket{")
                and 'agent="locations"' in series and count):
            bound = series.split('le="', 1)[1].split('"', 1)[0]
            if bound in ("0.01", "0.025", "0.05", "0.1", "0.25"):
                out[f"<= {float(bound) * 1000:g} ms"] = round(value / count, 3)
    return out


@contextmanager
def plain(stack: DevStack, tmp: Path, rate: float) -> Iterator[Window]:
    """The plain aiokafka matching loop on fresh topics, ready; yields its measuring
    function."""
    prefix = f"bench-lat-plain-{uuid.uuid4().hex[:6]}."
    source, sink = f"{prefix}customers.locations", f"{prefix}out"
    displays, promotions = f"{prefix}stores.products", f"{prefix}products.promotions"
    asyncio.run(create_topics(stack.bootstrap, [
        TopicSpec(source, 8, EVENT_TOPIC_CONFIG), TopicSpec(sink, 8, EVENT_TOPIC_CONFIG),
        TopicSpec(displays, 1, EVENT_TOPIC_CONFIG), TopicSpec(promotions, 1, EVENT_TOPIC_CONFIG)]))
    from app.dev.producer import produce

    asyncio.run(produce(stack.broker_url, [(displays, str(DISPLAY["sku"]), DISPLAY),
                                           (promotions, str(PROMOTION["pid"]), PROMOTION)]))
    stream = f"{prefix}offers"
    proc = Proc("aiokafka match", [sys.executable, "-m", "bench.plain_peer", "match",
                                   "--bootstrap", stack.bootstrap, "--source", source,
                                   "--sink", sink, "--displays", displays,
                                   "--promotions", promotions, "--redis", stack.redis_url,
                                   "--redis-stream", stream],
                dict(os.environ), tmp / f"{prefix}match.log")
    try:
        def ready() -> bool:
            if not proc.alive():
                raise BenchError(f"matching loop exited:\n{proc.log_tail()}")
            return "READY" in proc.log_text()
        wait_until("the matching loop", ready, 60, 0.1)

        def window(seconds: float, drain_s: float) -> dict[str, Any]:
            result = _timed(proc.cpu_seconds, lambda: measure(
                stack.bootstrap, source, sink, rate, seconds, drain_s))
            result["redis_stream"] = stream
            return result

        yield window
    finally:
        proc.stop()
        _delete(stack, [prefix])


def _delete(stack: DevStack, prefixes: list[str]) -> None:
    """Delete a finished trial's topics (its changelogs included), so that the next trial
    runs on a broker holding only its own (measured: the worker's p50/p99 rose trial after
    trial on one broker while the deployments' topics piled up)."""
    try:
        asyncio.run(delete_topics(stack.bootstrap, prefixes))
    except Exception as exc:  # a broker that cannot delete: later trials run next to them
        log(f"latency: could not delete {prefixes}: {exc}")


def quiet(trial: dict[str, Any]) -> bool:
    """Whether a trial ran and the host's CPU steal during it stayed within
    :data:`STEAL_LIMIT` (a trial without a steal reading counts as quiet)."""
    return "error" not in trial and (trial.get("steal_percent") or 0.0) <= STEAL_LIMIT


def peer_order(names: Sequence[str], trial: int) -> list[str]:
    """Which peers run in ``trial`` (0-based) and in which order: forward, then reverse,
    in turn (ABBA for two), so a drift in the machine's state weighs on every peer alike."""
    return list(names) if trial % 2 == 0 else list(reversed(names))


def summarise(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """A peer's figures over its trials: the median of the per-trial p50/p95/p99 (topic and
    Redis) with min-max, over every successful trial and over the quiet ones
    (:func:`quiet`), and every trial itself."""
    done = [t for t in trials if "error" not in t]
    calm = [t for t in done if quiet(t)]
    out: dict[str, Any] = {"trials": len(trials), "ok_trials": len(done),
                           "quiet_trials": len(calm),
                           "saturated_trials": sum(1 for t in done if t.get("saturated"))}
    for key in ("p50_ms", "p95_ms", "p99_ms", "redis_p50_ms", "redis_p95_ms", "redis_p99_ms",
                "cpu_percent", "steal_percent"):
        values = [float(t[key]) for t in done if t.get(key) is not None]
        if values:
            out[f"median_{key}"] = round(statistics.median(values), 1)
            out[f"min_max_{key}"] = [min(values), max(values)]
        quiet_values = [float(t[key]) for t in calm if t.get(key) is not None]
        if quiet_values and key.endswith("p99_ms"):
            out[f"quiet_median_{key}"] = round(statistics.median(quiet_values), 1)
    out["per_trial"] = trials
    return out


def ratio(row: dict[str, Any], peer: str, against: str, key: str) -> float | None:
    """``peer``'s median ``key`` over ``against``'s, both from the same run."""
    a, b = row.get(peer, {}).get(f"median_{key}"), row.get(against, {}).get(f"median_{key}")
    return round(a / max(b, 0.1), 2) if a is not None and b is not None else None


#: Peer name -> its context manager (``stack, tmp, rate``).
PEERS: dict[str, Callable[[DevStack, Path, float], AbstractContextManager[Window]]] = {
    "aiokafka": plain,
    "storestream": lambda stack, tmp, rate: storestream(stack, tmp, rate),
    "rules-off": lambda stack, tmp, rate: storestream(stack, tmp, rate, env=RULES_OFF),
    "rules-on": lambda stack, tmp, rate: storestream(stack, tmp, rate, env=RULES_ON,
                                                     rules=True),
}


def run(stack: DevStack, tmp: Path, quick: bool, trials: int | None = None,
        rates: Sequence[float] | None = None, seconds: float | None = None) -> dict[str, Any]:
    """Every rate for every peer: ``{"<rate>/s": {"<peer>": summary, "ratios": ...}}``.

    Each trial is a fresh deployment with fresh topics (on the embedded broker a topic's fetch
    latency grows as it fills); ``trials`` rounds per rate (5; quick: 1 at 200/s), every peer
    once per round in :func:`peer_order` (quick: storestream and the plain loop only).
    Ratios: storestream's median p99 over the plain loop's (issue 19, topic and Redis) and
    rules-on over rules-off (issue 21).
    """
    rounds = trials or (1 if quick else 5)
    plan = list(rates or ([200.0] if quick else [500.0, 2_000.0]))
    length = seconds or (4.0 if quick else 10.0)
    drain_s = 10.0 if quick else 30.0
    names = ["storestream", "aiokafka"] if quick else list(PEERS)  # quick: the pair alone
    out: dict[str, Any] = {}
    if not quick:
        out["warmup"] = warm_up(stack, tmp, names, plan[0], drain_s)
    for rate in plan:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for trial in range(rounds):
            for name in peer_order(names, trial):
                log(f"latency: {name} at {rate:,.0f} positions/s for {length:.0f} s "
                    f"(trial {trial + 1}/{rounds}, load {os.getloadavg()[0]:.2f}) ...")
                r = _trial(name, PEERS[name], stack, tmp, rate, length, drain_s)
                r["trial"], r["load_1m"] = trial, round(os.getloadavg()[0], 2)
                runs[name].append(r)
        row: dict[str, Any] = {"seconds": length, "rounds": rounds, "peers": names}
        for name, results in runs.items():
            row[name] = summarise(results)
        row["ratios"] = {
            "storestream/aiokafka p99": ratio(row, "storestream", "aiokafka", "p99_ms"),
            "storestream/aiokafka redis p99": ratio(row, "storestream", "aiokafka",
                                                    "redis_p99_ms"),
            "storestream/aiokafka p50": ratio(row, "storestream", "aiokafka", "p50_ms"),
            "rules-on/rules-off p99": ratio(row, "rules-on", "rules-off", "p99_ms"),
            "rules-on/rules-off redis p99": ratio(row, "rules-on", "rules-off", "redis_p99_ms"),
        }
        log(f"latency: {rate:,.0f}/s ratios {row['ratios']}")
        out[f"{rate:.0f}/s"] = row
    return out


def warm_up(stack: DevStack, tmp: Path, names: Sequence[str], rate: float,
            drain_s: float) -> dict[str, Any]:
    """One untimed trial of every peer (:data:`WARMUP_TRIAL_S`), discarded, before the first
    round: the broker is started for the run, and its first seconds of traffic run on a
    cold JVM (interpreted, then compiled as it goes). Measured at 2,000 positions/s: the first
    trial after the broker started had p99 151-1,343 ms in each of 8 runs against 29-181 ms
    for the same peer's later trials, and that first trial was always the same peer's (the
    first of round 1). Returns each peer's p50/p99 (or error), for the record."""
    done: dict[str, Any] = {}
    for name in names:
        log(f"latency: warm-up, {name} at {rate:,.0f} positions/s for {WARMUP_TRIAL_S:.0f} s "
            "(not counted) ...")
        r = _trial(name, PEERS[name], stack, tmp, rate, WARMUP_TRIAL_S, drain_s)
        done[name] = ({"error": r["error"][:200]} if "error" in r
                      else {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]})
    return done


def _trial(name: str, peer: Callable[[DevStack, Path, float], AbstractContextManager[Window]],
           stack: DevStack, tmp: Path, rate: float, seconds: float,
           drain_s: float) -> dict[str, Any]:
    """One trial of one peer on a fresh deployment, Redis latency included; an error result
    when it failed."""
    try:
        with peer(stack, tmp, rate) as window:
            r = window(seconds, drain_s)
            time.sleep(0.5)  # a backstop delivery still on its way
            r.update(redis_latency(stack.redis_url, r["redis_stream"], r["run"],
                                   r["measure_from"]))
    except Exception as exc:
        log(f"latency: {name} FAILED: {exc}")
        return {"error": f"{exc}"[-2000:]}
    log(f"latency: {name}: p50 {r['p50_ms']} / p99 {r['p99_ms']} ms, Redis p50 "
        f"{r['redis_p50_ms']} / p99 {r['redis_p99_ms']} ms, {r['received']}/{r['sent']} "
        f"received, {r['redis_offers']} in Redis, steal {r['steal_percent']}%")
    return r


def format_table(section: dict[str, Any]) -> str:
    """The latency table: per rate and peer, medians of the per-trial figures (min-max)."""
    lines = [f"{'rate':>8} {'peer':12} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms (min-max)':>22} "
             f"{'Redis p99 ms (min-max)':>24} {'trials':>6} {'CPU%':>5}"]
    for rate, row in section.items():
        if rate == "warmup":
            lines.append(f"{'warm-up':>8} (not counted) " + ", ".join(
                f"{name} p99 {r.get('p99_ms', 'error')}" for name, r in row.items()))
            continue
        if not isinstance(row, dict) or "ratios" not in row:
            lines.append(f"{rate:>8} {row}")
            continue
        for name in PEERS:
            if name not in row:
                continue
            r = row[name]
            if "median_p99_ms" not in r:
                first = next((t.get("error", "") for t in r.get("per_trial", [])), "no trial")
                lines.append(f"{rate:>8} {name:12} error: {str(first).splitlines()[0][:60]}")
                continue
            span = "{:.0f}-{:.0f}".format(*r["min_max_p99_ms"])
            rspan = ("{:.0f}-{:.0f}".format(*r["min_max_redis_p99_ms"])
                     if "min_max_redis_p99_ms" in r else "-")
            lines.append(
                f"{rate:>8} {name:12} {r['median_p50_ms']:>8.1f} {r['median_p95_ms']:>8.1f} "
                f"{r['median_p99_ms']:>8.1f} ({span:>11}) "
                f"{r.get('median_redis_p99_ms', 0.0):>8.1f} ({rspan:>13}) "
                f"{r['ok_trials']:>3}/{r['trials']:<2} {r.get('median_cpu_percent', 0):>5.0f}"
                + (f"  {r['saturated_trials']} saturated" if r.get("saturated_trials") else ""))
        for label, value in row["ratios"].items():
            lines.append(f"{'':>8} {label:32} {value if value is not None else '-'}")
    return "\n".join(lines)
