"""Peer: a plain aiokafka loop (no framework), run as its own process.

``throughput``: consume ``{prefix}purchases`` from the beginning in a consumer group
(``getmany`` + orjson), keep a per-customer ``[spend, coffee]`` in a dict, produce one
changelog record per update to ``{prefix}plain-state-changelog`` (same partition as the
source record), and after each batch wait for the sends and commit the offsets.

``echo``: for the latency benchmark, produce one record per position
(``{"uid", "ts", ...}``, ``ts`` copied) until SIGTERM.

The measured window runs from the first batch received to the last batch flushed and
committed; it is printed as one ``BENCH_RESULT`` line (see :mod:`bench.procstat`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.catalogue import STAMP_PRODUCT, price_of
from bench.procstat import Window, emit_result, now, self_cpu_seconds

FETCH_WAIT_MS = 10  # the same fetch wait storestream uses (FETCH_WAIT_MS)


async def throughput(bootstrap: str, prefix: str, expect: int, max_s: float) -> None:
    """Aggregate ``expect`` purchases (or for ``max_s`` seconds); print the measured window."""
    changelog = f"{prefix}plain-state-changelog"
    consumer = AIOKafkaConsumer(
        f"{prefix}purchases", bootstrap_servers=bootstrap, group_id=f"{prefix}plain",
        enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=FETCH_WAIT_MS,
        max_partition_fetch_bytes=1024 * 1024,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1,
                                max_batch_size=256 * 1024)
    await consumer.start()
    await producer.start()
    state: dict[bytes, list[float]] = {}
    window = Window()
    try:
        while window.events < expect and (
                not window.events or now() - window.wall_start < max_s):
            batch = await consumer.getmany(timeout_ms=500, max_records=5_000)
            if not batch:
                continue
            if window.events == 0:
                window.wall_start, window.cpu_start = now(), self_cpu_seconds()
            sends = []
            for tp, records in batch.items():
                for record in records:
                    event = orjson.loads(record.value)
                    key = record.key or b""
                    entry = state.get(key)
                    if entry is None:
                        entry = state[key] = [0.0, 0]
                    price = event.get("price")
                    product = event["product_id"]
                    entry[0] += price if price is not None else price_of(product)
                    if product == STAMP_PRODUCT:
                        entry[1] += 1
                    sends.append(await producer.send(
                        changelog, orjson.dumps(entry), key=key, partition=tp.partition))
                window.events += len(records)
            await asyncio.gather(*sends)
            await consumer.commit()
        window.wall_end, window.cpu_end = now(), self_cpu_seconds()
        emit_result(window, customers=len(state), complete=window.events >= expect)
    finally:
        await producer.stop()
        await consumer.stop()


async def echo(bootstrap: str, source: str, sink: str) -> None:
    """Forward every position as one output record until SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=FETCH_WAIT_MS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    await consumer.start()
    await producer.start()
    try:
        partitions = consumer.partitions_for_topic(source)
        while not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(source)
        consumer.assign([TopicPartition(source, p) for p in sorted(partitions)])
        await consumer.getmany(timeout_ms=100)
        print("READY", flush=True)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    event = orjson.loads(record.value)
                    out = {"uid": event["uid"], "lat": event["lat"], "lon": event["lon"],
                           "ts": event["ts"]}
                    await producer.send(sink, orjson.dumps(out), key=record.key)
    finally:
        await producer.stop()
        await consumer.stop()


def main() -> None:
    """``python -m bench.plain_peer throughput|echo ...``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("throughput", "echo"))
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=float("inf"))
    parser.add_argument("--source", default="")
    parser.add_argument("--sink", default="")
    args = parser.parse_args()
    if args.mode == "throughput":
        asyncio.run(throughput(args.bootstrap, args.prefix, args.expect, args.max_seconds))
    else:
        asyncio.run(echo(args.bootstrap, args.source, args.sink))


if __name__ == "__main__":
    main()
