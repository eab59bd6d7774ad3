"""What every agent does around its own logic: never stop the stream, count everything."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from app.deadletters import send_dead_letter
from app.faust_app import METRICS
from core.events import BadEvent

log = logging.getLogger(__name__)

OK = "ok"
DUPLICATE = "duplicate"

#: Handles one message and says how it went (``OK`` or ``DUPLICATE``).
Handler = Callable[[Any], Awaitable[str]]


async def handle(agent: str, message: Any, handler: Handler) -> None:
    """Run ``handler`` on one message; bad input and even bugs are dead-lettered, not raised.

    An exception escaping a Faust agent would restart it and acknowledge (skip) the event
    silently; here the event goes to ``dead-letters`` with the reason and the agent goes on.
    """
    try:
        outcome = await handler(message)
    except (BadEvent, UnicodeDecodeError) as exc:
        await send_dead_letter(message, str(exc))
        outcome = "dead_letter"
    except Exception as exc:
        log.exception("%s: failed to process %s[%s]@%s", agent, message.topic,
                      message.partition, message.offset)
        await send_dead_letter(message, f"processing failed: {exc!r}")
        outcome = "dead_letter"
    METRICS.inc("storestream_events_total", topic=message.topic, outcome=outcome)
    if message.timestamp:
        METRICS.observe("storestream_agent_latency_seconds",
                        max(0.0, time.time() - message.timestamp), agent=agent)
