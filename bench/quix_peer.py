"""Peer: Quix Streams doing the same aggregation, with its RocksDB (or memory) state and changelog.

Runs as its own process: ``python -m bench.quix_peer --bootstrap H:P --prefix P --expect N``.
The per-customer ``[spend, coffee]`` lives in Quix's RocksDB store, backed by the changelog
topic Quix creates (it derives the changelog's settings from the source topic, which
therefore has ``retention.ms`` set explicitly). The window runs from the first event to the
``expect``-th event processed (or the first after ``--max-seconds``), printed as one
``BENCH_RESULT`` line.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from typing import Any

from bench.catalogue import STAMP_PRODUCT, price_of
from bench.procstat import Window, emit_result, now, self_cpu_seconds


def run(bootstrap: str, prefix: str, expect: int, max_s: float, store: str = "rocksdb") -> None:
    """Aggregate ``expect`` purchases (or for ``max_s`` seconds) in a ``store`` (``rocksdb``,
    Quix's default, or ``memory``) store; print the window."""
    from quixstreams import Application
    from quixstreams.state.memory.store import MemoryStore

    window = Window()
    with tempfile.TemporaryDirectory(prefix="bench-quix-") as state_dir:
        app = Application(
            broker_address=bootstrap, consumer_group=f"{prefix}quix",
            auto_offset_reset="earliest", state_dir=state_dir, loglevel=logging.WARNING,
            consumer_extra_config={"fetch.wait.max.ms": 10, "session.timeout.ms": 10_000,
                                   "heartbeat.interval.ms": 3_000},
        )
        topic = app.topic(f"{prefix}purchases", key_deserializer="str",
                          value_deserializer="json")

        def tally(value: dict[str, Any], state: Any) -> None:
            if window.events == 0:
                window.wall_start, window.cpu_start = now(), self_cpu_seconds()
            entry = state.get("totals") or [0.0, 0]
            price = value.get("price")
            product = value["product_id"]
            entry[0] += price if price is not None else price_of(product)
            if product == STAMP_PRODUCT:
                entry[1] += 1
            state.set("totals", entry)
            window.events += 1
            if window.events == expect or (
                    not window.wall_end and now() - window.wall_start >= max_s):
                window.wall_end, window.cpu_end = now(), self_cpu_seconds()
                if window.events < expect:
                    app.stop()

        sdf = app.dataframe(topic)
        if store == "memory":
            sdf.register_store(store_type=MemoryStore)  # before update() registers the default
        sdf.update(tally, stateful=True)
        app.run(count=expect, collect=False)
    emit_result(window, complete=window.events >= expect)


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=float("inf"))
    parser.add_argument("--store", choices=("rocksdb", "memory"), default="rocksdb")
    args = parser.parse_args()
    run(args.bootstrap, args.prefix, args.expect, args.max_seconds, args.store)


if __name__ == "__main__":
    main()
