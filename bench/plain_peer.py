"""Peer: a plain aiokafka loop (no framework), run as its own process.

``throughput``: consume ``{prefix}purchases`` from the beginning in a consumer group
(``getmany`` + orjson), keep a per-customer ``[spend, coffee]`` in a dict, produce one
changelog record per update to ``{prefix}plain-state-changelog`` (same partition as the
source record), and after each batch wait for the sends and commit the offsets.

``echo``: for the latency benchmark, produce one record per position
(``{"uid", "ts", ...}``, ``ts`` copied) until SIGTERM.

``match``: the latency benchmark's plain loop doing the offer path's work: it follows the
displays (``--displays``) and promotions (``--promotions``) topics into a grid of ~2-m cells,
and for each position looks up the 3 x 3 cells around it, checks the haversine distance
(R = 6371 km) against ``--radius-m`` and whether an active promotion names the display's sku
or segment, then produces the offer (``offer_id``, ``uid``, ``pid``, ``sku``, ``segment``,
``store_id``, ``discount_pct``, ``distance_m``, ``ts`` of the position) to ``--sink`` and,
one pipeline per batch, XADDs it to the Redis stream ``--redis-stream`` and PUBLISHes it on
``offers:{uid}`` (no tiers, consent or cooldowns: it holds no customer state).

The measured window runs from the first batch received to the last batch flushed and
committed; it is printed as one ``BENCH_RESULT`` line (see :mod:`bench.procstat`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import signal
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.catalogue import STAMP_PRODUCT, price_of
from bench.procstat import Window, emit_result, now, self_cpu_seconds

FETCH_WAIT_MS = 10  # the same fetch wait storestream uses (FETCH_WAIT_MS)
#: The offers stream's approximate cap, the worker's (app/delivery/sinks.py
#: DEFAULT_STREAM_MAXLEN): at 2,000 positions/s a trial's 20,000 offers pass it, and the
#: Redis latency is read from what each peer's stream still holds, the same share for both.
STREAM_MAXLEN = 10_000


#: How long a finished throughput run stays in its group when nobody stops it (s).
LINGER_S = 60.0


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
        # Stay in the group until the harness stops the peer: it watches the group from
        # outside (Stable, then offsets committed), and a small run could join, finish and
        # leave between two of its polls (a quick bench once saw the group never Stable).
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LINGER_S)
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


#: Grid cell size (degrees of latitude, ~2 m) and the Earth radius of the distance.
CELL_DEG = 2.0 / 111_195.0
EARTH_M = 6_371_000.0


def haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_M * math.asin(min(1.0, math.sqrt(a)))


class Matcher:
    """Displays in a grid and promotions by sku and segment."""

    def __init__(self, radius_m: float) -> None:
        self.radius_m = radius_m
        self.cells: dict[tuple[int, int], dict[tuple[str, str], dict[str, Any]]] = {}
        self.where: dict[tuple[str, str], tuple[int, int]] = {}
        self.promotions: dict[str, dict[str, Any]] = {}

    @staticmethod
    def cell(lat: float, lon: float) -> tuple[int, int]:
        """Grid cell of a point (longitude cells widened by 1/cos(lat))."""
        width = CELL_DEG / max(0.01, math.cos(math.radians(lat)))
        return int(lat // CELL_DEG), int(lon // width)

    def display(self, value: dict[str, Any]) -> None:
        """Add, move or (``active`` false) remove a display."""
        key = (str(value.get("store_id") or ""), str(value["sku"]))
        old = self.where.pop(key, None)
        if old is not None:
            self.cells[old].pop(key, None)
        if value.get("active", True):
            at = self.cell(float(value["lat"]), float(value["lon"]))
            self.cells.setdefault(at, {})[key] = value
            self.where[key] = at

    def promotion(self, value: dict[str, Any]) -> None:
        """Add, replace or (``active`` false) remove a promotion."""
        if value.get("active", True):
            self.promotions[str(value["pid"])] = value
        else:
            self.promotions.pop(str(value["pid"]), None)

    def offers(self, position: dict[str, Any]) -> list[dict[str, Any]]:
        """Offers for one position: each promoted display within the radius."""
        lat, lon = float(position["lat"]), float(position["lon"])
        row, col = self.cell(lat, lon)
        out = []
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                for (store, sku), display in self.cells.get((row + dr, col + dc), {}).items():
                    distance = haversine(lat, lon, float(display["lat"]), float(display["lon"]))
                    if distance > self.radius_m:
                        continue
                    for pid, promo in self.promotions.items():
                        if promo.get("sku") == sku or (
                                promo.get("segment") is not None
                                and promo.get("segment") == display.get("segment")):
                            uid = str(position["uid"])
                            offer_id = hashlib.sha1(f"{uid}|{pid}|{sku}".encode()).hexdigest()
                            out.append({"offer_id": offer_id[:20], "uid": uid, "pid": pid,
                                        "sku": sku, "segment": display.get("segment"),
                                        "store_id": store,
                                        "discount_pct": promo.get("discount_pct"),
                                        "distance_m": round(distance, 3),
                                        "ts": position["ts"]})
        return out


async def match(bootstrap: str, source: str, displays: str, promotions: str, sink: str,
                radius_m: float, redis_url: str, stream: str) -> None:
    """Match every position against the promoted displays until SIGTERM (module doc)."""
    import redis.asyncio as redis_async

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    matcher = Matcher(radius_m)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=FETCH_WAIT_MS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    client = redis_async.Redis.from_url(redis_url)
    await consumer.start()
    await producer.start()
    try:
        tps = []
        for topic in (source, displays, promotions):
            partitions = consumer.partitions_for_topic(topic)
            while not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic)
            tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await client.ping()
        setup = [tp for tp in tps if tp.topic != source]
        ends = await consumer.end_offsets(setup)
        ready = False
        while not stop.is_set():
            if not ready and all([await consumer.position(tp) >= ends[tp] for tp in setup]):
                print("READY", flush=True)  # displays and promotions loaded
                ready = True
            batch = await consumer.getmany(timeout_ms=100)
            pipe = client.pipeline(transaction=False)
            pushes = 0
            sends = []
            for tp, records in batch.items():
                for record in records:
                    event = orjson.loads(record.value)
                    if tp.topic == displays:
                        matcher.display(event)
                        continue
                    if tp.topic == promotions:
                        matcher.promotion(event)
                        continue
                    for offer in matcher.offers(event):
                        raw = orjson.dumps(offer)
                        sends.append(await producer.send(sink, raw, key=record.key))
                        pipe.xadd(stream, {k: "" if v is None else str(v)
                                           for k, v in offer.items()},
                                  maxlen=STREAM_MAXLEN, approximate=True)
                        pipe.publish(f"offers:{offer['uid']}", raw)
                        pushes += 1
            if pushes:
                await pipe.execute()
            if sends:
                await asyncio.gather(*sends)
    finally:
        await client.aclose()
        await producer.stop()
        await consumer.stop()


def main() -> None:
    """``python -m bench.plain_peer throughput|echo ...``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("throughput", "echo", "match"))
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=float("inf"))
    parser.add_argument("--source", default="")
    parser.add_argument("--sink", default="")
    parser.add_argument("--displays", default="")
    parser.add_argument("--promotions", default="")
    parser.add_argument("--radius-m", type=float, default=0.9144)
    parser.add_argument("--redis", default="")
    parser.add_argument("--redis-stream", default="offers")
    args = parser.parse_args()
    if args.mode == "throughput":
        asyncio.run(throughput(args.bootstrap, args.prefix, args.expect, args.max_seconds))
    elif args.mode == "match":
        asyncio.run(match(args.bootstrap, args.source, args.displays, args.promotions,
                          args.sink, args.radius_m, args.redis, args.redis_stream))
    else:
        asyncio.run(echo(args.bootstrap, args.source, args.sink))


if __name__ == "__main__":
    main()
