"""The Faust application object, configured from :data:`app.settings.SETTINGS`."""

from __future__ import annotations

import logging
import os
import ssl
import sys
from typing import Any

import faust
from faust.serializers import codecs

from app.broker import broker_check
from app.routing.partitioning import KeyPartitioner
from app.runtime import gc_tuning, internals, local_state, transport
from app.runtime.guarantees import on_worker_init as check_processing_guarantee
from app.settings import SETTINGS
from app.web.auth import bearer_auth
from core.metrics import Metrics


class Utf8(codecs.Codec):  # type: ignore[misc]
    """Keys as plain UTF-8 text: the bytes a producer hashes are the bytes Faust routes by."""

    def _dumps(self, value: Any) -> bytes:
        return value.encode("utf-8") if isinstance(value, str) else bytes(value)

    def _loads(self, raw: bytes) -> str:
        return raw.decode("utf-8")


codecs.register("utf8", Utf8())
transport.install()


def broker_credentials() -> faust.SASLCredentials | None:
    """SASL_SSL credentials from ``KAFKA_SASL_*`` environment variables, when set.

    ``KAFKA_SASL_USERNAME`` turns SASL over TLS on; ``KAFKA_SASL_MECHANISM`` is one of
    :data:`app.broker.broker_check.SASL_MECHANISMS` (default ``PLAIN``); the broker's certificate is
    verified against ``KAFKA_SSL_CAFILE`` (a PEM file), else the system's CAs, and must name
    the host of ``BROKER_URL``. A mechanism or CA file that cannot be used ends the process
    with one line (``SystemExit``) rather than a traceback.
    """
    username = os.environ.get("KAFKA_SASL_USERNAME")
    if not username:
        return None
    mechanism = (os.environ.get("KAFKA_SASL_MECHANISM") or "PLAIN").strip().upper()
    if mechanism not in broker_check.SASL_MECHANISMS:
        raise SystemExit(f"storestream: KAFKA_SASL_MECHANISM={mechanism} is not supported: "
                         f"use one of {', '.join(broker_check.SASL_MECHANISMS)}")
    cafile = os.environ.get("KAFKA_SSL_CAFILE") or None
    try:
        context = ssl.create_default_context(cafile=cafile)
    except OSError as exc:  # ssl.SSLError too
        reason = exc.strerror or exc
        raise SystemExit(f"storestream: KAFKA_SSL_CAFILE={cafile} cannot be used as the CA of "
                         f"the Kafka brokers: {reason}") from None
    return faust.SASLCredentials(
        username=username,
        password=os.environ.get("KAFKA_SASL_PASSWORD", ""),
        mechanism=mechanism,
        ssl_context=context,
    )


def _web_host() -> str:
    return "127.0.0.1" if SETTINGS.web_bind in ("0.0.0.0", "::", "") else SETTINGS.web_bind


app = faust.App(
    SETTINGS.app_id,
    broker=SETTINGS.broker_url,
    broker_credentials=broker_credentials(),
    store=SETTINGS.store,
    datadir=SETTINGS.datadir,
    topic_partitions=SETTINGS.topic_partitions,
    topic_replication_factor=SETTINGS.topic_replication,
    processing_guarantee=SETTINGS.processing_guarantee,
    broker_session_timeout=SETTINGS.broker_session_timeout_s,
    broker_heartbeat_interval=min(3.0, SETTINGS.broker_session_timeout_s / 3),
    consumer_auto_offset_reset="earliest",
    consumer_max_fetch_size=SETTINGS.consumer_max_fetch_size,
    producer_max_batch_size=SETTINGS.producer_max_batch_size,
    # Keyed records produced, and the owner of a key for routed web queries, as the input
    # topics' producers hash keys (app/routing/partitioning.py).
    producer_partitioner=KeyPartitioner(SETTINGS.key_partitioner),
    key_serializer="raw",
    value_serializer="raw",
    table_standby_replicas=1,
    TableManager="app.runtime.recovery:TableManager",
    # A stopping worker exits within SHUTDOWN_GRACE_S, even with its broker gone.
    Worker="app.runtime.shutdown:Worker",
    web_port=SETTINGS.web_port,
    web_bind=SETTINGS.web_bind,
    web_host=os.environ.get("WEB_HOST", _web_host()),
    canonical_url=os.environ.get("CANONICAL_URL", f"http://{_web_host()}:{SETTINGS.web_port}"),
    web_enabled=True,
    web_application_options={"middlewares": [bearer_auth]},
    autodiscover=["app.commands"],
)

