"""Every workaround made for the embedded broker (Tansu), measured on Apache Kafka.

``python -m bench.broker_workarounds [--quick] [--only SECTION,...]`` starts one Apache Kafka
4.4 node (KRaft) plus redis (:class:`app.dev.devstack.DevStack`) and measures, with the worker's
settings overridden per variant (issue 16, criterion 4):

``latency``
    location -> offer latency (p50/p99, offer topic) and location -> Redis latency (the
    offers stream entry's id, stamped by the redis server when the offer was pushed, minus the
    position's ``ts``), the worker's CPU at 500 positions/s and an idle worker's CPU, for
    ``FETCH_WAIT_MS`` 10 / 100 / 500, ``REFERENCE_FETCH_INTERVAL_MS`` 0 (against 100) and
    ``OFFER_BACKSTOP_MS`` 0 (against 1000), each trial a fresh deployment
    (:func:`bench.latency.storestream`). The variants take turns within one run (each round
    in another order, every other round reversed), so background load on this shared
    machine weighs on all of them alike; each trial records the host's load average and
    CPU steal.
``recovery``
    a restarted worker's recovery of N customers (changelogs filled as in
    :mod:`bench.recovery`) with ``RECOVERY_PROBE`` on / off, alternating, and how often the
    probe raised a target (the worker's log).
``replica``
    the replica's empty-fetch rule (``app/runtime/replica.py``): on a filled topic, the time from
    start to "position at the reported end offsets" and to the first empty fetch past them
    (what the replica waits for), at the replicas' fetch wait.
``session``
    a fresh worker's start -> ``/health`` 200 with ``BROKER_SESSION_TIMEOUT_S`` 6 / 10 / 30.
``failover``
    two workers; one is SIGKILLed; time until the other holds all input partitions and
    answers ``/health`` 200, with ``BROKER_SESSION_TIMEOUT_S`` 6 / 30.

Progress lines go to stderr; everything is written to ``bench/results/workarounds.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.dev.devstack import DevStack, TopicSpec, free_port
from bench import latency
from bench.deploy import BenchError, StoreDeployment, StoreWorker, wait_until
from bench.procstat import host_cpu_ticks, steal_percent
from bench.recovery import check_sample, customer_records, expected
from bench.workload import COMPACT_TOPIC_CONFIG, create_topics, delete_topics, log, produce

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "workarounds.json"  # --out overrides
#: Latency rounds (each: every variant once), rate (positions/s) and variants (names, or
#: empty for all); ``--rounds``, ``--rate`` and ``--variants`` override them.
ROUNDS = 4
RATE = 500.0
VARIANTS: list[str] = []
SECTIONS = ("latency", "recovery", "replica", "session", "failover")

#: Latency variants: name -> the worker's settings (explicit, so that they do not depend on
#: faust.ini's defaults of the day). Tansu's values: FETCH_WAIT_MS 10, fetch schedule 100 ms,
#: offers backstop 1000 ms; each ``...@500`` variant is the same at a 500 ms fetch wait.
_TANSU = {"FETCH_WAIT_MS": "10", "REFERENCE_FETCH_INTERVAL_MS": "100",
          "OFFER_BACKSTOP_MS": "1000"}
LATENCY_VARIANTS: dict[str, dict[str, str]] = {
    "FETCH_WAIT_MS=10": _TANSU,
    "FETCH_WAIT_MS=100": {**_TANSU, "FETCH_WAIT_MS": "100"},
    "FETCH_WAIT_MS=500": {**_TANSU, "FETCH_WAIT_MS": "500"},
    "REFERENCE_FETCH_INTERVAL_MS=0": {**_TANSU, "REFERENCE_FETCH_INTERVAL_MS": "0"},
    "OFFER_BACKSTOP_MS=0": {**_TANSU, "OFFER_BACKSTOP_MS": "0"},
    "REFERENCE_FETCH_INTERVAL_MS=0@500": {**_TANSU, "FETCH_WAIT_MS": "500",
                                          "REFERENCE_FETCH_INTERVAL_MS": "0"},
    "OFFER_BACKSTOP_MS=0@500": {**_TANSU, "FETCH_WAIT_MS": "500", "OFFER_BACKSTOP_MS": "0"},
}
#: The variants a run compares unless ``--variants`` names others.
DEFAULT_VARIANTS = ["FETCH_WAIT_MS=10", "FETCH_WAIT_MS=100", "FETCH_WAIT_MS=500",
                    "REFERENCE_FETCH_INTERVAL_MS=0", "OFFER_BACKSTOP_MS=0"]


def host_load() -> float:
    """The host's 1-minute load average (2 cores here; other engineers share them)."""
    return round(os.getloadavg()[0], 2)


