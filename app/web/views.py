"""Web view: ``/customers/{user_id}/``, ``/promotions/``, ``/health`` and ``/metrics``
(DESIGN section 5)."""

from __future__ import annotations

import time
from typing import Any, cast

from app.delivery import parking
from app.faust_app import METRICS, app
from app.routing.misplaced import PLACEMENT
from app.runtime import local_state
from app.runtime.recovery import BULK_RESTORED
from app.runtime.replica import not_ready
from app.settings import SETTINGS
from app.web.readiness import waiting_for
from core.lift import summary
from core.loyalty import Basket, Spend, Stamps
from core.loyalty import customer_document as document
from tables.deadletters import DEAD_LETTERS
from tables.loyalty import CATALOGUE, RFM_CUTS, baskets, price_history, profiles, spend, stamps
from tables.offers import DISPLAYS, FIGURES, PROMOTIONS, figures_by_promotion

RULES = SETTINGS.loyalty


def customer_document(user_id: str) -> dict[str, Any] | None:
    """The customer's loyalty state as the web view serves it; ``None`` if never seen here."""
    raw_spend = spend.get(user_id)
    if raw_spend is None and profiles.get(user_id) is None:
        return None
    return document(
        user_id,
        Spend.from_json(raw_spend),
        Stamps.from_json(stamps.get(user_id)),
        Basket.from_json(baskets.get(user_id)),
        price_history,
        RULES,
        now=time.time(),
        rfm_cuts=RFM_CUTS.current,
    )


@app.page("/customers/{user_id}/")
@app.table_route(table=spend, match_info="user_id")
async def customer(web: Any, request: Any, user_id: str) -> Any:
    """A customer's spend, tier, coffee stamps and campaigns (served by the key's owner)."""
    if not is_ready():
        return web.json({"error": "not ready", "detail": "recovering state"}, status=503)
    document = customer_document(user_id)
    if document is None:
        return web.json({"error": "not found", "user_id": user_id}, status=404)
    return web.json(document)


@app.page("/promotions/")
async def promotion_figures(web: Any, request: Any) -> Any:
    """Every promotion's offers sent and held out, redemptions, conversion, revenue and lift
    (every worker's figures combined: each worker follows them all)."""
    if not is_ready() or not FIGURES.ready:
        return web.json({"error": "not ready", "detail": "recovering state"}, status=503)
    combined = figures_by_promotion()
    return web.json({"promotions": [summary(pid, combined[pid]) for pid in sorted(combined)]})


@app.page("/promotions/{pid}/")
async def promotion_figure(web: Any, request: Any, pid: str) -> Any:
    """One promotion's figures (404 when it never made an offer)."""
    if not is_ready() or not FIGURES.ready:
        return web.json({"error": "not ready", "detail": "recovering state"}, status=503)
    figures = figures_by_promotion().get(pid)
    if figures is None:
        return web.json({"error": "not found", "pid": pid}, status=404)
    return web.json(summary(pid, figures))


def is_ready() -> bool:
    """True once changelog recovery has finished and the worker is processing."""
    recovery = cast(Any, app.tables).recovery
    return bool(
        app.consumer is not None
        and recovery.completed.is_set()
        and not recovery.in_recovery
        and not app.rebalancing
        and CATALOGUE.ready
        and DISPLAYS.ready
        and PROMOTIONS.ready
        and DEAD_LETTERS.ready
    )


async def health(web: Any, request: Any) -> Any:
    """200 once recovered and processing; 503 before, with what the worker waits for
    (phases, table and topic names: no customer data, app/web/readiness.py). Input records
    placed otherwise than ``KEY_PARTITIONER`` puts their keys show as ``misplaced``
    (per topic: count, and the partitioners that fit them); they do not change the status;
    nor do deliveries waiting for Redis or Ably (``delivery_stalled``: how many, how long)."""
    misplaced = PLACEMENT.report()
    extra: dict[str, Any] = {"misplaced": misplaced} if misplaced else {}
    stalled = parking.stalled_report()
    if stalled:  # waiting for Redis or Ably: not a reason to restart the worker
        extra["delivery_stalled"] = stalled
    if is_ready():
        return web.json({"status": "ok", "ready": True, **extra})
    return web.json({"status": "starting", "ready": False,
                     "waiting_for": waiting_for(app, not_ready()), **extra}, status=503)


async def metrics(web: Any, request: Any) -> Any:
    """Prometheus text format."""
    METRICS.set("storestream_ready", 1.0 if is_ready() else 0.0)
    for name, replica in (("catalogue", CATALOGUE), ("displays", DISPLAYS),
                          ("promotions", PROMOTIONS)):
        METRICS.set("storestream_replica_keys", float(len(replica.data)), table=name)
        METRICS.set("storestream_replica_applied_total", float(replica.applied), table=name)
    METRICS.set("storestream_restored_records_total", float(BULK_RESTORED.records))
    for found in local_state.PREPARED:  # rocksdb://: local tables kept or deleted at start
        METRICS.set("storestream_local_state", 1.0, at_start=found)
    counts: dict[tuple[str, str], int] = getattr(app.consumer, "fetch_counts", dict)()
    for kind in ("changelog", "input"):
        for state in ("fetching", "paused"):
            METRICS.set("storestream_consumer_partitions", float(counts.get((kind, state), 0)),
                        kind=kind, state=state)
    return web.text(METRICS.render(), content_type="text/plain; version=0.0.4")


# Probes and scrapers call these without a trailing slash; Faust's own views use one.
for _path, _handler in (("/health", health), ("/metrics", metrics)):
    app.page(_path)(_handler)
    app.page(f"{_path}/")(_handler)
