"""The live store page (``/``), its snapshot (``/live/store``) and event stream (``/live/events``).

Every worker serves the page. Its events come from one shared feed per worker process,
started by the first event-stream client and stopped with the web server:

* ``position``: shopper positions, tailed from the latest offset of the locations topic by a
  plain aiokafka consumer (no consumer group, every partition). Positions are only forwarded
  to connected clients, never stored.
* ``offer``: offers as the delivery agent publishes them (Redis ``PSUBSCRIBE offers:*``).
* ``status``: ``{"positions": bool, "offers": bool}``, whether each source is live, sent on
  connect and on every change (events published while a source is not live are missed).

Each client has a bounded queue; a slow client loses its oldest events, never stalls others.
Routes are added to the aiohttp router at import time, so the app's auth middleware covers
them and ``/`` is matched before Faust's own index (its blueprints are added at start-up).

Private internals mirrored (listed in app/runtime/internals.py; checked against aiokafka
0.14.0, re-check on upgrade): ``aiokafka.consumer.consumer.AIOKafkaConsumer._client`` (its
``force_metadata_update`` while the locations topic is not in the metadata yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import orjson
import redis.asyncio as redis_asyncio
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from app.faust_app import app
from app.runtime.replica import replica_connection
from app.settings import SETTINGS
from core.geo import normalise_id, optional_str, parse_float, valid_coordinates
from core.lift import summary
from tables.offers import figures_by_promotion, store_snapshot

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
HEARTBEAT_S = 15.0
CLIENT_QUEUE = 512
RETRY_S = 2.0
#: The delivery agent publishes to ``{prefix}offers:{uid}`` (no prefix in production).
OFFER_PATTERN = f"{SETTINGS.topics.prefix}offers:*"
OFFER_FIELDS = ("offer_id", "uid", "pid", "sku", "segment", "variant", "store_id",
                "discount_pct", "distance_m", "ts")
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}


def position_event(raw: bytes | None) -> dict[str, Any] | None:
    """The ``position`` event of a locations record; ``None`` when it is not a position."""
    try:
        record = orjson.loads(raw or b"")
        if not isinstance(record, dict):
            return None
        lat = parse_float(record.get("lat"), "lat")
        lon = parse_float(record.get("lon"), "lon")
        if not valid_coordinates(lat, lon):
            return None
        ts = record.get("ts")
        return {"uid": normalise_id(record.get("uid"), "uid"), "lat": lat, "lon": lon,
                "store_id": optional_str(record.get("store_id")),
                "ts": None if ts is None else parse_float(ts, "ts")}
    except ValueError:  # orjson.JSONDecodeError is a ValueError
        return None


def offer_event(raw: bytes | str) -> dict[str, Any] | None:
    """The ``offer`` event of a published offer (known fields only); ``None`` if unreadable."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not record.get("offer_id"):
        return None
    return {name: record.get(name) for name in OFFER_FIELDS}


