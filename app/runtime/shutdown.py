"""A bounded shutdown: a worker told to stop exits within ``SHUTDOWN_GRACE_S``.

Stopping, Faust waits for the streams' last batches to be acknowledged, flushes the producer
and commits the input offsets. With the broker gone that wait has no end: measured on Apache
Kafka 4.4 (faust-streaming 0.15.3, aiokafka 0.14.0), a worker whose broker died while it had
records in flight still waited at "Wait for streams..." 120 s after SIGTERM, where an
orchestrator kills it anyway (Kubernetes after 30 s, without a word in the log).

:class:`Worker` (``app.conf.Worker``, Faust's public setting for the worker class) arms a
watchdog thread when the worker begins to stop, for any reason (a signal or a crash), through
mode's public ``Service.on_stop`` hook, which runs before any of the worker's services stop.
If the process is still there when the grace runs out, the watchdog logs what happens and
ends it with :data:`EXIT_GRACE_EXPIRED`. That is a crash as far as the data is concerned: the
input offsets not committed are read again by the next owner of the partitions, and the
state's per-partition offsets keep every record counted once (as after SIGKILL, which the
integration tests exercise).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import Any

import faust

from app.runtime import local_state
from app.settings import SETTINGS

log = logging.getLogger(__name__)

#: The exit status of a worker that did not finish stopping within its grace (``EX_TEMPFAIL``:
#: the usual cause, a broker that is gone, is temporary; the orchestrator restarts it).
EXIT_GRACE_EXPIRED = 75


class ShutdownWatchdog:
    """Ends the process ``grace_s`` seconds after :meth:`arm` unless it has exited by then."""

    def __init__(self, grace_s: float, exit_status: int = EXIT_GRACE_EXPIRED) -> None:
        self.grace_s = grace_s
        self.exit_status = exit_status
        self._timer: threading.Timer | None = None

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self) -> None:
        """Start the countdown (once; a grace of 0 never starts one)."""
        if self._timer is not None or self.grace_s <= 0:
            return
        log.info("stopping: exiting within SHUTDOWN_GRACE_S=%g s", self.grace_s)
        self._timer = threading.Timer(self.grace_s, self._expire)
        self._timer.daemon = True  # a worker that stops in time exits without waiting for it
        self._timer.name = "storestream-shutdown-watchdog"
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        log.critical(
            "the worker did not finish stopping within SHUTDOWN_GRACE_S=%g s (is the broker "
            "reachable?): exiting with status %d; input not committed is read again by the "
            "partitions' next owner and counted once", self.grace_s, self.exit_status)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):  # nothing may keep the process alive now
                handler.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(self.exit_status)


class Worker(faust.Worker):  # type: ignore[misc]
    """Faust's worker with a bounded shutdown (:class:`ShutdownWatchdog`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shutdown_watchdog = ShutdownWatchdog(SETTINGS.shutdown_grace_s)

    async def on_stop(self) -> None:
        """mode's hook, run first when the worker stops: start the countdown."""
        self.shutdown_watchdog.arm()
        await super().on_stop()

    async def on_shutdown(self) -> None:
        """mode's hook, run last, once every service stopped: say whether the local state
        can be used again (:mod:`app.runtime.local_state`)."""
        await super().on_shutdown()
        local_state.on_worker_stopped(self.app, bool(self.crashed))
