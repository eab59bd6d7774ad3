"""Bearer-token authentication for every web route except ``/health`` and ``/metrics``.

The live page's routes also take the token as ``?token=`` (a browser's EventSource sends no
header).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from app.settings import SETTINGS

#: Routes that carry no customer data and stay open for probes and scrapers.
OPEN_PATHS = frozenset({"/health", "/health/", "/metrics", "/metrics/"})
#: Paths on which ``?token=<WEB_TOKEN>`` may replace the header (EventSource sends none).
LIVE_TOKEN_PATHS = frozenset({"/", "/live/store", "/live/events", "/live/promotions"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant-time compare)."""
    if not header:
        return False
    scheme, _, supplied = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(supplied.strip().encode(), token.encode())


def live_token_ok(request: web.Request, token: str | None = None) -> bool:
    """Whether a GET to a live path carries the web token as ``?token=`` (constant-time).

    ``token`` defaults to ``SETTINGS.web_token``; without a configured token this is False.
    """
    expected = SETTINGS.web_token if token is None else token
    if not expected or request.method not in ("GET", "HEAD"):
        return False
    if request.path not in LIVE_TOKEN_PATHS:
        return False
    supplied = request.query.get("token")
    return supplied is not None and token_matches(f"Bearer {supplied}", expected)



@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer 401 unless the request carries the configured ``WEB_TOKEN``."""
    token = SETTINGS.web_token
    if token and request.path not in OPEN_PATHS and not token_matches(
        request.headers.get("Authorization"), token
    ) and not live_token_ok(request):
        return web.json_response(
            {"error": "unauthorized", "detail": "send Authorization: Bearer <WEB_TOKEN>"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="storestream"'},
        )
    return await handler(request)
