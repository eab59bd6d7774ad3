"""Bearer-token authentication for every web route except ``/health`` and ``/metrics``."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from app.settings import SETTINGS

#: Routes that carry no customer data and stay open for probes and scrapers.
OPEN_PATHS = frozenset({"/health", "/health/", "/metrics", "/metrics/"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant-time compare)."""
    if not header:
        return False
    scheme, _, supplied = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(supplied.strip().encode(), token.encode())


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer 401 unless the request carries the configured ``WEB_TOKEN``."""
    from app.web.live import (
        live_token_ok,  # late: app.web.live imports app.faust_app, which imports us
    )

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
