"""The live store page in real headless Chromium, and its event stream over plain HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as redis_asyncio

from app.dev.producer import produce
from tests.integration.cdp import Chromium, Page
from tests.integration.harness import Deployment, Worker

pytestmark = pytest.mark.integration

STORE = "s1"
DISPLAYS: list[dict[str, Any]] = [
    {"sku": "sku-1", "lat": 51.50070, "lon": -0.12460, "segment": "dairy", "store_id": STORE},
    {"sku": "sku-2", "lat": 51.50075, "lon": -0.12450, "segment": "bakery", "store_id": STORE},
    {"sku": "sku-3", "lat": 51.50065, "lon": -0.12440, "segment": "wine", "store_id": STORE},
]
PROMOTION: dict[str, Any] = {"pid": "p-bakery", "segment": "bakery", "discount_pct": 15, "ts": 1.0}


def offer(offer_id: str, uid: str = "u1", sku: str = "sku-2") -> dict[str, Any]:
    """An offer as the delivery agent publishes it."""
    return {"offer_id": offer_id, "uid": uid, "pid": "p-bakery", "sku": sku,
            "segment": "bakery", "variant": None, "store_id": STORE, "discount_pct": 15,
            "distance_m": 0.5, "ts": time.time()}


async def seed_store(deployment: Deployment) -> None:
    """Displays and a promotion, through their input topics."""
    records: list[tuple[str, str | bytes | None, Any]] = [
        (deployment.topic("stores.products"), d["sku"], d) for d in DISPLAYS
    ]
    records.append((deployment.topic("products.promotions"), PROMOTION["pid"], PROMOTION))
    await produce(deployment.stack.broker_url, records)


async def start(deployment: Deployment) -> Worker:
    """One worker, ready, with the store seeded and visible in ``/live/store``."""
    worker = deployment.start_worker("w1")
    await asyncio.to_thread(worker.wait_ready)
    await seed_store(deployment)
    deadline = time.monotonic() + 30
    body: Any = None
    while time.monotonic() < deadline:
        status, body = await asyncio.to_thread(worker.get, "/live/store")
        if status == 200 and len(body["displays"]) == len(DISPLAYS) and body["promotions"]:
            return worker
        await asyncio.sleep(0.25)
    raise AssertionError(f"/live/store never showed the seeded store: {body!r}\n"
                         f"{worker.log_tail()}")


async def publish_offer(deployment: Deployment, record: dict[str, Any]) -> int:
    """``PUBLISH offers:{uid}`` as the delivery agent does; returns the subscriber count."""
    client = redis_asyncio.from_url(deployment.stack.redis_url)
    channel = f"{deployment.settings.topics.prefix}offers:{record['uid']}"
    async with client:
        return int(await client.publish(channel, orjson.dumps(record)))


async def produce_position(deployment: Deployment, uid: str, lat: float, lon: float) -> None:
    """One shopper position on the locations topic."""
    value = {"uid": uid, "lat": lat, "lon": lon, "store_id": STORE, "ts": time.time()}
    await produce(deployment.stack.broker_url,
                  [(deployment.topic("customers.locations"), uid, value)])


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    """A tab of a fresh headless Chromium."""
    browser = Chromium()
    try:
        await browser.wait_up()
        tab = await browser.new_page()
        try:
            yield tab
        finally:
            await tab.close()
    finally:
        browser.close()


async def test_page_draws_store_offers_and_shoppers(secured: Deployment, page: Page) -> None:
    worker = await start(secured)
    await page.set_headers({"Authorization": f"Bearer {secured.token}"})
    await page.navigate(worker.url + "/")

    count = await page.wait_for(
        "Number(document.querySelector('#display-count')?.textContent) === 3 && "
        "document.querySelectorAll('#displays [data-sku]').length", timeout=15)
    assert count == 3
    assert await page.evaluate("!!document.querySelector('[data-sku=\"sku-1\"]')")
    promo = await page.evaluate(
        "[...document.querySelectorAll('.display.promo')].map(e => e.dataset.sku)")
    assert promo == ["sku-2"], "only the bakery display is on promotion"
    await page.wait_for("(s => s.dataset.positions === 'live' && s.dataset.offers === 'live')"
                        "(document.querySelector('#feed-status'))", timeout=20)

    assert await publish_offer(secured, offer("o-browser")) >= 1
    text = await page.wait_for(
        "document.querySelector('#offers li.offer[data-offer-id=\"o-browser\"]')?.textContent",
        timeout=10)
    assert "u1" in text and "sku-2" in text and "15%" in text

    await produce_position(secured, "u1", 51.50071, -0.12455)
    await page.wait_for("document.querySelector('#shopper-count').textContent === '1' && "
                        "!!document.querySelector('circle.shopper[data-uid=\"u1\"]')",
                        timeout=10)


async def test_live_routes_require_the_token(secured: Deployment) -> None:
    worker = secured.start_worker("w1")
    await asyncio.to_thread(worker.wait_ready)
    for path in ("/", "/live/store", "/live/events", "/live/events?token=wrong"):
        status, _ = await asyncio.to_thread(worker.get, path, None)
        assert status == 401, path
    async with aiohttp.ClientSession() as session, session.get(
        worker.url + "/live/events", headers={"Authorization": f"Bearer {secured.token}"}
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")


async def test_query_token_opens_only_live_paths(secured: Deployment) -> None:
    """``?token=`` stands in for the header on the live paths only (EventSource sends none).

    Needs ``app.web.auth.bearer_auth`` to accept :func:`app.web.auth.live_token_ok`.
    """
    worker = secured.start_worker("w1")
    await asyncio.to_thread(worker.wait_ready)
    good = f"token={secured.token}"
    for path in ("/", "/live/store", "/live/promotions"):
        status, _ = await asyncio.to_thread(worker.get, f"{path}?{good}", None)
        assert status == 200, path
    status, body = await asyncio.to_thread(worker.get, f"/live/promotions?{good}", None)
    assert body == {"promotions": []}  # the lift panel's figures: no offer made yet
    for path in ("/live/promotions", f"/promotions/?{good}"):  # the data route wants the header
        status, _ = await asyncio.to_thread(worker.get, path, None)
        assert status == 401, path
    async with aiohttp.ClientSession() as session, session.get(
        f"{worker.url}/live/events?{good}"
    ) as response:
        assert response.status == 200
    status, _ = await asyncio.to_thread(worker.get, f"/customers/u1/?{good}", None)
    assert status == 401


async def read_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """``(event, data)`` pairs of a ``text/event-stream`` response."""
    event: str = "message"
    data: list[str] = []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield event, orjson.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


async def next_event(events: AsyncIterator[tuple[str, Any]], name: str, timeout: float,
                     match: Any = lambda data: True) -> Any:
    """The data of the next ``name`` event accepted by ``match``."""
    async def find() -> Any:
        async for event, data in events:
            if event == name and match(data):
                return data
        raise AssertionError("event stream ended")
    return await asyncio.wait_for(find(), timeout)


async def test_event_stream_delivers_offers_and_positions(deployment: Deployment) -> None:
    worker = await start(deployment)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
        worker.url + "/live/events"
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = read_events(response)
        await next_event(events, "status", 20, lambda s: s["positions"] and s["offers"])

        sent = offer("o-sse", uid="u2", sku="sku-3")
        assert await publish_offer(deployment, sent) >= 1
        got = await next_event(events, "offer", 10, lambda o: o["offer_id"] == "o-sse")
        assert got == sent

        await produce_position(deployment, "u2", 51.5007, -0.1245)
        position = await next_event(events, "position", 10, lambda p: p["uid"] == "u2")
        assert (position["lat"], position["lon"], position["store_id"]) == (51.5007, -0.1245,
                                                                             STORE)
        assert set(position) == {"uid", "lat", "lon", "store_id", "ts"}
