"""Restore speed, recovery time and memory of a storestream worker holding many customers,
against Kafka Streams restoring the same changelog records.

For each row (:func:`plan`: ``memory://`` and ``rocksdb://``, 100,000 and 1,000,000 customers;
``memory://`` with Faust's own per-event restore, ``RECOVERY_BULK=off``, at 100,000 as the
before-figure; ``memory://`` with ``TIER_WINDOW_DAYS=365`` for issue 22's memory row), in a
fresh deployment:

1. an empty worker starts (``cold_start_s``: process start to ``/health`` 200) and its RSS
   is the baseline, then it is stopped;
2. the ``spend``, ``stamps`` and ``baskets`` changelogs are filled with the records a worker
   writes for N customers (``Spend``/``Stamps``/``Basket.to_json``, UTF-8 keys, the key's
   partition), which is how a worker holding N customers leaves them, in seconds instead of
   processing N purchases at the worker's current rate; with a tier window, each customer's
   spend is spread over up to 60 day buckets of the last year (:func:`customer_records`);
3. worker A starts and restores them: ``restore_s`` is the worker's own restore window (its
   log: from "Highwater for active changelog partitions" to "Recovery complete"),
   ``records_per_s`` the changelog records over it, ``first_recovery_s`` process start to
   ``/health`` 200; RSS minus the baseline, scaled, is the memory per 100,000 customers; a
   sample of customers is checked through ``/customers/{id}/`` (no figure when one is wrong);
4. A gets SIGTERM; worker B starts on the same data dir: ``restart_s`` is B's process start
   to ``/health`` 200 (``sigterm_to_ready_s`` includes A's shutdown); the sample is checked
   again.

Kafka Streams (:func:`bench.kstreams_peer.run_restore`, in-memory and RocksDB stores) restores
changelogs holding the very same records (bytes) into stores of the same names, on a fresh
state directory (as worker A); its restore window is a ``StateRestoreListener``'s first start
to last end.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import time
from pathlib import Path
from typing import Any

import orjson

from app.dev.devstack import DevStack, TopicSpec
from bench import kstreams_peer
from bench.catalogue import T0
from bench.deploy import StoreDeployment, StoreWorker
from bench.workload import COMPACT_TOPIC_CONFIG, Record, create_topics, held_json, log, produce
from core.day_buckets import DayBuckets
from core.loyalty import Basket, Spend, Stamps
from core.tiers import tier_for

SETTLE_S = 2.0
SAMPLE = 50


#: Day buckets of a customer's spend with a tier window: up to this many distinct days.
MAX_DAYS = 60


def customer_records(customers: int, seed: int = 7,
                     window_days: int = 0) -> dict[str, list[Record]]:
    """Changelog records (per table) for ``customers`` customers, and nothing else.

    ``window_days`` > 0: each customer's spend is split over 1 to :data:`MAX_DAYS` distinct
    days of the last ``window_days`` (the day buckets a rolling-tier worker keeps)."""
    rng = random.Random(seed)
    day_rng = random.Random(seed + 1)  # its own, so the other fields match the lifetime run's
    out: dict[str, list[Record]] = {"spend": [], "stamps": [], "baskets": []}
    today = int(T0 // 86_400)
    for n in range(customers):
        user = f"r{n:07d}"
        key = user.encode()
        cents = rng.randrange(100, 60_000)
        purchases = rng.randrange(1, 40)
        coffee_cents = rng.randrange(0, min(cents, 5_000))
        days: dict[int, int] = {}
        if window_days:
            picked = day_rng.sample(range(today - window_days + 1, today + 1),
                                    min(window_days, day_rng.randrange(1, MAX_DAYS + 1)))
            shares = [day_rng.randrange(1, 1_000) for _ in picked]
            left = cents
            for i, (day, share) in enumerate(zip(picked, shares, strict=True)):
                part = left if i == len(picked) - 1 else cents * share // sum(shares)
                days[day] = part
                left -= part
        spend = Spend(settled_cents=cents, watched_cents={"coffee": coffee_cents},
                      purchases=purchases, newest_ts=T0 + rng.random() * 86_400,
                      tier=tier_for(cents), last_offset=rng.randrange(0, 25_000),
                      days=DayBuckets.of(days))
        out["spend"].append((key, held_json(spend.to_json())))
        if rng.random() < 0.6:
            stamps = Stamps(total=rng.randrange(1, purchases + 1), last_offset=spend.last_offset)
            out["stamps"].append((key, held_json(stamps.to_json())))
        if rng.random() < 0.2:
            basket = Basket(products=frozenset({"coffee"}), last_offset=spend.last_offset)
            out["baskets"].append((key, held_json(basket.to_json())))
    return out


def expected(records: dict[str, list[Record]], users: list[str]) -> dict[str, tuple[Any, ...]]:
    """``(total, coffee total)`` each sampled customer must show after recovery."""
    wanted = set(users)
    totals: dict[str, float] = {}
    coffee: dict[str, int] = {}
    for key, raw in records["spend"]:
        if (user := key.decode()) in wanted:
            totals[user] = orjson.loads(raw)["settled_cents"] / 100
    for key, raw in records["stamps"]:
        if (user := key.decode()) in wanted:
            coffee[user] = orjson.loads(raw)["total"]
    return {u: (totals[u], coffee.get(u, 0)) for u in users}


def check_sample(worker: StoreWorker, want: dict[str, tuple[Any, ...]]) -> int:
    """How many sampled customers the worker serves with the expected total and stamps."""
    good = 0
    for user, (total, coffee) in want.items():
        status, body = worker.get(f"/customers/{user}/")
        if status == 200:
            doc = orjson.loads(body)
            if abs(float(doc["total"]) - total) < 0.005 and doc["coffee"]["total"] == coffee:
                good += 1
    return good


def _settled_rss(worker: StoreWorker) -> float:
    time.sleep(SETTLE_S)
    return worker.memory_mb()[0]


#: The worker's log lines that open and close its restore window (Faust's, in both paths).
RESTORE_FROM = "Highwater for active changelog partitions"
RESTORE_TO = "Recovery complete"


def restore_window(log_text: str) -> float | None:
    """Seconds between the first :data:`RESTORE_FROM` line of a worker's log and the first
    :data:`RESTORE_TO` line after it (``[YYYY-mm-dd HH:MM:SS,mmm]`` stamps)."""
    import datetime

    start: datetime.datetime | None = None
    for line in log_text.splitlines():
        if RESTORE_FROM in line or (start is not None and RESTORE_TO in line):
            stamp = datetime.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
            if start is None:
                start = stamp
            elif RESTORE_TO in line:
                return (stamp - start).total_seconds()
    return None


def one_store(stack: DevStack, tmp: Path, store: str, customers: int, timeout: float,
              baseline: bool = True, env: dict[str, str] | None = None,
              records: dict[str, list[Record]] | None = None,
              restart: bool = True) -> dict[str, Any]:
    """The four steps above for one store (without step 1 and the memory figure when
    ``baseline`` is false, without step 4 when ``restart`` is false); ``env``: extra worker
    settings; ``records``: the changelog records (else :func:`customer_records`)."""
    label = store.split(":")[0]
    deployment = StoreDeployment(stack, tmp, f"rec-{label}", partitions=8,
                                 extra_env={"APP_STORE": store, **(env or {})})
    deployment.create_topics()
    app_id = deployment.env["APP_ID"]
    asyncio.run(create_topics(stack.bootstrap, [
        TopicSpec(f"{app_id}-{table}-changelog", 8, COMPACT_TOPIC_CONFIG)
        for table in ("spend", "stamps", "baskets")
    ]))
    out: dict[str, Any] = {"store": store, "customers": customers, "env": env or {}}

    empty_rss = 0.0
    if baseline:
        empty = deployment.start_worker("empty")
        try:
            out["cold_start_s"] = round(empty.wait_ready(timeout), 2)
            empty_rss = _settled_rss(empty)
        finally:
            empty.stop()

    records = records if records is not None else customer_records(customers)
    started = time.monotonic()
    for table, rows in records.items():
        asyncio.run(produce(stack.bootstrap, f"{app_id}-{table}-changelog", rows))
    out["changelog_records"] = total = sum(len(rows) for rows in records.values())
    out["fill_s"] = round(time.monotonic() - started, 2)
    sample = random.Random(3).sample([f"r{n:07d}" for n in range(customers)],
                                     min(SAMPLE, customers))
    want = expected(records, sample)

    first = deployment.start_worker("first")
    try:
        out["first_recovery_s"] = round(first.wait_ready(timeout), 2)
        restore_s = restore_window(first.log_text())
        if restore_s is not None:
            out["restore_s"] = round(restore_s, 2)
            out["records_per_s"] = round(total / max(restore_s, 1e-3))
        loaded = _settled_rss(first)
        out["rss_loaded_mb"] = round(loaded, 1)
        if baseline:
            out["rss_empty_mb"] = round(empty_rss, 1)
            out["mb_per_100k_customers"] = round((loaded - empty_rss) * 100_000 / customers, 1)
        out["sample_ok_first"] = f"{check_sample(first, want)}/{len(want)}"
        sigterm = time.monotonic()
        out["stop_s"] = round(first.stop(), 2)
    finally:
        first.stop()
    if out["sample_ok_first"] != f"{len(want)}/{len(want)}":
        out["error"] = f"wrong customers after the restore: {out['sample_ok_first']} right"
    if not restart:
        return out

    second = deployment.start_worker("second")
    try:
        out["restart_s"] = round(second.wait_ready(timeout), 2)
        out["sigterm_to_ready_s"] = round(time.monotonic() - sigterm, 2)
        out["sample_ok_restart"] = f"{check_sample(second, want)}/{len(want)}"
    finally:
        second.stop()
    return out


#: Row label -> (store, extra worker env, the sizes it runs at: ``quick``, ``small`` (the
#: first size of a full run), ``large`` (the others)).
ROWS: dict[str, tuple[str, dict[str, str], tuple[str, ...]]] = {
    "memory://": ("memory://", {}, ("quick", "small", "large")),
    "memory:// Faust restore": ("memory://", {"RECOVERY_BULK": "off"}, ("small",)),
    "memory:// 365-day tiers": ("memory://", {"TIER_WINDOW_DAYS": "365"}, ("small",)),
    "rocksdb://": ("rocksdb://", {}, ("quick", "small", "large")),
}


def run(stack: DevStack, tmp: Path, quick: bool,
        sizes: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Every row of :data:`ROWS` and Kafka Streams at each size (100,000 and 1,000,000
    customers; quick: 5,000, storestream's two stores only): ``{"<N> customers": {row:
    result, "ratios": ...}}``."""
    sizes = sizes or ((5_000,) if quick else (100_000, 1_000_000))
    timeout = 180.0 if quick else 900.0
    rocksdb = importlib.util.find_spec("rocksdict") is not None
    out: dict[str, Any] = {}
    for index, customers in enumerate(sizes):
        kind = "quick" if quick else "small" if index == 0 else "large"
        section: dict[str, Any] = {}
        plain = customer_records(customers)
        for label, (store, env, kinds) in ROWS.items():
            if kind not in kinds:
                continue
            if store == "rocksdb://" and not rocksdb:
                section[label] = {"skipped": "rocksdict is not importable"}
                continue
            log(f"recovery: {label} with {customers:,} customers (load "
                f"{os.getloadavg()[0]:.2f}) ...")
            window = int(env.get("TIER_WINDOW_DAYS", "0"))
            try:
                section[label] = r = one_store(
                    stack, tmp, store, customers, timeout,
                    baseline="RECOVERY_BULK" not in env and (store == "memory://" or not quick),
                    env=env,
                    records=customer_records(customers, window_days=window) if window
                    else plain,
                    restart=not env)
            except Exception as exc:
                section[label] = {"error": f"{exc}"[-2000:]}
                log(f"recovery: {label} FAILED: {exc}")
                continue
            log(f"recovery: {label}: restore {r.get('restore_s')} s "
                f"({r.get('records_per_s')} records/s), start -> ready "
                f"{r['first_recovery_s']} s, {r.get('mb_per_100k_customers', '-')} MB/100k, "
                f"sample {r['sample_ok_first']}" + (f", restart {r['restart_s']} s"
                                                    if "restart_s" in r else ""))
        for ks_store in () if quick else ("memory", "rocksdb"):
            label = f"kstreams {ks_store}"
            log(f"recovery: Kafka Streams ({ks_store} stores) restoring the same "
                f"{sum(len(v) for v in plain.values()):,} records ...")
            try:
                section[label] = r = kstreams_peer.run_restore(stack, tmp, ks_store, plain,
                                                               timeout)
            except Exception as exc:
                section[label] = {"error": f"{exc}"[-2000:]}
                log(f"recovery: {label} FAILED: {exc}")
                continue
            log(f"recovery: {label}: restore {r.get('restore_s')} s "
                f"({r.get('records_per_s')} records/s), start -> running "
                f"{r.get('start_to_running_s')} s {r.get('error', '')}")
        section["ratios"] = ratios(section)
        log(f"recovery: {customers:,} customers: {section['ratios']}")
        out[f"{customers} customers"] = section
    return out


