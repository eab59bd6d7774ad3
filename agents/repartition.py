"""Agents of the repartition topics (``REPARTITION``): the input topics' own processing,
fed with the records forwarded to ``<topic>.repartition`` (app/routing/repartition.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from faust.types import StreamT

from agents.common import apply_event, handle
from agents.loyalty import apply_product, apply_purchases, apply_returns, apply_user
from agents.offers import apply_display, apply_positions, apply_promotion
from app.faust_app import app
from app.routing.repartition import FORWARDS, divert
from app.runtime.guarantees import GATE
from app.settings import SETTINGS

_T = SETTINGS.topics

#: Input topic -> (agent name, per-message handler) for topics processed one event at a time.
_ONE_BY_ONE: dict[str, tuple[str, Callable[[Any], Awaitable[str]]]] = {
    _T.products: ("products", apply_product),
    _T.users: ("users", apply_user),
    _T.displays: ("displays", apply_display),
    _T.promotions: ("promotions", apply_promotion),
}
#: Input topic -> (agent name, batch function) for the fast-lane topics.
_BATCHED: dict[str, tuple[str, Any]] = {
    _T.purchases: ("purchases", apply_purchases),
    _T.returns: ("returns", apply_returns),
    _T.locations: ("locations", apply_positions),
}


def _one_by_one(name: str, handler: Callable[[Any], Awaitable[str]]) -> Any:
    async def process(stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            await handle(name, event.message, handler)
    return process


def _batched(name: str, apply: Any) -> Any:
    async def process(stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            async with GATE.event():
                if await divert(event.message) is not None:
                    continue
                await apply_event(event.message, apply)
    return process


for _input, (_mode, _field, _target) in FORWARDS.items():
    if _input in _ONE_BY_ONE:
        _name, _handler = _ONE_BY_ONE[_input]
        app_agent = _one_by_one(_name, _handler)
    else:
        _name, _apply = _BATCHED[_input]
        app_agent = _batched(_name, _apply)
    app.agent(_target, name=f"{_name}-repartition")(app_agent)
