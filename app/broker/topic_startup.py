"""A worker on a broker without its topics creates them at start, or exits naming them.

Without this, a worker on a fresh broker waited forever ("holding the streams until replicas
are loaded: dead-letters", /health 503): nothing reads or writes the dead-letters topic until
something goes wrong, so nothing created it. :func:`ensure_topics_at_start` runs from
``app.on_worker_init``, before the worker starts its producer, consumer, tables or replicas:

* every topic of :func:`app.broker.topology.desired_topics` that is missing is created as
  ``faust -A app topics`` creates it (``TOPIC_CREATE=on``, the default), or
* with ``TOPIC_CREATE=off`` the worker exits at once (status 1) with one line naming the
  missing topics and the command that creates them;
* existing topics that differ (partitions, replication, settings) are named in a warning:
  the worker runs, ``faust -A app topics`` says how they differ and exits non-zero;
* input topics with unequal partition counts end the worker at once (status 1) with one line
  naming the counts (:func:`core.topic_plan.unequal_partitions`).

Faust sends ``on_worker_init`` while it loads the app for *any* ``faust -A app`` command
(``topics``, ``devstack``, ``simulate`` ...), so the receiver acts only when the command is
``worker``: ``faust -A app topics`` must work on a broker without topics, and ``devstack``
starts before there is a broker. When the broker cannot be reached at all, the check is
skipped with a warning and the worker behaves as it would without it.

Logging is not configured yet when this runs: the lines it writes are complete sentences
on stderr (Python's last-resort handler), prefixed ``storestream:``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from app.broker.broker_check import invoked_command
from app.broker.broker_check import on_worker_init as check_broker_access
from app.broker.topic_admin import TopicAdminError, TopicReport, reconcile, run_blocking
from app.broker.topology import desired_topics
from app.runtime.replica import replica_connection
from app.settings import SETTINGS
from core.config import Settings
from core.topic_plan import unequal_partitions

log = logging.getLogger(__name__)

#: Bound (s) for the start-up check: connect, describe, create.
STARTUP_TIMEOUT_S = 30.0
_checked = False


def missing_topics_message(report: TopicReport, bootstrap: str) -> str:
    """The one line a worker with ``TOPIC_CREATE=off`` exits with."""
    return (f"storestream: {len(report.missing)} topic(s) missing on the broker at "
            f"{bootstrap} and TOPIC_CREATE=off: {', '.join(report.missing)}. Create them with "
            f"`faust -A app topics` (same environment as the worker), or start the worker "
            f"with TOPIC_CREATE=on")


def ensure_topics_at_start(settings: Settings, bootstrap: str, auth: dict[str, Any],
                           timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Create the missing topics or, with ``TOPIC_CREATE=off``, exit naming them."""
    try:
        report = run_blocking(lambda: reconcile(
            bootstrap, auth, desired_topics(settings), create_missing=settings.topic_create,
            timeout_s=timeout_s))
    except TopicAdminError as exc:
        log.warning("storestream: topics not checked at start (%s); the worker starts "
                    "anyway, `faust -A app topics` creates and verifies them", exc)
        return
    if report.created:
        log.warning("storestream: created %d missing topic(s) on the broker at %s: %s",
                    len(report.created), bootstrap, ", ".join(report.created))
    if report.missing:
        if not settings.topic_create:
            log.error("%s", missing_topics_message(report, bootstrap))
        else:
            log.error("storestream: could not create topic(s) on the broker at %s: %s",
                      bootstrap, _grouped(report.failures))
        raise SystemExit(1)
    mismatch = unequal_partitions(report.partitions, input_topics(settings))
    if mismatch is not None:
        log.error("%s", mismatch)
        raise SystemExit(1)
    if report.differs:
        log.warning("storestream: topics differ from app/broker/topology.py (the worker runs; "
                    "`faust -A app topics` reports them): %s", " | ".join(report.differs))


def input_topics(settings: Settings) -> tuple[str, ...]:
    """The topics producers write and agents read, co-partitioned by their owner keys."""
    t = settings.topics
    return (t.products, t.users, t.purchases, t.returns, t.displays, t.promotions,
            t.locations)


def _grouped(failures: Mapping[str, str]) -> str:
    """``why (a, b); why (c)``: one reason per group of topics refused for it."""
    by_reason: dict[str, list[str]] = {}
    for name, why in failures.items():
        by_reason.setdefault(why, []).append(name)
    return "; ".join(f"{why} ({', '.join(names)})" for why, names in by_reason.items())


def on_worker_init(sender: Any, /, *args: Any, signal: Any = None, **kwargs: Any) -> None:
    """``app.on_worker_init`` receiver: :func:`ensure_topics_at_start`, for ``worker`` only
    and once per process (Faust may load the app twice)."""
    global _checked
    if _checked or invoked_command(sys.argv) != "worker":
        return
    _checked = True
    # Receivers run in no fixed order: a refused login must be the one line the worker
    # prints, before this check's own connection attempt logs anything (runs once).
    check_broker_access(sender)
    bootstrap, auth, _ = replica_connection(sender)
    ensure_topics_at_start(SETTINGS, bootstrap, auth)


def connect(app: Any) -> None:
    """Connect :func:`on_worker_init` to ``app.on_worker_init``."""
    app.on_worker_init.connect(on_worker_init)