def _figure(row: Any, key: str) -> float | None:
    if not isinstance(row, dict) or "error" in row or row.get(key) is None:
        return None
    return float(row[key])


def ratios(section: dict[str, Any]) -> dict[str, float | None]:
    """Restore speed and memory ratios within one size of one run."""
    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a is not None and b else None

    mem, rocks = section.get("memory://"), section.get("rocksdb://")
    return {
        "memory:// bulk / Faust restore, records/s": div(
            _figure(mem, "records_per_s"),
            _figure(section.get("memory:// Faust restore"), "records_per_s")),
        "memory:// / Kafka Streams memory, records/s": div(
            _figure(mem, "records_per_s"),
            _figure(section.get("kstreams memory"), "records_per_s")),
        "rocksdb:// / Kafka Streams rocksdb, records/s": div(
            _figure(rocks, "records_per_s"),
            _figure(section.get("kstreams rocksdb"), "records_per_s")),
        "365-day / lifetime tiers, MB per 100k": div(
            _figure(section.get("memory:// 365-day tiers"), "mb_per_100k_customers"),
            _figure(mem, "mb_per_100k_customers")),
    }


def format_table(section: dict[str, Any]) -> str:
    """The recovery table: per size and row, restore speed, times and memory."""
    lines = [f"{'customers':>9} {'row':26} {'records':>9} {'restore s':>9} {'records/s':>10} "
             f"{'start->ready s':>14} {'restart s':>9} {'MB/100k':>8} {'sample':>7}"]
    for size, rows in section.items():
        if not isinstance(rows, dict):
            continue
        for label, r in rows.items():
            if label == "ratios":
                continue
            if not isinstance(r, dict) or "error" in r or "skipped" in r:
                text = (r or {}).get("error") or (r or {}).get("skipped")
                lines.append(f"{size.split()[0]:>9} {label:26} {str(text).splitlines()[0][:70]}")
                continue
            ready = r.get("first_recovery_s", r.get("start_to_running_s"))
            lines.append(
                f"{size.split()[0]:>9} {label:26} {r.get('changelog_records', 0):>9} "
                f"{_num(r.get('restore_s')):>9} {_num(r.get('records_per_s')):>10} "
                f"{_num(ready):>14} {_num(r.get('restart_s')):>9} "
                f"{_num(r.get('mb_per_100k_customers')):>8} {r.get('sample_ok_first', '-'):>7}")
        for name, value in rows.get("ratios", {}).items():
            lines.append(f"{'':>9} {name:48} {value if value is not None else '-'}")
    return "\n".join(lines)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if isinstance(value, int) or float(value) >= 1000 else f"{value:.2f}"
