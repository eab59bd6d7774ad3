"""Recovery time and memory of a storestream worker holding many customers.

For each store (``memory://``, and ``rocksdb://`` when ``rocksdict`` is importable), in a
fresh deployment:

1. an empty worker starts (``cold_start_s``: process start to ``/health`` 200) and its RSS
   is the baseline, then it is stopped;
2. the ``spend``, ``stamps`` and ``baskets`` changelogs are filled with the records a worker
   writes for N customers (``Spend``/``Stamps``/``Basket.to_json``, UTF-8 keys, the key's
   partition), which is how a worker holding N customers leaves them, in seconds instead of
   processing N purchases at the worker's current rate;
3. worker A starts and recovers them (``first_recovery_s``); RSS minus the baseline, scaled,
   is the memory per 100,000 customers; a sample of customers is checked through
   ``/customers/{id}/`` (a recovery that stopped early would show here, DESIGN section 7);
4. A gets SIGTERM; worker B starts on the same data dir: ``restart_s`` is B's process start
   to ``/health`` 200 (``sigterm_to_ready_s`` includes A's shutdown); the sample is checked
   again.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import time
from pathlib import Path
from typing import Any

import orjson

from app.dev.devstack import DevStack, TopicSpec
from bench.catalogue import T0
from bench.deploy import StoreDeployment, StoreWorker
from bench.workload import COMPACT_TOPIC_CONFIG, Record, create_topics, log, produce
from core.loyalty import Basket, Spend, Stamps
from core.tiers import tier_for

SETTLE_S = 2.0
SAMPLE = 50


def customer_records(customers: int, seed: int = 7) -> dict[str, list[Record]]:
    """Changelog records (per table) for ``customers`` customers, and nothing else."""
    rng = random.Random(seed)
    out: dict[str, list[Record]] = {"spend": [], "stamps": [], "baskets": []}
    for n in range(customers):
        user = f"r{n:07d}"
        key = user.encode()
        cents = rng.randrange(100, 60_000)
        purchases = rng.randrange(1, 40)
        coffee_cents = rng.randrange(0, min(cents, 5_000))
        spend = Spend(settled_cents=cents, watched_cents={"coffee": coffee_cents},
                      purchases=purchases, newest_ts=T0 + rng.random() * 86_400,
                      tier=tier_for(cents), last_offset=rng.randrange(0, 25_000))
        out["spend"].append((key, orjson.dumps(spend.to_json())))
        if rng.random() < 0.6:
            stamps = Stamps(total=rng.randrange(1, purchases + 1), last_offset=spend.last_offset)
            out["stamps"].append((key, orjson.dumps(stamps.to_json())))
        if rng.random() < 0.2:
            basket = Basket(products=frozenset({"coffee"}), last_offset=spend.last_offset)
            out["baskets"].append((key, orjson.dumps(basket.to_json())))
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


def one_store(stack: DevStack, tmp: Path, store: str, customers: int,
              timeout: float, baseline: bool = True) -> dict[str, Any]:
    """The four steps above for one store (without step 1 and the memory figure when
    ``baseline`` is false)."""
    label = store.split(":")[0]
    deployment = StoreDeployment(stack, tmp, f"rec-{label}", partitions=8,
                                 extra_env={"APP_STORE": store})
    deployment.create_topics()
    app_id = deployment.env["APP_ID"]
    asyncio.run(create_topics(stack.bootstrap, [
        TopicSpec(f"{app_id}-{table}-changelog", 8, COMPACT_TOPIC_CONFIG)
        for table in ("spend", "stamps", "baskets")
    ]))
    out: dict[str, Any] = {"store": store, "customers": customers}

    empty_rss = 0.0
    if baseline:
        empty = deployment.start_worker("empty")
        try:
            out["cold_start_s"] = round(empty.wait_ready(timeout), 2)
            empty_rss = _settled_rss(empty)
        finally:
            empty.stop()

    records = customer_records(customers)
    started = time.monotonic()
    for table, rows in records.items():
        asyncio.run(produce(stack.bootstrap, f"{app_id}-{table}-changelog", rows))
    out["changelog_records"] = sum(len(rows) for rows in records.values())
    out["fill_s"] = round(time.monotonic() - started, 2)
    sample = random.Random(3).sample([f"r{n:07d}" for n in range(customers)],
                                     min(SAMPLE, customers))
    want = expected(records, sample)

    first = deployment.start_worker("first")
    try:
        out["first_recovery_s"] = round(first.wait_ready(timeout), 2)
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

    second = deployment.start_worker("second")
    try:
        out["restart_s"] = round(second.wait_ready(timeout), 2)
        out["sigterm_to_ready_s"] = round(time.monotonic() - sigterm, 2)
        out["sample_ok_restart"] = f"{check_sample(second, want)}/{len(want)}"
    finally:
        second.stop()
    return out


def run(stack: DevStack, tmp: Path, quick: bool) -> dict[str, Any]:
    """Recovery and memory for every available store."""
    customers = 5_000 if quick else 100_000
    timeout = 180.0 if quick else 600.0
    stores = ["memory://"]
    if importlib.util.find_spec("rocksdict") is not None:
        stores.append("rocksdb://")
    out: dict[str, Any] = {}
    for store in stores:
        log(f"recovery: {store} with {customers:,} customers ...")
        try:
            # Quick runs take the empty-worker baseline (and memory figure) for memory:// only.
            out[store] = one_store(stack, tmp, store, customers, timeout,
                                   baseline=not quick or store == "memory://")
        except Exception as exc:
            out[store] = {"error": f"{exc}"[-2000:]}
            log(f"recovery: {store} FAILED: {exc}")
        else:
            r = out[store]
            log(f"recovery: {store}: first recovery {r['first_recovery_s']} s, restart "
                f"{r['restart_s']} s (empty cold start {r.get('cold_start_s', '-')} s), "
                f"{r.get('mb_per_100k_customers', '-')} MB/100k customers, sample "
                f"{r['sample_ok_restart']} after restart")
    if not importlib.util.find_spec("rocksdict"):
        out["rocksdb://"] = {"skipped": "rocksdict is not importable"}
    return out
