"""Offer delivery to Redis (pub/sub + capped stream) and Ably (REST), idempotently.

An offer is a JSON-like mapping with at least string ``offer_id`` and ``uid`` (the
records the distance-join agent writes to ``customers.promotions``). Delivery:

Redis (always)
    One Lua script, run atomically by the server: if ``offer:delivered:{offer_id}``
    does not exist, ``XADD offers MAXLEN ~ N * <fields>``, ``PUBLISH offers:{uid}
    <json>`` and set the marker (value = stream entry id, TTL 7 days by default);
    returns 1. Otherwise it does nothing and returns 0 (a duplicate). Because the
    marker is written last, a script error part-way (e.g. the stream key holds
    another type) leaves no marker and the offer can be delivered again later.

Ably (only when an API key is configured)
    ``channels.get("offers:{uid}").publish(Message(name="offer", data=<offer>,
    id=offer_id))`` through the ``ably`` SDK's REST client. Ably uses the message id
    as an idempotency key, so publishing the same offer again after a partial
    failure (or a Kafka redelivery) does not reach subscribers twice, as long as the
    repeat comes within Ably's idempotency window.

Failures are classified once, where they happen, into :class:`DeliveryError` with
``permanent`` True (retrying cannot help: a malformed offer, Ably 4xx other than
408/429, a Redis ``WRONGTYPE``/auth error) or False (connection errors, timeouts,
Ably 5xx/429, Redis ``LOADING``/``READONLY``/``OOM``...). :func:`deliver_with_retry`
retries the transient ones with the backoff of :class:`core.retry.RetryPolicy`.

No faust import: the Faust agent that consumes the topic lives elsewhere and uses
:class:`OfferDelivery`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, Protocol

import httpx
import orjson
import redis.asyncio as redis_async
from ably import AblyException, AblyRest
from ably.types.message import Message
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import NoBackoff

from core.retry import RetryPolicy, delays

__all__ = [
    "ABLY_MESSAGE_NAME",
    "DEFAULT_DEDUP_TTL_S",
    "DEFAULT_STREAM",
    "DEFAULT_STREAM_MAXLEN",
    "AblyOfferSink",
    "DeliveryError",
    "DeliveryOutcome",
    "OfferDelivery",
    "OfferSink",
    "RedisOfferSink",
    "classify_ably_error",
    "classify_redis_error",
    "deliver_with_retry",
    "offer_channel",
    "offer_json",
    "validate_offer",
]

log = logging.getLogger(__name__)

#: Name of the Redis stream every delivered offer is appended to.
DEFAULT_STREAM: Final = "offers"
#: Approximate cap of that stream (``XADD ... MAXLEN ~ N``).
DEFAULT_STREAM_MAXLEN: Final = 10_000
#: How long the per-offer "delivered" marker lives (7 days).
DEFAULT_DEDUP_TTL_S: Final = 7 * 24 * 3600.0
#: Prefix of the per-user channel (Redis pub/sub and Ably): ``offers:{uid}``.
CHANNEL_PREFIX: Final = "offers:"
#: Prefix of the per-offer dedup marker: ``offer:delivered:{offer_id}``.
DEDUP_PREFIX: Final = "offer:delivered:"
#: Ably message name.
ABLY_MESSAGE_NAME: Final = "offer"

REQUIRED_FIELDS: Final = ("offer_id", "uid")

#: Ably HTTP statuses worth retrying besides 5xx: request timeout and rate limiting.
_ABLY_TRANSIENT_STATUSES: Final = frozenset({408, 429})
#: Prefixes of Redis error replies that describe a passing server condition.
_REDIS_TRANSIENT_REPLIES: Final = (
    "BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "OOM",
)

#: Connection-level errors that retrying cannot fix (bad credentials, missing ACLs).
_REDIS_PERMANENT_CONN_ERRORS: Final = (
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
    redis_errors.ExternalAuthProviderError,
)
_REDIS_TRANSIENT_ERRORS: Final = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    OSError,
    redis_errors.ReadOnlyError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
    redis_errors.OutOfMemoryError,
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


# --------------------------------------------------------------------------- errors


class DeliveryError(Exception):
    """An offer could not be delivered.

    ``permanent``: retrying cannot help (dead-letter the offer). ``exhausted``: the
    failure was transient but :func:`deliver_with_retry` ran out of attempts or time
    (``permanent`` is then False). ``sink`` names the target (``"redis"``, ``"ably"``,
    or ``None`` for the offer itself); ``attempts`` is how many tries were made.
    """

    def __init__(
        self,
        reason: str,
        *,
        permanent: bool,
        sink: str | None = None,
        attempts: int = 0,
        exhausted: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.sink = sink
        self.attempts = attempts
        self.exhausted = exhausted

    def __str__(self) -> str:
        return self.reason

    def __repr__(self) -> str:
        return (
            f"DeliveryError({self.reason!r}, permanent={self.permanent}, sink={self.sink!r}, "
            f"attempts={self.attempts}, exhausted={self.exhausted})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_delivery_error,
            (self.reason, self.permanent, self.sink, self.attempts, self.exhausted),
        )


def _rebuild_delivery_error(
    reason: str, permanent: bool, sink: str | None, attempts: int, exhausted: bool
) -> DeliveryError:
    return DeliveryError(
        reason, permanent=permanent, sink=sink, attempts=attempts, exhausted=exhausted
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def classify_ably_error(exc: BaseException) -> DeliveryError:
    """Map an exception raised by the ably SDK (or its httpx transport) to a DeliveryError.

    5xx, 408 and 429 answers and transport errors (connect/read failures, timeouts)
    are transient; any other HTTP error (401 bad key, 400 bad request, 403, 404...)
    and anything unexpected (e.g. data the SDK cannot encode) are permanent.
    """
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, AblyException):
        status = getattr(exc, "status_code", None)
        code = getattr(exc, "code", None)
        message = getattr(exc, "message", None) or str(exc)
        try:
            status_int = int(status) if status is not None else None
        except (TypeError, ValueError):
            status_int = None
        transient = status_int is None or status_int >= 500 or (
            status_int in _ABLY_TRANSIENT_STATUSES
        )
        kind = "transient" if transient else "permanent"
        return DeliveryError(
            f"ably {kind} error: HTTP {status} code {code}: {message}",
            permanent=not transient,
            sink="ably",
        )
    if isinstance(exc, httpx.TransportError | OSError):
        return DeliveryError(
            f"ably transport error: {_describe(exc)}", permanent=False, sink="ably"
        )
    return DeliveryError(f"ably unexpected error: {_describe(exc)}", permanent=True, sink="ably")


def classify_redis_error(exc: BaseException) -> DeliveryError:
    """Map an exception raised by redis-py to a DeliveryError.

    Connection problems and timeouts (except authentication/authorisation failures)
    and replies such as ``LOADING``, ``BUSY``, ``READONLY``, ``OOM`` or ``TRYAGAIN``
    are transient; other error replies (``WRONGTYPE``, ``NOPERM``, script errors) and
    anything unexpected are permanent.
    """
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, _REDIS_PERMANENT_CONN_ERRORS):
        transient = False
    elif isinstance(exc, _REDIS_TRANSIENT_ERRORS):
        transient = True
    elif isinstance(exc, redis_errors.ResponseError):
        transient = str(exc).lstrip().upper().startswith(_REDIS_TRANSIENT_REPLIES)
    else:
        transient = False
    kind = "transient" if transient else "permanent"
    return DeliveryError(
        f"redis {kind} error: {_describe(exc)}", permanent=not transient, sink="redis"
    )


def _root_cause(exc: Exception) -> BaseException:
    """The library exception behind a sink's DeliveryError (or ``exc`` itself)."""
    if isinstance(exc, DeliveryError) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


