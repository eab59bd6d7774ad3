"""Peer: a stock Faust app (``async for`` + ``Table(default=...)``, memory store).

Run as a worker: ``python -m faust -A bench.stock_faust_app worker``, configured by
``BROKER_URL``, ``BENCH_APP_ID``, ``BENCH_PREFIX``, ``BENCH_PARTITIONS``, ``BENCH_EXPECT``,
``BENCH_MAX_S`` (cuts the window short) and ``BENCH_DATADIR``. Per customer: running spend
(``Table(default=float)``) and coffee count (``Table(default=int)``), both changelog-backed,
as in Faust's word-count example. Only the session timeout is changed from Faust's defaults
(so the group forms in seconds on the embedded broker, DESIGN section 7); the 1.5 s fetch
wait is Faust's own. When ``BENCH_EXPECT`` purchases are processed (or ``BENCH_MAX_S`` has
passed) it prints one ``BENCH_RESULT`` line.
"""

from __future__ import annotations

import os
from typing import Any

import faust

from bench.catalogue import STAMP_PRODUCT, price_of
from bench.procstat import Window, emit_result, now, self_cpu_seconds

PREFIX = os.environ.get("BENCH_PREFIX", "")
EXPECT = int(os.environ.get("BENCH_EXPECT", "0"))
MAX_S = float(os.environ.get("BENCH_MAX_S", "inf"))

app = faust.App(
    os.environ.get("BENCH_APP_ID", "bench-stock-faust"),
    broker=os.environ.get("BROKER_URL", "kafka://localhost:9092"),
    store="memory://",
    datadir=os.environ.get("BENCH_DATADIR", "bench-stock-faust-data"),
    topic_partitions=int(os.environ.get("BENCH_PARTITIONS", "8")),
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=10,
    web_enabled=False,
)
purchases = app.topic(f"{PREFIX}purchases", key_type=bytes, key_serializer="raw",
                      value_serializer="json")
spend = app.Table("spend", default=float, partitions=app.conf.topic_partitions)
coffee = app.Table("coffee", default=int, partitions=app.conf.topic_partitions)
WINDOW = Window()


@app.agent(purchases)
async def tally(stream: Any) -> None:
    """Running spend and coffee count per customer."""
    async for key, event in stream.items():
        if WINDOW.events == 0:
            WINDOW.wall_start, WINDOW.cpu_start = now(), self_cpu_seconds()
        user = key.decode()
        price = event.get("price")
        product = event["product_id"]
        spend[user] += price if price is not None else price_of(product)
        if product == STAMP_PRODUCT:
            coffee[user] += 1
        WINDOW.events += 1
        if WINDOW.events == EXPECT or (
                not WINDOW.wall_end and now() - WINDOW.wall_start >= MAX_S):
            WINDOW.wall_end, WINDOW.cpu_end = now(), self_cpu_seconds()
            emit_result(WINDOW, customers=len(spend), complete=WINDOW.events >= EXPECT)