def host_busy_ticks() -> tuple[int, int]:
    """``(busy, total)`` CPU ticks of the whole machine so far (``/proc/stat``)."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    total = sum(fields[:8])
    return total - fields[3] - fields[4], total  # idle and iowait are not busy


def rotation(names: list[str], round_no: int) -> list[str]:
    """Round ``round_no``'s order: rotated by the round, every other round reversed, so no
    variant always runs first or right after the same neighbour."""
    k = round_no % len(names)
    order = names[k:] + names[:k]
    return order[::-1] if round_no % 2 else order


def _median(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def redis_latency(redis_url: str, stream: str, since: float) -> dict[str, Any]:
    """Location -> Redis latency of the measured offers pushed since ``since`` (epoch s):
    each ``offers`` stream entry's id (ms, the redis server's clock on this host) minus the
    offer's position ``ts``; the first :data:`bench.latency.WARMUP_S` left out."""
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries: Any = client.xrange(stream, min=f"{int(since * 1000)}-0", max="+")
    finally:
        client.close()
    pairs: list[tuple[float, float]] = []
    for entry_id, fields in entries or ():
        if not str(fields.get("uid", "")).startswith("m"):
            continue
        ts = float(fields.get("ts", "0"))
        if ts >= since:
            pairs.append((ts, int(str(entry_id).split("-")[0]) / 1000))
    if not pairs:
        return {"redis_offers": 0}
    start = min(ts for ts, _ in pairs) + latency.WARMUP_S
    ms = [(pushed - ts) * 1000 for ts, pushed in pairs if ts >= start]
    return {"redis_offers": len(pairs), "redis_p50_ms": round(latency.percentile(ms, 50), 1),
            "redis_p99_ms": round(latency.percentile(ms, 99), 1)}


def latency_section(stack: DevStack, tmp: Path, quick: bool) -> dict[str, Any]:
    """Every latency variant, ABAB..., one fresh deployment per trial."""
    rounds, seconds, idle_s, drain_s = (1, 4.0, 2.0, 10.0) if quick else (ROUNDS, 10.0, 5.0, 20.0)
    rate = 200.0 if quick else RATE
    names = VARIANTS or DEFAULT_VARIANTS
    trials: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_no in range(rounds):
        for name in rotation(names, round_no):
            log(f"workarounds: latency {name}, {rate:.0f}/s for {seconds:.0f} s "
                f"(round {round_no + 1}/{rounds}, load {host_load()}) ...")
            load0 = host_load()
            try:
                with latency.storestream(stack, tmp, rate, env=LATENCY_VARIANTS[name],
                                         idle_s=idle_s) as window:
                    since, busy0 = time.time(), host_busy_ticks()
                    r = window(seconds, drain_s)
                    busy1 = host_busy_ticks()
                    # Every process's CPU, ours included: near 100% the trial was contended.
                    r["host_busy_percent"] = round(
                        100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 1)
                    time.sleep(0.5)  # a backstop delivery still on its way
                    r.update(redis_latency(stack.redis_url, r["redis_stream"], since))
            except Exception as exc:
                log(f"workarounds: latency {name} FAILED: {exc}")
                r = {"error": f"{exc}"[-2000:]}
            r["load_before"], r["load_after"] = load0, host_load()
            if r.get("received") and r.get("cpu_seconds") is not None:
                # CPU per offer over the whole window (warm-up and drain included): unlike
                # CPU %, not diluted when a starved worker takes longer to drain.
                r["cpu_ms_per_offer"] = round(1000 * r["cpu_seconds"] / r["received"], 3)
            r["round"] = round_no
            trials[name].append(r)
            if "error" not in r:
                log(f"workarounds: {name}: p50 {r['p50_ms']} / p99 {r['p99_ms']} ms, redis "
                    f"p50 {r.get('redis_p50_ms')} / p99 {r.get('redis_p99_ms')} ms, CPU "
                    f"{r['cpu_percent']}% ({r.get('cpu_ms_per_offer')} ms/offer), idle CPU "
                    f"{r.get('idle_cpu_percent')}%, "
                    f"{r['received']}/{r['sent']}, steal {r['steal_percent']}%, "
                    f"load {r['load_after']}")
    out: dict[str, Any] = {"rate": rate, "seconds": seconds, "idle_s": idle_s, "variants": {}}
    base = trials[names[0]]
    for name, results in trials.items():
        done = [t for t in results if "error" not in t]
        # Per round, this variant's figure over the default's of the same round: the rounds
        # ran minutes apart under other loads, a round's trials within about two minutes.
        paired = {key: _median([t[key] / b[key] for t, b in zip(results, base, strict=False)
                                if "error" not in t and "error" not in b and b.get(key)])
                  for key in ("p50_ms", "p99_ms", "redis_p99_ms", "cpu_ms_per_offer")}
        out["variants"][name] = {
            "env": LATENCY_VARIANTS[name],  # the first variant is the one compared against
            "median_ratio_to_default_same_round": paired,
            "median": {key: _median([t.get(key) for t in done]) for key in (
                "p50_ms", "p99_ms", "redis_p50_ms", "redis_p99_ms", "cpu_percent",
                "cpu_ms_per_offer",
                "idle_cpu_percent", "steal_percent", "host_busy_percent", "load_after")},
            "trials": results,
        }
    return out


