"""Offer delivery against a real redis-server (the session devstack) and a local Ably stub.

Every test uses its own key prefix / uid so they can share the session's redis, and
a tiny RetryPolicy so failure paths finish in well under a second.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as redis_async
from ably import AblyException
from redis import exceptions as redis_errors

from app.delivery.sinks import (
    DEFAULT_DEDUP_TTL_S,
    AblyOfferSink,
    DeliveryError,
    DeliveryOutcome,
    OfferDelivery,
    RedisOfferSink,
    classify_ably_error,
    classify_redis_error,
    deliver_with_retry,
    validate_offer,
)
from app.dev.devstack import DevStack, free_port
from core.retry import RetryPolicy
from tests.integration.ably_stub import AblyStub

pytestmark = pytest.mark.integration

FAST = RetryPolicy(attempts=3, base_s=0.01, factor=2.0, max_delay_s=0.02, jitter=0.0)


def make_offer(uid: str, n: int = 0, **extra: Any) -> dict[str, Any]:
    offer: dict[str, Any] = {
        "offer_id": f"off-{uid}-{n}",
        "uid": uid,
        "pid": "promo-7",
        "sku": "sku-42",
        "segment": "tea",
        "variant": None,
        "store_id": "s1",
        "discount_pct": 15,
        "distance_m": 0.42,
        "ts": 1_700_000_000.5 + n,
    }
    offer.update(extra)
    return offer


class SleepRecorder:
    """A ``sleep`` that records the requested waits and only yields."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def uid() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis_client(stack: DevStack) -> AsyncIterator[redis_async.Redis]:
    client = redis_async.Redis.from_url(stack.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_sink(stack: DevStack, prefix: str) -> AsyncIterator[RedisOfferSink]:
    sink = RedisOfferSink(stack.redis_url, key_prefix=prefix)
    yield sink
    await sink.close()


@pytest.fixture
def ably_stub() -> Iterator[AblyStub]:
    with AblyStub() as stub:
        yield stub


@pytest.fixture
async def ably_sink(ably_stub: AblyStub) -> AsyncIterator[AblyOfferSink]:
    assert ably_stub.api_key is not None
    sink = AblyOfferSink(ably_stub.api_key, rest_host=ably_stub.host, port=ably_stub.port,
                         tls=False, http_open_timeout_s=2, http_request_timeout_s=3)
    yield sink
    await sink.close()


async def next_message(pubsub: Any, timeout: float) -> dict[str, Any] | None:
    """The next pub/sub data message within ``timeout`` seconds, or None."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None:
            return dict(message)
    return None


async def subscribed(client: redis_async.Redis, channel: str) -> Any:
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    confirm = await pubsub.get_message(timeout=2.0)
    assert confirm is not None and confirm["type"] == "subscribe"
    return pubsub


# ------------------------------------------------------------------------- redis


async def test_offer_is_published_once_and_appended_to_the_stream(
    redis_sink: RedisOfferSink, redis_client: redis_async.Redis, prefix: str, uid: str
) -> None:
    offer = make_offer(uid)
    pubsub = await subscribed(redis_client, f"{prefix}offers:{uid}")
    try:
        assert await redis_sink.deliver(offer) is True
        message = await next_message(pubsub, 2.0)
        assert message is not None, "no pub/sub message"
        assert message["channel"] == f"{prefix}offers:{uid}"
        assert json.loads(message["data"]) == offer
        assert await next_message(pubsub, 0.2) is None
    finally:
        await pubsub.aclose()

    entries: Any = await redis_client.xrange(f"{prefix}offers")
    assert len(entries) == 1
    entry_id, fields = entries[0]
    assert fields["offer_id"] == offer["offer_id"] and fields["uid"] == uid
    assert fields["variant"] == "" and fields["discount_pct"] == "15"
    assert float(fields["ts"]) == offer["ts"]
    marker = f"{prefix}offer:delivered:{offer['offer_id']}"
    assert await redis_client.get(marker) == entry_id
    ttl_ms = await redis_client.pttl(marker)
    assert DEFAULT_DEDUP_TTL_S * 1000 - 60_000 < ttl_ms <= DEFAULT_DEDUP_TTL_S * 1000


async def test_delivering_the_same_offer_twice_publishes_once(
    redis_sink: RedisOfferSink, redis_client: redis_async.Redis, prefix: str, uid: str
) -> None:
    offer = make_offer(uid)
    pubsub = await subscribed(redis_client, f"{prefix}offers:{uid}")
    try:
        assert await redis_sink.deliver(offer) is True
        assert await redis_sink.deliver(offer) is False
        assert await redis_sink.deliver(dict(offer, discount_pct=99)) is False  # same id
        assert await next_message(pubsub, 1.0) is not None
        assert await next_message(pubsub, 0.3) is None
    finally:
        await pubsub.aclose()
    assert await redis_client.xlen(f"{prefix}offers") == 1


async def test_concurrent_redeliveries_deliver_exactly_once(
    redis_sink: RedisOfferSink, redis_client: redis_async.Redis, prefix: str, uid: str
) -> None:
    offer = make_offer(uid)
    results = await asyncio.gather(*(redis_sink.deliver(offer) for _ in range(20)))
    assert results.count(True) == 1 and results.count(False) == 19
    assert await redis_client.xlen(f"{prefix}offers") == 1


async def test_stream_stays_capped(
    stack: DevStack, redis_client: redis_async.Redis, prefix: str, uid: str
) -> None:
    sink = RedisOfferSink(stack.redis_url, key_prefix=prefix, maxlen=10, dedup_ttl_s=60)
    try:
        for n in range(300):
            assert await sink.deliver(make_offer(uid, n)) is True
    finally:
        await sink.close()
    config: Any = await redis_client.config_get("stream-node-max-entries")
    node_size = int(config["stream-node-max-entries"])
    length = await redis_client.xlen(f"{prefix}offers")
    # MAXLEN ~ trims whole radix-tree nodes only: at least N entries stay, at most N + a node.
    assert 10 <= length <= 10 + node_size < 300
    last: Any = await redis_client.xrevrange(f"{prefix}offers", count=1)
    assert last[0][1]["offer_id"] == make_offer(uid, 299)["offer_id"]
    ttl_ms = await redis_client.pttl(f"{prefix}offer:delivered:{make_offer(uid, 0)['offer_id']}")
    assert 0 < ttl_ms <= 60_000


async def test_existing_client_is_left_open(
    redis_client: redis_async.Redis, prefix: str, uid: str
) -> None:
    sink = RedisOfferSink(redis_client, key_prefix=prefix)
    assert await sink.deliver(make_offer(uid)) is True
    await sink.close()
    assert await redis_client.ping() is True


async def test_batch_delivery_answers_each_offer_in_order(
    redis_sink: RedisOfferSink, redis_client: redis_async.Redis, prefix: str, uid: str
) -> None:
    first, second, earlier = make_offer(uid, 1), make_offer(uid, 2), make_offer(uid, 3)
    assert await redis_sink.deliver(earlier) is True
    results = await redis_sink.deliver_many([first, second, first, earlier])
    assert results == [True, True, False, False]
    assert await redis_client.xlen(f"{prefix}offers") == 3


async def test_batch_and_single_delivery_write_the_same_entry_and_message(
    redis_sink: RedisOfferSink, redis_client: redis_async.Redis, prefix: str, uid: str
) -> None:
    odd = {"segment": "thé\n\u0000 😀 \"q\"", "extra": {"nested": [1.5, None]}}
    single, batched = make_offer(uid, 1, **odd), make_offer(uid, 2, **odd)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(redis_sink.channel(uid))
    assert await redis_sink.deliver(single) is True
    assert await redis_sink.deliver_many([batched]) == [True]
    entries: Any = await redis_client.xrange(f"{prefix}offers")
    first, second = entries[0][1], entries[1][1]
    assert first.pop("offer_id") != second.pop("offer_id")
    assert first.pop("ts") != second.pop("ts")
    assert first == second and first["segment"] == odd["segment"]
    messages = []
    deadline = asyncio.get_running_loop().time() + 5
    while len(messages) < 2 and asyncio.get_running_loop().time() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        if message is not None:  # None: nothing yet, or the subscription's confirmation
            messages.append(json.loads(message["data"]))
    await pubsub.aclose()
    assert messages == [single, batched]


async def test_a_large_batch_is_delivered_in_several_script_calls(
    redis_sink: RedisOfferSink, redis_client: redis_async.Redis, prefix: str, uid: str
) -> None:
    offers = [make_offer(uid, n) for n in range(RedisOfferSink.SCRIPT_BATCH + 3)]
    assert await redis_sink.deliver_many([*offers, offers[0]]) == [True] * len(offers) + [False]
    assert await redis_client.xlen(f"{prefix}offers") == len(offers)


async def test_batch_delivery_loads_the_script_when_the_server_lost_it(
    redis_sink: RedisOfferSink, redis_client: redis_async.Redis, prefix: str, uid: str
) -> None:
    assert await redis_sink.deliver_many([make_offer(uid, 1)]) == [True]
    await redis_client.script_flush()  # e.g. a Redis restart or failover
    assert await redis_sink.deliver_many([make_offer(uid, 2), make_offer(uid, 1)]) == [
        True, False]
    assert await redis_client.xlen(f"{prefix}offers") == 2


async def test_batch_with_a_wrong_type_is_permanent(
    redis_sink: RedisOfferSink, redis_client: redis_async.Redis, prefix: str, uid: str
) -> None:
    await redis_client.set(f"{prefix}offers", "not a stream")
    with pytest.raises(DeliveryError) as info:
        await redis_sink.deliver_many([make_offer(uid, 1)])
    assert info.value.permanent and "WRONGTYPE" in info.value.reason
    await redis_client.delete(f"{prefix}offers")


async def test_wrong_type_is_permanent_and_leaves_no_marker(
    redis_sink: RedisOfferSink, redis_client: redis_async.Redis, prefix: str, uid: str
) -> None:
    await redis_client.set(f"{prefix}offers", "not a stream")
    offer = make_offer(uid)
    sleep = SleepRecorder()
    with pytest.raises(DeliveryError) as info:
        await deliver_with_retry(redis_sink, offer, FAST, sleep=sleep)
    assert info.value.permanent and not info.value.exhausted
    assert info.value.sink == "redis" and info.value.attempts == 1 and sleep.waits == []
    assert "WRONGTYPE" in info.value.reason and "permanent" in info.value.reason
    assert await redis_client.exists(f"{prefix}offer:delivered:{offer['offer_id']}") == 0
    await redis_client.delete(f"{prefix}offers")
    assert await redis_sink.deliver(offer) is True  # nothing was marked: deliverable later


async def test_redis_down_is_transient_and_exhausts_attempts_quickly(uid: str) -> None:
    sink = RedisOfferSink(f"redis://127.0.0.1:{free_port()}/0", connect_timeout_s=1.0)
    sleep = SleepRecorder()
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryError) as info:
            await deliver_with_retry(sink, make_offer(uid), FAST, sleep=sleep)
    finally:
        await sink.close()
    assert time.monotonic() - started < 5
    error = info.value
    assert not error.permanent and error.exhausted
    assert error.attempts == 3 and error.sink == "redis"
    assert sleep.waits == [0.01, 0.02]
    assert "gave up after 3 attempt(s)" in error.reason and "transient" in error.reason
    assert isinstance(error.__cause__, redis_errors.ConnectionError)


async def test_time_budget_stops_retrying_early(uid: str) -> None:
    sink = RedisOfferSink(f"redis://127.0.0.1:{free_port()}/0", connect_timeout_s=1.0)
    policy = RetryPolicy(attempts=10, base_s=1.0, max_delay_s=1.0, jitter=0)
    sleep = SleepRecorder()
    try:
        with pytest.raises(DeliveryError) as info:
            await deliver_with_retry(sink, make_offer(uid), policy, sleep=sleep,
                                     max_elapsed_s=0.5)
    finally:
        await sink.close()
    assert info.value.exhausted and info.value.attempts == 1 and sleep.waits == []
    assert "time budget" in info.value.reason


# -------------------------------------------------------------------------- ably


async def test_ably_sdk_publishes_to_the_stub_with_offer_id_as_message_id(
    ably_sink: AblyOfferSink, ably_stub: AblyStub, uid: str
) -> None:
    offer = make_offer(uid)
    assert await ably_sink.deliver(offer) is True
    [message] = ably_stub.published
    assert message.channel == f"offers:{uid}"
    assert message.name == "offer"
    assert message.id == offer["offer_id"]
    assert message.data == offer
    # Plain HTTP: the SDK exchanged a locally signed token request, then used the token.
    kinds = [r.kind for r in ably_stub.requests]
    assert kinds == ["token", "publish"] and ably_stub.tokens_issued == 1

    assert await ably_sink.deliver(offer) is True  # the stub records the repeat...
    assert ably_stub.publish_counts() == Counter({offer["offer_id"]: 2})  # ...same id
    assert ably_stub.tokens_issued == 1  # token reused


async def test_ably_500_twice_then_success_is_retried(
    ably_sink: AblyOfferSink, ably_stub: AblyStub, uid: str
) -> None:
    ably_stub.fail_next(2, 500)
    sleep = SleepRecorder()
    offer = make_offer(uid)
    assert await deliver_with_retry(ably_sink, offer, FAST, sleep=sleep) is True
    assert ably_stub.publish_attempts == 3 and sleep.waits == [0.01, 0.02]
    assert [m.id for m in ably_stub.published] == [offer["offer_id"]]


async def test_ably_rate_limit_is_transient(
    ably_sink: AblyOfferSink, ably_stub: AblyStub, uid: str
) -> None:
    ably_stub.fail_next(1, 429, code=42910)
    sleep = SleepRecorder()
    assert await deliver_with_retry(ably_sink, make_offer(uid), FAST, sleep=sleep) is True
    assert ably_stub.publish_attempts == 2 and len(sleep.waits) == 1


async def test_ably_500_forever_exhausts(
    ably_sink: AblyOfferSink, ably_stub: AblyStub, uid: str
) -> None:
    ably_stub.fail_next(100, 503)
    with pytest.raises(DeliveryError) as info:
        await deliver_with_retry(ably_sink, make_offer(uid), FAST, sleep=SleepRecorder())
    assert info.value.exhausted and not info.value.permanent and info.value.sink == "ably"
    assert "503" in info.value.reason
    assert ably_stub.publish_attempts == 3 and ably_stub.published == []


@pytest.mark.parametrize(("status", "code"), [(401, 40101), (400, 40000), (403, 40160)])
async def test_ably_4xx_is_permanent_and_not_retried(
    ably_sink: AblyOfferSink, ably_stub: AblyStub, uid: str, status: int, code: int
) -> None:
    ably_stub.fail_next(100, status, code=code)
    sleep = SleepRecorder()
    with pytest.raises(DeliveryError) as info:
        await deliver_with_retry(ably_sink, make_offer(uid), FAST, sleep=sleep)
    error = info.value
    assert error.permanent and not error.exhausted and error.attempts == 1
    assert error.sink == "ably" and f"HTTP {status}" in error.reason
    assert "not retried" in error.reason
    assert ably_stub.publish_attempts == 1 and sleep.waits == []
    assert isinstance(error.__cause__, AblyException)


async def test_ably_bad_key_is_permanent(ably_stub: AblyStub, uid: str) -> None:
    sink = AblyOfferSink("other-app.other-key:secret", rest_host=ably_stub.host,
                         port=ably_stub.port, tls=False)
    try:
        with pytest.raises(DeliveryError) as info:
            await deliver_with_retry(sink, make_offer(uid), FAST, sleep=SleepRecorder())
    finally:
        await sink.close()
    assert info.value.permanent and info.value.attempts == 1 and "401" in info.value.reason
    assert ably_stub.publish_attempts == 0 and ably_stub.published == []


async def test_ably_unreachable_is_transient(uid: str) -> None:
    sink = AblyOfferSink("a.b:c", rest_host="127.0.0.1", port=free_port(), tls=False,
                         http_open_timeout_s=1, http_request_timeout_s=1)
    sleep = SleepRecorder()
    try:
        with pytest.raises(DeliveryError) as info:
            await deliver_with_retry(sink, make_offer(uid), FAST, sleep=sleep)
    finally:
        await sink.close()
    assert info.value.exhausted and not info.value.permanent and info.value.attempts == 3
    assert isinstance(info.value.__cause__, httpx.TransportError)


def test_ably_rest_host_must_not_look_like_a_routing_policy() -> None:
    with pytest.raises(ValueError, match="routing policy"):
        AblyOfferSink("a.b:c", rest_host="ablystub", tls=False)
    with pytest.raises(ValueError, match="API key"):
        AblyOfferSink("no-secret")


# ---------------------------------------------------------------------- combined


async def test_offer_delivery_from_settings_uses_env_for_the_ably_endpoint(
    stack: DevStack, ably_stub: AblyStub, redis_client: redis_async.Redis, prefix: str, uid: str
) -> None:
    env = {"ABLY_REST_HOST": ably_stub.host, "ABLY_REST_PORT": str(ably_stub.port),
           "ABLY_TLS": "false"}
    offer = make_offer(uid)
    async with OfferDelivery.from_settings(stack.redis_url, ably_stub.api_key, policy=FAST,
                                           key_prefix=prefix, env=env) as delivery:
        assert delivery.ably_enabled
        first = await delivery.deliver(offer)
        again = await delivery.deliver(offer)
    assert first == DeliveryOutcome(offer["offer_id"], "delivered", "delivered")
    assert again == DeliveryOutcome(offer["offer_id"], "duplicate", "delivered")
    assert again.duplicate and not first.duplicate
    assert await redis_client.xlen(f"{prefix}offers") == 1
    assert [m.channel for m in ably_stub.published] == [f"{prefix}offers:{uid}"] * 2
    # Redis pushed it once; Ably got it twice under one id (its idempotency key drops one)
    assert ably_stub.publish_counts() == Counter({offer["offer_id"]: 2})


async def test_offer_delivery_without_a_key_skips_ably(
    stack: DevStack, redis_client: redis_async.Redis, prefix: str, uid: str
) -> None:
    delivery = OfferDelivery.from_settings(stack.redis_url, None, key_prefix=prefix,
                                           env={"ABLY_REST_HOST": "127.0.0.1"})
    try:
        assert not delivery.ably_enabled
        outcome = await delivery.deliver(make_offer(uid))
    finally:
        await delivery.close()
    assert outcome.redis == "delivered" and outcome.ably == "skipped"
    assert await redis_client.xlen(f"{prefix}offers") == 1


async def test_ably_failure_after_redis_then_redelivery_completes(
    stack: DevStack, ably_stub: AblyStub, prefix: str, uid: str
) -> None:
    offer = make_offer(uid)
    delivery = OfferDelivery.from_settings(
        stack.redis_url, ably_stub.api_key, ably_rest_host=ably_stub.host,
        ably_port=ably_stub.port, ably_tls=False, policy=FAST, key_prefix=prefix, env={})
    try:
        ably_stub.fail_next(1, 401, code=40101)
        with pytest.raises(DeliveryError) as info:
            await delivery.deliver(offer)
        assert info.value.permanent and info.value.sink == "ably"
        assert "(redis: delivered)" in info.value.reason
        outcome = await delivery.deliver(offer)  # e.g. replayed from the dead letters
    finally:
        await delivery.close()
    assert outcome == DeliveryOutcome(offer["offer_id"], "duplicate", "delivered")
    assert ably_stub.publish_counts() == Counter({offer["offer_id"]: 1})  # the 401 was not kept


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"uid": "u1"}, "offer_id is missing"),
        ({"offer_id": "o1"}, "uid is missing"),
        ({"offer_id": 7, "uid": "u1"}, "offer_id must be a string"),
        ({"offer_id": "o1", "uid": None}, "uid is missing"),
        ({"offer_id": "o1", "uid": "  "}, "uid is empty"),
    ],
)
async def test_malformed_offers_are_permanent_and_touch_nothing(
    stack: DevStack, redis_client: redis_async.Redis, prefix: str,
    record: dict[str, Any], problem: str,
) -> None:
    with pytest.raises(DeliveryError) as info:
        validate_offer(record)
    assert info.value.permanent and problem in info.value.reason
    delivery = OfferDelivery.from_settings(stack.redis_url, None, key_prefix=prefix, env={})
    try:
        with pytest.raises(DeliveryError) as info:
            await delivery.deliver(record)
    finally:
        await delivery.close()
    assert info.value.permanent and problem in info.value.reason
    assert await redis_client.exists(f"{prefix}offers") == 0


async def test_non_json_offer_is_permanent(redis_sink: RedisOfferSink, uid: str) -> None:
    for bad in (math.nan, object()):
        with pytest.raises(DeliveryError) as info:
            await deliver_with_retry(redis_sink, make_offer(uid, distance_m=bad), FAST)
        assert info.value.permanent and "JSON" in info.value.reason


# ------------------------------------------------------------------ classification


@pytest.mark.parametrize(
    ("exc", "permanent"),
    [
        (AblyException("boom", 500, 50000), False),
        (AblyException("unavailable", 503, 50300), False),
        (AblyException("slow down", 429, 42910), False),
        (AblyException("timeout", 408, 40800), False),
        (AblyException("bad key", 401, 40101), True),
        (AblyException("bad request", 400, 40000), True),
        (AblyException("not found", 404, 40400), True),
        (httpx.ConnectError("refused"), False),
        (httpx.ReadTimeout("slow"), False),
        (TimeoutError(), False),
        (TypeError("not serialisable"), True),
    ],
)
def test_classify_ably_error(exc: BaseException, permanent: bool) -> None:
    error = classify_ably_error(exc)
    assert error.permanent is permanent and error.sink == "ably"


@pytest.mark.parametrize(
    ("exc", "permanent"),
    [
        (redis_errors.ConnectionError("refused"), False),
        (redis_errors.TimeoutError("slow"), False),
        (redis_errors.BusyLoadingError("LOADING"), False),
        (redis_errors.ReadOnlyError("READONLY replica"), False),
        (redis_errors.ResponseError("BUSY Redis is busy running a script"), False),
        (redis_errors.OutOfMemoryError("OOM command not allowed"), False),
        (ConnectionResetError(), False),
        (redis_errors.AuthenticationError("invalid password"), True),
        (redis_errors.ResponseError("WRONGTYPE Operation against a key"), True),
        (redis_errors.NoPermissionError("NOPERM"), True),
        (ValueError("?"), True),
    ],
)
def test_classify_redis_error(exc: BaseException, permanent: bool) -> None:
    error = classify_redis_error(exc)
    assert error.permanent is permanent and error.sink == "redis"
