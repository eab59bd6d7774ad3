"""A tiny local stand-in for the Ably REST API, enough for ``ably.AblyRest`` publishing.

What the ably SDK (3.x) sends when pointed here with ``endpoint=127.0.0.1``,
``port=<stub port>``, ``tls=False`` and ``fallback_hosts=[]``:

* ``POST /keys/{keyName}/requestToken``: the SDK refuses basic auth over plain HTTP,
  so it signs a token request locally with the key and exchanges it here; the body
  (msgpack by default, JSON with ``use_binary_protocol=False``) has ``keyName``,
  ``timestamp``, ``nonce``, ``mac``... and the answer must be TokenDetails JSON
  (``token``, ``expires``, ``issued``, ``capability``, ``keyName``).
* ``POST /channels/{quote_plus(channel)}/messages`` with ``Authorization: Bearer
  base64(token)`` (or ``Basic base64(key)`` over TLS): one message object or a list;
  each has ``name``, ``id``, ``data`` and ``encoding`` (a dict is sent as a JSON
  string with ``encoding: "json"``). Any 2xx is success; a JSON or msgpack body is
  parsed (``serials`` read from it).
* ``GET /time`` only with ``query_time=True`` (not used by the delivery code).

Errors are answered the way Ably does, ``{"error": {"message", "statusCode",
"code"}}``, which the SDK turns into ``AblyException(status_code, code)``.

The stub runs an aiohttp server on its own event loop in a daemon thread, so it
works from sync and async tests alike. It deduplicates nothing: every successful
publish is recorded; :meth:`AblyStub.unique_ids` gives the distinct message ids.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal
from urllib.parse import unquote_plus

import msgpack  # type: ignore[import-untyped]
from aiohttp import web

__all__ = ["AblyStub", "PublishedMessage", "StubRequest"]

Scope = Literal["publish", "token", "any"]
Kind = Literal["publish", "token", "time", "other"]

_MESSAGES_PATH = re.compile(r"^/channels/(?P<channel>[^/]+)/messages$")
_TOKEN_PATH = re.compile(r"^/keys/(?P<key_name>[^/]+)/requestToken$")


@dataclass(frozen=True)
class PublishedMessage:
    """One message received by a successful publish, with ``data`` decoded."""

    channel: str
    name: str | None
    id: str | None
    data: Any
    encoding: str | None
    client_id: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class StubRequest:
    """One request as received (before failure injection), and the status answered."""

    method: str
    path: str
    kind: Kind
    status: int


@dataclass
class _Failure:
    remaining: int
    status: int
    code: int
    message: str
    scope: Scope


def _decode_data(data: Any, encoding: str | None) -> Any:
    """Undo the message ``encoding`` chain (``json``, ``utf-8``, ``base64``), last step first."""
    if not encoding:
        return data
    for step in reversed(encoding.split("/")):
        if step == "base64":
            data = base64.b64decode(data)
        elif step == "utf-8":
            data = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        elif step == "json":
            data = json.loads(data)
        else:  # cipher+... or unknown: leave the rest encoded
            break
    return data


class AblyStub:
    """Local Ably REST endpoint: ``with AblyStub() as stub: ... stub.host, stub.port``.

    ``api_key`` ("keyName:secret"): when set, token requests for another key name and
    basic auth with other credentials get ``401 / 40101``; ``None`` accepts any key.
    Publishes must carry a token issued here (or matching basic credentials).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = "stub-app.stub-key:stub-secret",
        token_ttl_ms: int = 3_600_000,
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.token_ttl_ms = token_ttl_ms
        self._lock = threading.Lock()
        self._published: list[PublishedMessage] = []
        self._requests: list[StubRequest] = []
        self._failures: list[_Failure] = []
        self._tokens: set[str] = set()
        self._serials = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._startup_error: BaseException | None = None

    # -------------------------------------------------------------- inspection
    def worker_env(self) -> dict[str, str]:
        """What a worker needs to push offers here (its ``ABLY_*`` environment)."""
        return {"ABLY_API_KEY": str(self.api_key), "ABLY_REST_HOST": self.host,
                "ABLY_REST_PORT": str(self.port), "ABLY_TLS": "false"}

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    @property
    def published(self) -> list[PublishedMessage]:
        """Every message of every successful publish, in arrival order (a copy)."""
        with self._lock:
            return list(self._published)

    @property
    def requests(self) -> list[StubRequest]:
        """Every request received, failed ones included (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def publish_attempts(self) -> int:
        """How many publish requests arrived (successful or not)."""
        return sum(1 for r in self.requests if r.kind == "publish")

    @property
    def tokens_issued(self) -> int:
        """How many tokens ``requestToken`` handed out."""
        with self._lock:
            return len(self._tokens)

    def unique_ids(self) -> list[str | None]:
        """Distinct message ids of the published messages, first-seen order."""
        return list(dict.fromkeys(m.id for m in self.published))

    def publish_counts(self) -> Counter[str | None]:
        """How many times each message id was published (successfully): Ably keeps one
        message per id, so a count above 1 is a repeat that only its idempotency hides."""
        return Counter(m.id for m in self.published)

    def on_channel(self, channel: str) -> list[PublishedMessage]:
        """Published messages of one channel."""
        return [m for m in self.published if m.channel == channel]

    # --------------------------------------------------------------- behaviour
    def fail_next(
        self,
        n: int,
        status: int,
        *,
        code: int | None = None,
        message: str | None = None,
        scope: Scope = "publish",
    ) -> None:
        """Answer the next ``n`` matching requests with ``status`` (Ably error body).

        ``scope``: ``"publish"`` (default) counts only publish requests, ``"token"``
        only token requests, ``"any"`` every request. Rules queue up in order.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._lock:
            self._failures.append(
                _Failure(
                    remaining=n,
                    status=status,
                    code=code if code is not None else status * 100,
                    message=message or f"stub-injected failure {status}",
                    scope=scope,
                )
            )

    def reset(self) -> None:
        """Forget published messages, requests and pending failures (tokens stay valid)."""
        with self._lock:
            self._published.clear()
            self._requests.clear()
            self._failures.clear()

    # -------------------------------------------------------------- lifecycle
    def start(self) -> AblyStub:
        """Start the server thread; returns once it is listening."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name="ably-stub", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the Ably stub did not start within 10s")
        if self._startup_error is not None:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError(f"the Ably stub failed to start: {self._startup_error!r}")
        return self

    def stop(self) -> None:
        """Stop the server and its thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> AblyStub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._start_server())
            except BaseException as exc:
                self._startup_error = exc
                return
            finally:
                ready.set()
            loop.run_forever()
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
        finally:
            loop.close()

    async def _start_server(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        for address in self._runner.addresses:
            if isinstance(address, tuple):
                self.port = int(address[1])
                break

    # --------------------------------------------------------------- handling
    @staticmethod
    def _error(status: int, code: int, message: str) -> web.Response:
        body = {"error": {"message": message, "statusCode": status, "code": code}}
        return web.json_response(body, status=status)

    @staticmethod
    async def _body(request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        if request.content_type == "application/x-msgpack":
            return msgpack.unpackb(raw, raw=False)
        return json.loads(raw)

    def _take_failure(self, kind: Kind) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.remaining <= 0:
                    continue
                if failure.scope == "any" or failure.scope == kind:
                    failure.remaining -= 1
                    return failure
                # a pending rule for another scope does not block this one
        return None

    def _record(self, method: str, path: str, kind: Kind, status: int) -> None:
        with self._lock:
            self._requests.append(StubRequest(method, path, kind, status))

    def _authorised(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return False
        if scheme.lower() == "bearer":
            with self._lock:
                return decoded in self._tokens
        if scheme.lower() == "basic":
            return self.api_key is None or decoded == self.api_key
        return False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        kind: Kind
        if request.method == "POST" and _MESSAGES_PATH.match(path):
            kind = "publish"
        elif request.method == "POST" and _TOKEN_PATH.match(path):
            kind = "token"
        elif request.method == "GET" and path == "/time":
            kind = "time"
        else:
            kind = "other"
        failure = self._take_failure(kind)
        if failure is not None:
            response = self._error(failure.status, failure.code, failure.message)
        elif kind == "publish":
            response = await self._publish(request, path)
        elif kind == "token":
            response = await self._request_token(request, path)
        elif kind == "time":
            response = web.json_response([int(time.time() * 1000)])
        else:
            response = self._error(404, 40400, f"stub: no route for {request.method} {path}")
        self._record(request.method, path, kind, response.status)
        return response

    async def _request_token(self, request: web.Request, path: str) -> web.Response:
        match = _TOKEN_PATH.match(path)
        assert match is not None
        key_name = unquote_plus(match["key_name"])
        if self.api_key is not None and key_name != self.api_key.split(":", 1)[0]:
            return self._error(401, 40101, f"stub: invalid key name {key_name!r}")
        try:
            body = await self._body(request) or {}
        except ValueError as exc:
            return self._error(400, 40000, f"stub: unreadable token request: {exc}")
        now = int(time.time() * 1000)
        token = f"stub-token-{next(self._serials)}"
        with self._lock:
            self._tokens.add(token)
        details = {
            "token": token,
            "keyName": key_name,
            "issued": now,
            "expires": now + self.token_ttl_ms,
            "capability": body.get("capability") or '{"*":["*"]}',
            "clientId": body.get("clientId"),
        }
        return web.json_response(details)

    async def _publish(self, request: web.Request, path: str) -> web.Response:
        if not self._authorised(request.headers.get("Authorization", "")):
            return self._error(401, 40101, "stub: missing or invalid credentials")
        match = _MESSAGES_PATH.match(path)
        assert match is not None
        channel = unquote_plus(match["channel"])
        try:
            body = await self._body(request)
        except ValueError as exc:
            return self._error(400, 40000, f"stub: unreadable body: {exc}")
        items = body if isinstance(body, list) else [body]
        messages = []
        for item in items:
            if not isinstance(item, dict):
                return self._error(400, 40000, "stub: a message must be an object")
            encoding = item.get("encoding")
            try:
                data = _decode_data(item.get("data"), encoding)
            except (ValueError, TypeError) as exc:
                return self._error(400, 40013, f"stub: cannot decode data: {exc}")
            messages.append(
                PublishedMessage(
                    channel=channel,
                    name=item.get("name"),
                    id=item.get("id"),
                    data=data,
                    encoding=encoding,
                    client_id=item.get("clientId"),
                    raw=item,
                )
            )
        with self._lock:
            self._published.extend(messages)
            serials = [f"stub-serial-{next(self._serials)}" for _ in messages]
        first_id = messages[0].id if messages else None
        return web.json_response(
            {"channel": channel, "messageId": first_id, "serials": serials}, status=201
        )