def _worker_log_count(worker: StoreWorker, pattern: str) -> int:
    return len(re.findall(pattern, worker.log_text()))


def recovery_section(stack: DevStack, tmp: Path, quick: bool) -> dict[str, Any]:
    """Restart -> ``/health`` 200 with N customers, ``RECOVERY_PROBE`` on and off by turns."""
    customers, rounds = (2_000, 1) if quick else (50_000, 3)
    deployment = StoreDeployment(stack, tmp, "wa-rec", partitions=8)
    deployment.create_topics()
    app_id = deployment.env["APP_ID"]
    asyncio.run(create_topics(stack.bootstrap, [
        TopicSpec(f"{app_id}-{table}-changelog", 8, COMPACT_TOPIC_CONFIG)
        for table in ("spend", "stamps", "baskets")]))
    records = customer_records(customers)
    for table, rows in records.items():
        asyncio.run(produce(stack.bootstrap, f"{app_id}-{table}-changelog", rows))
    sample = random.Random(3).sample([f"r{n:07d}" for n in range(customers)], 50)
    want = expected(records, sample)
    trials: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    try:
        for round_no in range(rounds):
            for probe in (("on", "off") if round_no % 2 == 0 else ("off", "on")):
                deployment.env["RECOVERY_PROBE"] = probe
                load0 = host_load()
                log(f"workarounds: recovery of {customers:,} customers, RECOVERY_PROBE="
                    f"{probe} (round {round_no + 1}/{rounds}, load {load0}) ...")
                worker = deployment.start_worker(f"rec-{probe}-{round_no}")
                try:
                    ready_s = worker.wait_ready(600)
                    text = worker.log_text()
                    probe_s = [float(x) for x in re.findall(
                        r"changelog partitions: ([0-9.]+) s, none raised", text)]
                    r = {"ready_s": round(ready_s, 2), "load_before": load0,
                         "load_after": host_load(),
                         "raised_lines": _worker_log_count(worker, "highwaters raised past"),
                         "probes_none_raised": len(probe_s),
                         "probe_s": probe_s,
                         "sample_ok": f"{check_sample(worker, want)}/{len(want)}"}
                except Exception as exc:
                    r = {"error": f"{exc}"[-2000:]}
                finally:
                    worker.stop()
                trials[probe].append(r)
                log(f"workarounds: RECOVERY_PROBE={probe}: {r}")
    finally:
        deployment.stop()
        _delete(stack, [deployment.prefix, f"{app_id}-"])
    return {"customers": customers,
            "changelog_records": sum(len(rows) for rows in records.values()),
            "median_ready_s": {k: _median([t.get("ready_s") for t in v if "error" not in t])
                               for k, v in trials.items()},
            "trials": trials}