def _as_delivery_error(exc: Exception, sink: str | None) -> DeliveryError:
    """Classify what a sink let through: OSError (incl. timeouts) is transient."""
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, OSError):
        return DeliveryError(f"{_describe(exc)}", permanent=False, sink=sink)
    return DeliveryError(f"unexpected {_describe(exc)}", permanent=True, sink=sink)


# --------------------------------------------------------------------------- offers


def validate_offer(record: Mapping[str, Any]) -> None:
    """Raise a permanent DeliveryError unless ``offer_id`` and ``uid`` are non-empty strings."""
    if not isinstance(record, Mapping):
        raise DeliveryError(
            f"malformed offer: expected a mapping, got {type(record).__name__}", permanent=True
        )
    problems = []
    for name in REQUIRED_FIELDS:
        value = record.get(name)
        if value is None:
            problems.append(f"{name} is missing")
        elif not isinstance(value, str):
            problems.append(f"{name} must be a string, not {type(value).__name__}")
        elif not value.strip():
            problems.append(f"{name} is empty")
    if problems:
        raise DeliveryError("malformed offer: " + "; ".join(problems), permanent=True)


def offer_json(offer: Mapping[str, Any]) -> str:
    """Compact JSON of the offer; a permanent DeliveryError if it is not plain JSON."""
    try:
        return json.dumps(dict(offer), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DeliveryError(
            f"malformed offer: not JSON-serialisable ({exc})", permanent=True
        ) from exc


def offer_channel(uid: str, prefix: str = "") -> str:
    """``{prefix}offers:{uid}``: the Redis pub/sub and Ably channel of a customer."""
    return f"{prefix}{CHANNEL_PREFIX}{uid}"


def _stream_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    kind = type(value)
    if kind is int or (kind is float and math.isfinite(value)):
        return repr(value)  # what json.dumps writes for them, without its encoder set-up
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def stream_fields(offer: Mapping[str, Any]) -> dict[str, str]:
    """The offer as stream entry fields: strings as-is, ``None`` as ``""``, others as JSON."""
    try:
        return {str(key): _stream_value(value) for key, value in offer.items()}
    except (TypeError, ValueError) as exc:
        raise DeliveryError(
            f"malformed offer: not JSON-serialisable ({exc})", permanent=True
        ) from exc


# ---------------------------------------------------------------------------- sinks


class OfferSink(Protocol):
    """Something that delivers one offer: True = delivered now, False = duplicate."""

    name: str

    async def deliver(self, offer: Mapping[str, Any]) -> bool: ...

    async def close(self) -> None: ...


#: Offers in order, in one call: KEYS = stream, then each offer's marker; ARGV = maxlen,
#: marker TTL, then per offer its channel, JSON and stream fields (a JSON array of strings).
#: Per offer: if its marker exists, 0; else XADD, PUBLISH, then the marker (so an error
#: part-way leaves none), 1. An error stops the script at that offer (offers before it are
#: done: delivery is idempotent).
_DELIVER_LUA: Final = """
local delivered = {}
for i = 2, #KEYS do
  local arg = 3 + (i - 2) * 3
  if redis.call('EXISTS', KEYS[i]) == 1 then
    delivered[i - 1] = 0
  else
    local fields = cjson.decode(ARGV[arg + 2])
    local entry = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
    redis.call('PUBLISH', ARGV[arg], ARGV[arg + 1])
    redis.call('SET', KEYS[i], entry, 'PX', ARGV[2])
    delivered[i - 1] = 1
  end
end
return delivered
"""


class RedisOfferSink:
    """Atomic check-and-publish of offers to Redis pub/sub and a capped stream.

    ``redis`` is a URL (the sink creates and later closes its own client, with
    redis-py's internal retries off: :func:`deliver_with_retry` does the retrying)
    or an existing ``redis.asyncio.Redis`` (left open by :meth:`close`).
    ``key_prefix`` is prepended to the stream, channel and marker names (tests use
    it to stay isolated on a shared server).
    """

    name = "redis"
    #: Offers per script call: a call holds the server for its whole run.
    SCRIPT_BATCH = 500

    def __init__(
        self,
        redis: str | redis_async.Redis,
        *,
        key_prefix: str = "",
        stream: str = DEFAULT_STREAM,
        maxlen: int = DEFAULT_STREAM_MAXLEN,
        dedup_ttl_s: float = DEFAULT_DEDUP_TTL_S,
        connect_timeout_s: float = 2.0,
        timeout_s: float = 5.0,
    ) -> None:
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
            raise ValueError(f"maxlen must be a positive int, not {maxlen!r}")
        if not math.isfinite(dedup_ttl_s) or dedup_ttl_s <= 0:
            raise ValueError(f"dedup_ttl_s must be a positive number, not {dedup_ttl_s!r}")
        if isinstance(redis, str):
            self._client: redis_async.Redis = redis_async.Redis.from_url(
                redis,
                socket_connect_timeout=connect_timeout_s,
                socket_timeout=timeout_s,
                retry=RedisRetry(NoBackoff(), 0),
            )
            self._owns_client = True
        else:
            self._client = redis
            self._owns_client = False
        self.key_prefix = key_prefix
        self.stream_key = f"{key_prefix}{stream}"
        self.maxlen = maxlen
        self.dedup_ttl_ms = max(1, int(dedup_ttl_s * 1000))
        self._script = self._client.register_script(_DELIVER_LUA)

    @property
    def client(self) -> redis_async.Redis:
        """The underlying redis client."""
        return self._client

    def channel(self, uid: str) -> str:
        """Pub/sub channel of a customer: ``{key_prefix}offers:{uid}``."""
        return offer_channel(uid, self.key_prefix)

    def dedup_key(self, offer_id: str) -> str:
        """Marker key of an offer: ``{key_prefix}offer:delivered:{offer_id}``."""
        return f"{self.key_prefix}{DEDUP_PREFIX}{offer_id}"

    async def deliver(self, offer: Mapping[str, Any]) -> bool:
        """PUBLISH + XADD once per offer_id; True if done now, False for a duplicate."""
        (delivered,) = await self._deliver_chunk([offer])
        return delivered

    async def deliver_many(self, offers: Sequence[Mapping[str, Any]]) -> list[bool]:
        """:meth:`deliver` for many offers in one script call, one round trip (same results).

        The offers are delivered in order (:attr:`SCRIPT_BATCH` per call), so a repeated
        offer_id in the batch is a duplicate the second time. Raises a
        :class:`DeliveryError` for the whole batch. One call instead of a pipeline of one
        call per offer: redis-py packed ~30 arguments per offer in Python, which cost more
        CPU than the rest of the position-to-offer path.
        """
        delivered: list[bool] = []
        for start in range(0, len(offers), self.SCRIPT_BATCH):
            delivered += await self._deliver_chunk(offers[start:start + self.SCRIPT_BATCH])
        return delivered

    async def _deliver_chunk(self, offers: Sequence[Mapping[str, Any]]) -> list[bool]:
        keys = [self.stream_key]
        args: list[str | int | bytes] = [self.maxlen, self.dedup_ttl_ms]
        for offer in offers:
            validate_offer(offer)
            fields: list[str] = []
            for field, value in stream_fields(offer).items():
                fields.append(field)
                fields.append(value)
            keys.append(self.dedup_key(offer["offer_id"]))
            args += (self.channel(offer["uid"]), offer_json(offer), orjson.dumps(fields))
        try:
            results = await self._script(keys=keys, args=args)
        except Exception as exc:
            raise classify_redis_error(exc) from exc
        return [int(result) == 1 for result in results]

    async def close(self) -> None:
        """Close the client if this sink created it."""
        if self._owns_client:
            await self._client.aclose()


def _needs_explicit_host(host: str) -> bool:
    # The SDK treats an endpoint without ".", "::" or "localhost" as an Ably routing
    # policy name ("main" -> main.realtime.ably.net), not as a host name.
    return not ("." in host or "::" in host or "localhost" in host)


class AblyOfferSink:
    """Publishes offers with the ``ably`` REST SDK, message id = offer_id.

    By default it talks to Ably's production endpoint over TLS with basic auth and
    the SDK's fallback hosts. ``rest_host`` (an IP, a dotted host name or
    ``localhost``) points it elsewhere with no fallback hosts; ``port`` is the port
    (the TLS port when ``tls``); ``tls=False`` uses plain HTTP. The SDK refuses basic
    auth over plain HTTP, so without TLS it signs token requests locally with the
    key and exchanges them at ``POST /keys/{keyName}/requestToken`` (token auth).
    """

    name = "ably"

    def __init__(
        self,
        api_key: str,
        *,
        rest_host: str | None = None,
        port: int | None = None,
        tls: bool = True,
        http_open_timeout_s: float = 4.0,
        http_request_timeout_s: float = 10.0,
        channel_prefix: str = "",
    ) -> None:
        if not api_key or api_key.count(":") != 1:
            raise ValueError("the Ably API key must look like 'appId.keyId:secret'")
        options: dict[str, Any] = {
            "tls": tls,
            "http_open_timeout": http_open_timeout_s,
            "http_request_timeout": http_request_timeout_s,
            "idempotent_rest_publishing": True,
        }
        if rest_host:
            if _needs_explicit_host(rest_host):
                raise ValueError(
                    f"ABLY rest_host {rest_host!r} would be read by the SDK as a routing "
                    "policy name; use an IP address, a dotted host name or localhost"
                )
            options["endpoint"] = rest_host
            options["fallback_hosts"] = []
        if port:
            options["tls_port" if tls else "port"] = int(port)
        if not tls:
            options["use_token_auth"] = True
        self._client: Any = AblyRest(key=api_key, **options)
        self.channel_prefix = channel_prefix
        self.rest_host = rest_host
        self.port = port
        self.tls = tls

    @property
    def client(self) -> Any:
        """The underlying ``ably.AblyRest`` client."""
        return self._client

    def channel(self, uid: str) -> str:
        """Ably channel of a customer: ``{channel_prefix}offers:{uid}``."""
        return offer_channel(uid, self.channel_prefix)

    async def deliver(self, offer: Mapping[str, Any]) -> bool:
        """Publish the offer (name "offer", id offer_id); always True (Ably dedups by id)."""
        validate_offer(offer)
        data = json.loads(offer_json(offer))
        name = self.channel(offer["uid"])
        channels = self._client.channels
        try:
            message = Message(name=ABLY_MESSAGE_NAME, data=data, id=offer["offer_id"])
            await channels.get(name).publish(message)
        except Exception as exc:
            raise classify_ably_error(exc) from exc
        finally:
            channels.release(name)  # the SDK caches channel objects: one per uid would leak
        return True

    async def close(self) -> None:
        """Close the SDK's HTTP client."""
        await self._client.close()


# ---------------------------------------------------------------------------- retry


async def deliver_with_retry(
    sink: OfferSink,
    offer: Mapping[str, Any],
    policy: RetryPolicy | None = None,
    *,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rnd: random.Random | None = None,
    max_elapsed_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """``sink.deliver(offer)``, retrying transient failures per ``policy``.

    Returns what the sink returned (True delivered, False duplicate). Raises
    :class:`DeliveryError` with ``permanent=True`` on the first permanent failure
    (no retry), or with ``permanent=False, exhausted=True`` once ``policy.attempts``
    tries failed transiently or the next wait would pass ``max_elapsed_s`` since
    the first try. The reason says which, the sink, and the attempt count.
    """
    policy = policy if policy is not None else RetryPolicy()
    sink_name = getattr(sink, "name", type(sink).__name__)
    waits = delays(policy, rnd)
    started = clock()
    last: DeliveryError | None = None
    last_exc: BaseException | None = None
    attempt = 0
    why = f"{policy.attempts} attempts"
    for attempt in range(1, policy.attempts + 1):
        try:
            return await sink.deliver(offer)
        except Exception as exc:
            error = _as_delivery_error(exc, sink_name)
            root = _root_cause(exc)
            if error.permanent:
                raise DeliveryError(
                    f"{sink_name}: permanent failure on attempt {attempt}/{policy.attempts}, "
                    f"not retried: {error.reason}",
                    permanent=True,
                    sink=error.sink or sink_name,
                    attempts=attempt,
                ) from root
            last, last_exc = error, root
        if attempt == policy.attempts:
            break
        wait = waits[attempt - 1]
        if max_elapsed_s is not None and clock() - started + wait > max_elapsed_s:
            why = f"the {max_elapsed_s:g}s time budget"
            break
        log.warning(
            "offer delivery to %s failed (attempt %d/%d), retrying in %.3fs: %s",
            sink_name, attempt, policy.attempts, wait, last.reason,
        )
        await sleep(wait)
    assert last is not None
    raise DeliveryError(
        f"{sink_name}: gave up after {attempt} attempt(s) ({why} exhausted), "
        f"last transient failure: {last.reason}",
        permanent=False,
        sink=last.sink or sink_name,
        attempts=attempt,
        exhausted=True,
    ) from last_exc


# ------------------------------------------------------------------------- combined


@dataclass(frozen=True)
class DeliveryOutcome:
    """What :meth:`OfferDelivery.deliver` did with one offer."""

    offer_id: str
    redis: Literal["delivered", "duplicate"]
    ably: Literal["delivered", "skipped"]

    @property
    def duplicate(self) -> bool:
        """True when Redis had already delivered this offer_id."""
        return self.redis == "duplicate"


def _env_bool(name: str, raw: str | None) -> bool | None:
    if raw is None or not raw.strip():
        return None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def _env_port(name: str, raw: str | None) -> int | None:
    if raw is None or not raw.strip():
        return None
    try:
        port = int(raw.strip())
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{name}={raw!r} is not a port number (1-65535)")
    return port


class OfferDelivery:
    """Deliver offers to Redis (always) then Ably (when configured), with retries.

    Redis first: its atomic marker makes a redelivered offer a ``duplicate`` there.
    Ably is published on every call, duplicates included: a previous attempt may have
    reached Redis but not Ably, and Ably discards a repeated message id.
    """

    def __init__(
        self,
        redis_sink: OfferSink,
        ably_sink: OfferSink | None = None,
        *,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        max_elapsed_s: float | None = None,
    ) -> None:
        self.redis_sink = redis_sink
        self.ably_sink = ably_sink
        self.policy = policy if policy is not None else RetryPolicy()
        self._sleep = sleep
        self.max_elapsed_s = max_elapsed_s

    @classmethod
    def from_settings(
        cls,
        redis_url: str,
        ably_api_key: str | None,
        *,
        ably_rest_host: str | None = None,
        ably_port: int | None = None,
        ably_tls: bool | None = None,
        policy: RetryPolicy | None = None,
        key_prefix: str = "",
        stream_maxlen: int = DEFAULT_STREAM_MAXLEN,
        dedup_ttl_s: float = DEFAULT_DEDUP_TTL_S,
        max_elapsed_s: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> OfferDelivery:
        """Build from settings; Ably only when ``ably_api_key`` is set.

        ``ably_rest_host`` / ``ably_port`` / ``ably_tls`` default to the environment
        variables ``ABLY_REST_HOST`` / ``ABLY_REST_PORT`` / ``ABLY_TLS`` (read from
        ``env``, default ``os.environ``): for tests and self-hosted endpoints. Unset,
        the SDK's production endpoint with TLS is used.
        """
        environ = os.environ if env is None else env
        redis_sink = RedisOfferSink(
            redis_url, key_prefix=key_prefix, maxlen=stream_maxlen, dedup_ttl_s=dedup_ttl_s
        )
        ably_sink: AblyOfferSink | None = None
        if ably_api_key:
            host = ably_rest_host or (environ.get("ABLY_REST_HOST") or "").strip() or None
            port = ably_port or _env_port("ABLY_REST_PORT", environ.get("ABLY_REST_PORT"))
            tls = ably_tls
            if tls is None:
                tls = _env_bool("ABLY_TLS", environ.get("ABLY_TLS"))
            ably_sink = AblyOfferSink(
                ably_api_key,
                rest_host=host,
                port=port,
                tls=True if tls is None else tls,
                channel_prefix=key_prefix,
            )
        return cls(redis_sink, ably_sink, policy=policy, max_elapsed_s=max_elapsed_s)

    @property
    def ably_enabled(self) -> bool:
        """True when offers are also published to Ably."""
        return self.ably_sink is not None

    async def _attempt(self, sink: OfferSink, offer: Mapping[str, Any]) -> bool:
        return await deliver_with_retry(
            sink, offer, self.policy, sleep=self._sleep, max_elapsed_s=self.max_elapsed_s
        )

    async def deliver(self, offer: Mapping[str, Any]) -> DeliveryOutcome:
        """Deliver one offer; raises :class:`DeliveryError` (see :func:`deliver_with_retry`).

        If Ably fails after Redis delivered, the error's reason says so; delivering the
        same offer again later is safe (Redis reports a duplicate, Ably dedups by id).
        """
        validate_offer(offer)
        return await self._then_ably(offer, await self._attempt(self.redis_sink, offer))

    async def _then_ably(self, offer: Mapping[str, Any], redis_new: bool) -> DeliveryOutcome:
        """Publish to Ably (when configured) an offer Redis has taken; the outcome."""
        redis_state: Literal["delivered", "duplicate"] = "delivered" if redis_new else "duplicate"
        ably_state: Literal["delivered", "skipped"] = "skipped"
        if self.ably_sink is not None:
            try:
                await self._attempt(self.ably_sink, offer)
            except DeliveryError as exc:
                exc.reason = f"{exc.reason} (redis: {redis_state})"
                raise
            ably_state = "delivered"
        return DeliveryOutcome(offer["offer_id"], redis_state, ably_state)

    async def deliver_many(
        self, offers: Sequence[Mapping[str, Any]], *, halt_on_transient: bool = False
    ) -> list[DeliveryOutcome | DeliveryError]:
        """:meth:`deliver` for a batch: one pipelined Redis round trip when all goes well.

        If the pipelined attempt fails (or the Redis sink cannot pipeline), every offer of
        the batch goes through :meth:`deliver` with its retries; that is safe because
        delivery is idempotent per offer_id. Each result is the offer's outcome or the
        :class:`DeliveryError` it ended with.

        ``halt_on_transient``: the first transient failure (of the pipelined attempt, or of an
        offer after its retries) is the result of every offer not yet delivered, which are
        not tried: a caller that keeps them for later (:mod:`app.delivery.parking`) does not
        wait out one timeout per offer while Redis or Ably is down.
        """
        results: list[DeliveryOutcome | DeliveryError] = []
        many = getattr(self.redis_sink, "deliver_many", None)
        fresh: list[bool] | None = None
        if many is not None and offers:
            try:
                fresh = await many(offers)
            except Exception as exc:
                error = _as_delivery_error(exc, "redis")
                if halt_on_transient and not error.permanent:
                    return [error] * len(offers)
                log.warning("pipelined delivery of %d offers failed, delivering one by one: "
                            "%s", len(offers), _describe(exc))
        halted: DeliveryError | None = None
        for index, offer in enumerate(offers):
            if halted is not None:
                results.append(halted)
                continue
            try:
                if fresh is None:
                    results.append(await self.deliver(offer))
                else:
                    results.append(await self._then_ably(offer, fresh[index]))
            except DeliveryError as exc:
                results.append(exc)
                if halt_on_transient and not exc.permanent:
                    halted = exc
        return results

    async def close(self) -> None:
        """Close both sinks (the Ably one even if closing Redis fails)."""
        try:
            await self.redis_sink.close()
        finally:
            if self.ably_sink is not None:
                await self.ably_sink.close()

    async def __aenter__(self) -> OfferDelivery:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
