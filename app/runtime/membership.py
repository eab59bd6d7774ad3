"""Whether this worker still belongs to its consumer group: a zombie does not dead-letter.

A worker cut off from the brokers longer than the session timeout has lost its partitions
to the others, but it learns so only at its next heartbeat after the cut heals (in the
cluster run: 23 s after the heal, heartbeats backing off). Meanwhile it goes on processing
what it fetches, and a dead letter it sends duplicates the one the partition's new owner
sends for the same record (at_least_once has no fencing; measured: 2 dead letters twice in
a full cluster run, each one by the cut-off worker and one by its successor, 0.7 s apart).

:class:`Membership` records when a heartbeat last succeeded (aiokafka's coordinator keeps it
to itself: :func:`watch` wraps its ``_do_heartbeat``). :meth:`Membership.confirmed`, asked
before a dead letter goes out, answers at once while one succeeded within the session
timeout; otherwise it waits until one does (still a member: go on) or a rebalance begins
(the record may be its new owner's: leave it, unacknowledged in the fast lane, so that
whoever owns the partition next reads it again). No Faust import.

Private internals mirrored (listed in app/runtime/internals.py; checked against aiokafka
0.14.0, re-check on upgrade): ``AIOKafkaConsumer._coordinator``,
``GroupCoordinator._do_heartbeat`` (wrapped).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

#: How often a wait for a heartbeat or a new generation looks again (s).
POLL_S = 0.2


class Membership:
    """When a heartbeat to the group coordinator last succeeded."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 watching: bool = True) -> None:
        self._clock = clock
        self.last_ok = clock()
        #: Whether heartbeats are recorded (:func:`watch`); if not, everything is confirmed.
        self.watching = watching

    def watch_from_now(self) -> None:
        """Heartbeats are recorded from now on (the session starts now)."""
        self.last_ok = self._clock()
        self.watching = True

    def heartbeat_ok(self) -> None:
        """A heartbeat succeeded now."""
        self.last_ok = self._clock()

    def fresh(self, session_timeout_s: float) -> bool:
        """Whether a heartbeat succeeded within the session timeout."""
        return self._clock() - self.last_ok <= session_timeout_s

    async def confirmed(self, session_timeout_s: float, moved_on: Callable[[], bool],
                        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> bool:
        """True while (or once) a heartbeat succeeded within the session timeout; False once
        ``moved_on()`` (a rebalance began) before one did: the partitions may be someone
        else's, and the rebalance waits for this event (waiting on would deadlock it)."""
        if not self.watching or self.fresh(session_timeout_s):
            return True
        log.warning("no heartbeat answered for %.1f s (session timeout %.1f s): holding a "
                    "dead letter until the group says this worker is still a member",
                    self._clock() - self.last_ok, session_timeout_s)
        while True:
            await sleep(POLL_S)
            if moved_on():
                return False
            if self.fresh(session_timeout_s):
                return True


#: This worker's membership (nothing is held until :func:`watch` has been called).
MEMBERSHIP = Membership(watching=False)


def watch(consumer: Any, membership: Membership = MEMBERSHIP) -> None:
    """Record every successful heartbeat of an aiokafka consumer's group coordinator."""
    coordinator = getattr(consumer, "_coordinator", None)
    beat = getattr(coordinator, "_do_heartbeat", None)
    if beat is None:
        log.warning("no group coordinator heartbeat to watch: dead letters are not fenced")
        return

    async def do_heartbeat() -> Any:
        ok = await beat()
        if ok:
            membership.heartbeat_ok()
        return ok

    watched: Any = coordinator
    watched._do_heartbeat = do_heartbeat
    membership.watch_from_now()