async def _replica_timing(bootstrap: str, topic: str, fetch_wait_ms: int) -> dict[str, Any]:
    """The replica's loop (``app/runtime/replica.py`` ``TopicReplica.run``), timed: when the
    position reached the reported end offsets, and when the first empty fetch past them
    came back."""
    started = time.monotonic()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                group_id=None, auto_offset_reset="earliest",
                                fetch_max_wait_ms=fetch_wait_ms)
    await consumer.start()
    try:
        found = consumer.partitions_for_topic(topic)
        while not found and time.monotonic() - started < 30:
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
            found = consumer.partitions_for_topic(topic)
        if not found:
            raise BenchError(f"topic {topic} never appeared")
        partitions = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        targets = await consumer.end_offsets(partitions)
        reached_at: float | None = None
        records = 0
        while True:
            batch = await consumer.getmany(timeout_ms=fetch_wait_ms)
            records += sum(len(r) for r in batch.values())
            at_end = all([await consumer.position(tp) >= end for tp, end in targets.items()])
            if at_end and reached_at is None:
                reached_at = time.monotonic() - started
            if at_end and not batch and reached_at is not None:
                return {"records": records, "reached_end_offsets_s": round(reached_at, 3),
                        "empty_fetch_ready_s": round(time.monotonic() - started, 3)}
    finally:
        await consumer.stop()


def replica_section(stack: DevStack, tmp: Path, quick: bool) -> dict[str, Any]:
    """The empty-fetch rule's cost at the replicas' fetch wait, on filled and empty topics."""
    from app.runtime.replica import REPLICA_FETCH_WAIT_MS

    rounds = 1 if quick else 3
    topic = f"bench-wa-replica-{uuid.uuid4().hex[:6]}"
    empty = f"{topic}-empty"
    asyncio.run(create_topics(stack.bootstrap, [TopicSpec(topic, 4, COMPACT_TOPIC_CONFIG),
                                                TopicSpec(empty, 4, COMPACT_TOPIC_CONFIG)]))
    rows = [(f"sku{n}".encode(), orjson.dumps({"sku": n, "price": n % 97}))
            for n in range(20_000)]
    asyncio.run(produce(stack.bootstrap, topic, rows))
    out: dict[str, Any] = {"fetch_wait_ms": REPLICA_FETCH_WAIT_MS}
    out["note"] = (
        "times count from the consumer's start (connection and metadata included)")
    out.update(filled=[], empty=[])
    try:
        for _ in range(rounds):
            for name, t in (("filled", topic), ("empty", empty)):
                r = asyncio.run(_replica_timing(stack.bootstrap, t, REPLICA_FETCH_WAIT_MS))
                r["rule_cost_s"] = round(r["empty_fetch_ready_s"] - r["reached_end_offsets_s"],
                                         3)
                out[name].append(r)
                log(f"workarounds: replica ({name} topic): {r}")
    finally:
        _delete(stack, [topic])
    return out


def session_section(stack: DevStack, tmp: Path, quick: bool) -> dict[str, Any]:
    """A fresh worker's start -> ``/health`` 200 per session timeout (fresh group each)."""
    values, rounds = ["6", "10", "30"], (1 if quick else 3)
    trials: dict[str, list[dict[str, Any]]] = {v: [] for v in values}
    for round_no in range(rounds):
        for value in rotation(values, round_no):
            deployment = StoreDeployment(stack, tmp, f"wa-s{value}", partitions=8,
                                         extra_env={"BROKER_SESSION_TIMEOUT_S": value})
            load0 = host_load()
            try:
                deployment.create_topics()
                worker = deployment.start_worker("s")
                r: dict[str, Any] = {"ready_s": round(worker.wait_ready(180), 2)}
            except Exception as exc:
                r = {"error": f"{exc}"[-2000:]}
            finally:
                deployment.stop()
                _delete(stack, [deployment.prefix, f"{deployment.env['APP_ID']}-"])
            r.update(load_before=load0, load_after=host_load())
            trials[value].append(r)
            log(f"workarounds: BROKER_SESSION_TIMEOUT_S={value}: start -> /health 200 {r}")
    return {"median_ready_s": {k: _median([t.get("ready_s") for t in v if "error" not in t])
                               for k, v in trials.items()}, "trials": trials}


def _inputs(worker: StoreWorker) -> float:
    return worker.metric("storestream_consumer_partitions", kind="input")


