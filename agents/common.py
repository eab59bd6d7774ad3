"""What every agent does around its own logic: never stop the stream, count everything."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from app.deadletters import send_dead_letter
from app.faust_app import METRICS
from core.events import BadEvent
from tables.deadletters import already_dead_lettered, dead_letter_marks, mark_key

log = logging.getLogger(__name__)

OK = "ok"
DUPLICATE = "duplicate"

async def dead_letter_once(message: Any, reason: str) -> str:
    """Dead-letter a message unless a previous run already did (redelivery after a crash).

    The offsets of valid events are remembered in each key's state; for bad events the
    highest dead-lettered offset of the source partition is remembered instead, in a
    changelogged table and, for a crash between the two sends, on the dead-letters topic.
    """
    if already_dead_lettered(message.topic, message.partition, message.offset):
        return DUPLICATE
    await send_dead_letter(message, reason)
    dead_letter_marks[mark_key(message.topic, message.partition)] = message.offset
    return "dead_letter"


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
        outcome = await dead_letter_once(message, str(exc))
    except Exception as exc:
        log.exception("%s: failed to process %s[%s]@%s", agent, message.topic,
                      message.partition, message.offset)
        outcome = await dead_letter_once(message, f"processing failed: {exc!r}")
    METRICS.inc("storestream_events_total", topic=message.topic, outcome=outcome)
    if message.timestamp:
        METRICS.observe("storestream_agent_latency_seconds",
                        max(0.0, time.time() - message.timestamp), agent=agent)