def _check_guarantee(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    """exactly_once needs Kafka transactions: refuse to start, clearly, without them."""
    check_processing_guarantee(sender, **kwargs)


def _tune_gc(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    """Every module is imported by now: freeze them and raise the collector's threshold."""
    gc_tuning.tune(SETTINGS.gc_gen0_threshold)


def _check_internals(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    """Warn, naming what to re-check, when faust, mode or aiokafka is a release the mirrored
    internals were not checked against (app/runtime/internals.py): a worker upgraded past
    the pins still starts, but says where it may misbehave."""
    for problem in internals.problems():
        logging.getLogger(__name__).warning("unchecked release: %s", problem)


app.on_worker_init.connect(broker_check.on_worker_init)
app.on_worker_init.connect(_check_guarantee)
app.on_worker_init.connect(_check_internals)
app.on_worker_init.connect(_tune_gc)


def _local_state(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    """``rocksdb://``: local tables are used again only after a settled stop."""
    local_state.on_worker_init(sender, broker_check.invoked_command(sys.argv))


app.on_worker_init.connect(_local_state)


def _stall_probe(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    """``STALL_PROBE=<file>``: the event loop's timeline, for latency stalls (debug only)."""
    path = os.environ.get("STALL_PROBE")
    if path:
        from app.runtime import stall_probe

        stall_probe.install(path)


app.on_worker_init.connect(_stall_probe)


#: Process-wide metrics served at ``/metrics``.
METRICS = Metrics()
for _name, _kind, _help in (
    ("storestream_events_total", "counter", "Events processed, by topic and outcome"),
    ("storestream_dead_letters_total", "counter", "Events sent to dead-letters"),
    ("storestream_offers_total", "counter", "Offers emitted, by store"),
    ("storestream_offers_held_out_total", "counter",
     "Offers held out (control group, CONTROL_GROUP_PCT): recorded, never sent, by store"),
    ("storestream_positions_inaccurate_total", "counter",
     "Positions whose accuracy_m exceeds MAX_ACCURACY_M (never trigger an offer), by store"),
    ("storestream_presence_events_total", "counter",
     "Shoppers entering and leaving a display's radius (displays.presence), by event"),
    ("storestream_offers_withheld_total", "counter",
     "Offers withheld by a frequency cap or a store's quiet hours (never queued), by reason"),
    ("storestream_associate_alerts_total", "counter",
     "Shoppers of ASSOCIATE_TIERS arriving in a store (associates.alerts), by store"),
    ("storestream_associate_alerts_delivered_total", "counter",
     "Associates alerts published, by sink (redis, ably) and outcome (delivered or duplicate)"),
    ("storestream_associate_alert_failures_total", "counter",
     "Associates alerts that could not be published after retries (dead-lettered), by kind"),
    ("storestream_redemptions_total", "counter",
     "Purchases attributed to an offer (offers.redemptions), by promotion"),
    ("storestream_offers_delivered_total", "counter",
     "Offers pushed, by sink and outcome (delivered or duplicate)"),
    ("storestream_offers_left_to_backstop_total", "counter",
     "Offers the direct push did not deliver, left to the offers topic's consumer, by reason"),
    ("storestream_offer_delivery_failures_total", "counter",
     "Offers that could not be pushed (dead-lettered), by kind"),
    ("storestream_fast_lane_records_total", "counter",
     "Records processed in the fast lane (app/runtime/fastlane.py), by topic"),
    ("storestream_fast_lane_batches_total", "counter",
     "Partition batches processed in the fast lane, by topic"),
    ("storestream_fast_lane_first_batch_seconds", "gauge",
     "Wall-clock time at the start of the first fast-lane batch"),
    ("storestream_fast_lane_first_batch_cpu_seconds", "gauge",
     "Process CPU time at the start of the first fast-lane batch"),
    ("storestream_fast_lane_last_batch_seconds", "gauge",
     "Wall-clock time at the end of the latest fast-lane batch"),
    ("storestream_fast_lane_last_batch_cpu_seconds", "gauge",
     "Process CPU time at the end of the latest fast-lane batch"),
    ("storestream_ready", "gauge", "1 once recovered and processing"),
    ("storestream_consumer_partitions", "gauge",
     "Partitions assigned to the worker's consumer, by kind and fetch state in aiokafka"),
    ("storestream_replica_keys", "gauge", "Keys in this worker's replica"),
    ("storestream_replica_applied_total", "counter",
     "Changelog records applied to this worker's replica"),
    ("storestream_agent_latency_seconds", "histogram",
     "Time from record timestamp to processed, per agent"),
    ("storestream_misplaced_records_total", "counter",
     "Input records whose key KEY_PARTITIONER puts on another partition, by topic"),
    ("storestream_changelog_superseded_total", "counter",
     "Changelog records skipped on restore: older, by their source offsets, than the value "
     "already restored (a cut-off worker's late write), by table"),
):
    METRICS.describe(_name, _kind, _help)