def _failover_trial(stack: DevStack, tmp: Path, value: str) -> dict[str, Any]:
    deployment = StoreDeployment(stack, tmp, f"wa-f{value}", partitions=8,
                                 extra_env={"BROKER_SESSION_TIMEOUT_S": value})
    try:
        deployment.create_topics()
        a, b = deployment.start_worker("a"), deployment.start_worker("b")
        a.wait_ready(180)
        b.wait_ready(180)
        total: list[float] = []

        def balanced() -> bool:
            ia, ib = _inputs(a), _inputs(b)
            total.append(ia + ib)
            return (ia > 0 and ib > 0 and a.healthy() and b.healthy()
                    and len(total) >= 3 and total[-1] == total[-2] == total[-3])
        wait_until("both workers holding input partitions", balanced, 120, 0.5)
        everything, before = total[-1], _inputs(b)
        killed = time.monotonic()
        os.killpg(a.process.pid, signal.SIGKILL)
        wait_until("the survivor holding every input partition",
                   lambda: _inputs(b) >= everything, 120, 0.1)
        assigned = time.monotonic() - killed
        wait_until("the survivor's /health 200", b.healthy, 120, 0.1)
        return {"input_partitions": everything, "survivor_had": before,
                "kill_to_assigned_s": round(assigned, 2),
                "kill_to_ready_s": round(time.monotonic() - killed, 2)}
    finally:
        deployment.stop()
        _delete(stack, [deployment.prefix, f"{deployment.env['APP_ID']}-"])


def failover_section(stack: DevStack, tmp: Path, quick: bool) -> dict[str, Any]:
    """SIGKILL one of two workers: time until the other holds every input partition and
    answers ``/health`` 200."""
    values, rounds = ["6", "30"], (1 if quick else 2)
    trials: dict[str, list[dict[str, Any]]] = {v: [] for v in values}
    for round_no in range(rounds):
        for value in (values if round_no % 2 == 0 else values[::-1]):
            load0 = host_load()
            try:
                r = _failover_trial(stack, tmp, value)
            except Exception as exc:
                r = {"error": f"{exc}"[-2000:]}
            r.update(load_before=load0, load_after=host_load())
            trials[value].append(r)
            log(f"workarounds: BROKER_SESSION_TIMEOUT_S={value}: failover {r}")
    return {"median_kill_to_ready_s": {
        k: _median([t.get("kill_to_ready_s") for t in v if "error" not in t])
        for k, v in trials.items()}, "trials": trials}


def _delete(stack: DevStack, prefixes: list[str]) -> None:
    try:
        asyncio.run(delete_topics(stack.bootstrap, prefixes))
    except Exception as exc:
        log(f"workarounds: could not delete {prefixes}: {exc}")


RUNNERS: Mapping[str, Callable[[DevStack, Path, bool], dict[str, Any]]] = {
    "latency": latency_section, "recovery": recovery_section, "replica": replica_section,
    "session": session_section, "failover": failover_section,
}


def main(argv: list[str] | None = None) -> int:
    global ROUNDS, RATE
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round each")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help=f"latency rounds, each variant once per round (default {ROUNDS})")
    parser.add_argument("--rate", type=float, default=RATE,
                        help=f"latency: positions per second (default {RATE:g})")
    parser.add_argument("--variants", default="",
                        help="latency: comma-separated variant names (default all; the first "
                             f"is the baseline): {', '.join(LATENCY_VARIANTS)}")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"default {RESULTS}")
    args = parser.parse_args(argv)
    ROUNDS, RATE = args.rounds, args.rate
    VARIANTS[:] = [v.strip() for v in args.variants.split(",") if v.strip()]
    if any(v not in LATENCY_VARIANTS for v in VARIANTS):
        parser.error(f"--variants: choose from {list(LATENCY_VARIANTS)}")
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in RUNNERS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    tmp = Path(tempfile.mkdtemp(prefix="storestream-workarounds-"))
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "broker": "kafka", "quick": args.quick, "cpus": os.cpu_count(),
                              "argv": argv if argv is not None else sys.argv[1:]}
    log(f"workarounds: Apache Kafka + redis starting; logs in {tmp}")
    failed = False
    host0 = host_cpu_ticks()
    try:
        with DevStack(free_port(), free_port(), broker="kafka",
                      startup_timeout=90.0) as stack:
            for section in chosen:
                started = time.monotonic()
                try:
                    report[section] = RUNNERS[section](stack, tmp, args.quick)
                except (BenchError, Exception) as exc:
                    failed = True
                    report[section] = {"error": f"{exc}"[-2000:]}
                    log(f"workarounds: {section} FAILED: {exc}")
                report[section]["section_s"] = round(time.monotonic() - started, 1)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    finally:
        report["host_steal_percent"] = steal_percent(host0, host_cpu_ticks())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        if failed:
            log(f"workarounds: process logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"workarounds: results in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