def sse_frame(event: str, data: Any) -> bytes:
    """One Server-Sent Events frame (orjson output holds no newlines)."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class Client:
    """One event-stream client: a bounded queue that drops its oldest frame when full."""

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(size)
        self.dropped = 0

    def push(self, frame: bytes) -> None:
        """Queue a frame without waiting."""
        while True:
            try:
                self.queue.put_nowait(frame)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.queue.get_nowait()
                    self.dropped += 1

    def close(self) -> None:
        """End the stream: discard what is queued and wake the handler."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class LiveFeed:
    """The worker's shared feed of positions and offers, fanned out to every client."""

    def __init__(self, queue_size: int = CLIENT_QUEUE) -> None:
        self.queue_size = queue_size
        self.clients: set[Client] = set()
        self.live = {"positions": False, "offers": False}
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def subscribe(self) -> Client:
        """A new client (starts the feed on first use); it first receives the status."""
        if self._closed:
            raise web.HTTPServiceUnavailable(reason="worker stopping")
        client = Client(self.queue_size)
        self.clients.add(client)
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._supervise("positions", self._tail_positions)),
                asyncio.create_task(self._supervise("offers", self._follow_offers)),
            ]
        client.push(sse_frame("status", self.live))
        return client

    def unsubscribe(self, client: Client) -> None:
        """Forget a client (it disconnected)."""
        self.clients.discard(client)

    def broadcast(self, event: str, data: Any) -> None:
        """Queue an event for every connected client."""
        if self.clients:
            frame = sse_frame(event, data)
            for client in self.clients:
                client.push(frame)

    async def stop(self) -> None:
        """Stop both sources and end every client's stream."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for client in self.clients:
            client.close()

    def _set_live(self, source: str, live: bool) -> None:
        if self.live[source] != live:
            self.live[source] = live
            self.broadcast("status", self.live)

    async def _supervise(self, source: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run a source forever, restarting it after a failure."""
        while True:
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("live feed: %s source failed; retrying in %.0f s", source, RETRY_S)
            finally:
                self._set_live(source, False)
            await asyncio.sleep(RETRY_S)

    async def _tail_positions(self) -> None:
        """Forward every new record of the locations topic (from its current end)."""
        bootstrap, auth, fetch_wait_ms = replica_connection(app)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="latest", fetch_max_wait_ms=fetch_wait_ms, **auth,
        )
        await consumer.start()
        try:
            partitions = await _partitions(consumer, SETTINGS.topics.locations)
            consumer.assign(partitions)
            await consumer.seek_to_end(*partitions)
            for tp in partitions:  # resolve the end offsets before reporting "live"
                await consumer.position(tp)
            self._set_live("positions", True)
            while True:
                batch = await consumer.getmany(timeout_ms=max(fetch_wait_ms, 200))
                for records in batch.values():
                    for record in records:
                        event = position_event(record.value)
                        if event is not None:
                            self.broadcast("position", event)
        finally:
            await consumer.stop()

    async def _follow_offers(self) -> None:
        """Forward every offer published on ``offers:*``."""
        client = redis_asyncio.from_url(SETTINGS.redis_url, health_check_interval=30)
        async with client, client.pubsub() as pubsub:
            await pubsub.psubscribe(OFFER_PATTERN)
            async for message in pubsub.listen():
                kind = message.get("type")
                if kind == "psubscribe":
                    self._set_live("offers", True)
                elif kind == "pmessage":
                    event = offer_event(message["data"])
                    if event is not None:
                        self.broadcast("offer", event)

async def _partitions(consumer: Any, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic``, waiting until the topic exists."""
    while True:
        found = consumer.partitions_for_topic(topic)
        if found:
            return [TopicPartition(topic, p) for p in sorted(found)]
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.5)


FEED = LiveFeed()


def _page() -> str:
    """``live.html`` with ``live.js`` inlined (one request, one token check)."""
    html = (STATIC / "live.html").read_text(encoding="utf-8")
    script = (STATIC / "live.js").read_text(encoding="utf-8")
    tag = '<script src="live.js"></script>'
    if tag not in html:
        raise RuntimeError(f"{STATIC / 'live.html'} lacks {tag}")
    return html.replace(tag, f"<script>\n{script}</script>")


PAGE = _page()


async def index(request: web.Request) -> web.StreamResponse:
    """The live store page."""
    return web.Response(text=PAGE, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


async def live_store(request: web.Request) -> web.StreamResponse:
    """Displays and active promotions (``?store_id=`` narrows the displays to one store)."""
    snapshot = store_snapshot(request.query.get("store_id") or None)
    return web.Response(body=orjson.dumps(snapshot), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


async def live_promotions(request: web.Request) -> web.StreamResponse:
    """Every promotion's figures (``GET /promotions/``'s), for the page's lift panel."""
    combined = figures_by_promotion()
    body = {"promotions": [summary(pid, combined[pid]) for pid in sorted(combined)]}
    return web.Response(body=orjson.dumps(body), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


async def live_events(request: web.Request) -> web.StreamResponse:
    """``text/event-stream`` of ``status``, ``position`` and ``offer`` events."""
    client = FEED.subscribe()
    response = web.StreamResponse(headers=SSE_HEADERS)
    try:
        await response.prepare(request)
        await response.write(b"retry: 3000\n\n")
        last_write = time.monotonic()
        while True:
            try:
                frame = await asyncio.wait_for(client.queue.get(), timeout=1.0)
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    break  # the client went away
                if time.monotonic() - last_write >= HEARTBEAT_S:
                    await response.write(b": keep-alive\n\n")
                    last_write = time.monotonic()
                continue
            if frame is None:  # the worker is stopping
                break
            await response.write(frame)
            last_write = time.monotonic()
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError included
        pass
    finally:
        FEED.unsubscribe(client)
    return response


async def _stop_feed(_web_app: web.Application) -> None:
    await FEED.stop()


_web_app: web.Application = cast(AiohttpWeb, app.web).web_app
_web_app.router.add_get("/", index)
_web_app.router.add_get("/live/store", live_store)
_web_app.router.add_get("/live/events", live_events)
_web_app.router.add_get("/live/promotions", live_promotions)
_web_app.on_shutdown.append(_stop_feed)
