"""Every topic a deployment needs, with explicit settings (the embedded broker reports only
settings that were set explicitly, DESIGN section 7)."""

from __future__ import annotations

from app.dev.devstack import TopicSpec
from core.config import Settings, repartition_mode
from core.repartition import repartition_topic
from core.topic_plan import DesiredTopic

#: Seven days for event topics; positions are kept far shorter (they are personal data).
EVENT_RETENTION_MS = 7 * 24 * 3600 * 1000
LOCATION_RETENTION_MS = 3600 * 1000
#: Input topics (base names) that may have a repartition topic (``REPARTITION``).
REPARTITIONED = ("products", "users", "purchases", "returns", "stores.products",
                 "products.promotions", "customers.locations")


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Input and output topics, partitioned alike so a customer's events share a partition."""
    t = settings.topics
    n = settings.topic_partitions
    events = {"retention.ms": str(EVENT_RETENTION_MS), "cleanup.policy": "delete",
              "max.message.bytes": str(2 * 1024 * 1024)}
    compacted = {"cleanup.policy": "compact", "retention.ms": "-1",
                 "max.message.bytes": str(2 * 1024 * 1024)}
    locations = {**events, "retention.ms": str(LOCATION_RETENTION_MS)}
    repartition = [
        TopicSpec(repartition_topic(t.name(base)), n,
                  locations if name == t.locations else events)
        for base, name in ((b, t.name(b)) for b in REPARTITIONED)
        if repartition_mode(settings, base) != "off"
    ]
    return [
        TopicSpec(t.products, n, compacted),
        TopicSpec(t.users, n, compacted),
        TopicSpec(t.purchases, n, events),
        TopicSpec(t.returns, n, events),
        TopicSpec(t.displays, n, compacted),
        TopicSpec(t.promotions, n, compacted),
        TopicSpec(t.locations, n, locations),
        TopicSpec(t.offers, n, events),
        TopicSpec(t.redemptions, n, events),
        TopicSpec(t.held_out, n, events),
        TopicSpec(t.presence, n, locations),
        TopicSpec(t.associates, n, events),
        TopicSpec(t.loyalty_events, n, events),
        TopicSpec(t.dead_letters, n, events),
        *repartition,
    ]


def desired_topics(settings: Settings) -> list[DesiredTopic]:
    """:func:`topic_specs` as ``faust -A app topics`` and a starting worker create and verify
    them: every spec's settings (the devstack's defaults included), ``TOPIC_REPLICATION``,
    and ``min.insync.replicas`` when that is above 1 (:func:`core.topic_plan.min_insync_replicas`).
    """
    return [DesiredTopic.build(spec.name, spec.partitions, settings.topic_replication,
                               spec.effective_config())
            for spec in topic_specs(settings)]
