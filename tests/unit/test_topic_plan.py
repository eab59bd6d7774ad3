"""Topic plan: which topics to create, which are as declared, which differ and how."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.broker.broker_check import invoked_command
from app.broker.topology import desired_topics
from core.config import ConfigError, load_settings
from core.topic_plan import (
    DesiredTopic,
    ReportedTopic,
    TopicState,
    compare,
    min_insync_replicas,
    plan,
)

ROOT = Path(__file__).resolve().parents[2]
INI = str(ROOT / "faust.ini")

EVENTS = {"cleanup.policy": "delete", "retention.ms": "604800000"}
COMPACTED = {"cleanup.policy": "compact", "retention.ms": "-1"}


def reported(topic: DesiredTopic, **changes: object) -> ReportedTopic:
    """What a broker reports for ``topic`` created as declared, with ``changes``."""
    fields: dict[str, object] = {"name": topic.name, "partitions": topic.partitions,
                                 "replication": topic.replication, "config": dict(topic.config)}
    fields.update(changes)
    return ReportedTopic(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("replication", "expected"), [(1, None), (2, 1), (3, 2), (4, 2), (5, 2)])
def test_min_insync_replicas_is_replication_minus_one_at_most_two(
        replication: int, expected: int | None) -> None:
    assert min_insync_replicas(replication) == expected


def test_replication_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        min_insync_replicas(0)
    with pytest.raises(ValueError):
        DesiredTopic.build("t", 0, 1, {})


def test_build_adds_min_insync_replicas_only_above_replication_one() -> None:
    assert DesiredTopic.build("t", 4, 1, EVENTS).config == EVENTS
    three = DesiredTopic.build("t", 4, 3, {"retention.ms": 5})
    assert three.config == {"retention.ms": "5", "min.insync.replicas": "2"}
    assert three.replication == 3 and three.partitions == 4


def test_missing_topics_are_created_and_matching_ones_are_ok() -> None:
    users = DesiredTopic.build("users", 4, 1, COMPACTED)
    purchases = DesiredTopic.build("purchases", 4, 1, EVENTS)
    result = plan([users, purchases], {"users": reported(users)})
    assert result.create == (purchases,)
    assert result.missing == ("purchases",)
    assert result.ok == ("users",)
    assert result.differs == ()


def test_a_differing_topic_is_named_with_every_difference() -> None:
    purchases = DesiredTopic.build("purchases", 4, 1, {"cleanup.policy": "compact"})
    result = plan([purchases], {"purchases": reported(
        purchases, partitions=2, config={"cleanup.policy": "delete"})})
    assert result.create == () and result.ok == ()
    (difference,) = result.differs
    assert difference.describe() == (
        "purchases: partitions 2, expected 4; cleanup.policy delete, expected compact")


def test_replication_and_unset_settings_differ() -> None:
    topic = DesiredTopic.build("offers", 4, 3, EVENTS)
    problems = compare(topic, reported(topic, replication=1, config=EVENTS))
    assert problems == ("replication 1, expected 3",
                        "min.insync.replicas not set, expected 2")


def test_settings_we_do_not_set_are_not_compared() -> None:
    """Apache Kafka reports every setting, defaults included; only ours count."""
    topic = DesiredTopic.build("users", 4, 1, COMPACTED)
    everything = {**COMPACTED, "segment.bytes": "1073741824", "min.insync.replicas": "1",
                  "compression.type": "producer"}
    assert compare(topic, reported(topic, config=everything)) == ()


def test_cleanup_policy_is_a_set_and_values_are_trimmed() -> None:
    topic = DesiredTopic.build("t", 1, 1, {"cleanup.policy": "compact,delete",
                                           "retention.ms": "10"})
    same = reported(topic, config={"cleanup.policy": "delete, compact", "retention.ms": " 10"})
    assert compare(topic, same) == ()


def test_unreadable_settings_make_a_topic_differ() -> None:
    topic = DesiredTopic.build("t", 1, 1, EVENTS)
    problems = compare(topic, reported(topic, config={},
                                       config_error="TOPIC_AUTHORIZATION_FAILED (code 29)"))
    assert problems == ("settings not readable (TOPIC_AUTHORIZATION_FAILED (code 29))",)


def test_a_topic_declared_twice_is_refused() -> None:
    topic = DesiredTopic.build("t", 1, 1, {})
    with pytest.raises(ValueError, match="declared twice"):
        plan([topic, topic], {})


def test_states_follow_the_declared_order() -> None:
    a, b, c, d = (DesiredTopic.build(name, 2, 1, EVENTS) for name in "abcd")
    result = plan([a, b, c, d], {"b": reported(b), "d": reported(d, partitions=1)})
    assert result.states(created=["a"], failed={"c": "not created: policy"}) == [
        ("a", TopicState.CREATED, "2 partitions, replication 1"),
        ("b", TopicState.OK, ""),
        ("c", TopicState.MISSING, "not created: policy"),
        ("d", TopicState.DIFFERS, "partitions 1, expected 2"),
    ]
    assert [state for _, state, _ in result.states()] == [
        TopicState.MISSING, TopicState.OK, TopicState.MISSING, TopicState.DIFFERS]


names = st.lists(st.text("abcdefgh.-", min_size=1, max_size=8), unique=True, max_size=8)


@given(names, st.data())
def test_reported_as_declared_is_ok_and_absent_is_created(
        topic_names: list[str], data: st.DataObject) -> None:
    desired = [DesiredTopic.build(name, data.draw(st.integers(1, 12)),
                                  data.draw(st.integers(1, 4)), EVENTS)
               for name in topic_names]
    present = data.draw(st.sets(st.sampled_from(topic_names))) if topic_names else set()
    result = plan(desired, {t.name: reported(t) for t in desired if t.name in present})
    assert set(result.ok) == present
    assert set(result.missing) == set(topic_names) - present
    assert result.differs == ()


def test_every_topology_topic_gets_the_replication_setting() -> None:
    settings = load_settings({"STORESTREAM_CONFIG": INI, "TOPIC_REPLICATION": "3",
                              "TOPIC_PREFIX": "x.", "TOPIC_PARTITIONS": "6"})
    topics = desired_topics(settings)
    assert len(topics) == 21  # 14 (returns: issue 22; redemptions, held out, presence,
    # associates: issue 21), and a repartition topic per input topic
    assert {t.name for t in topics} >= {"x.purchases", "x.dead-letters", "x.products"}
    for topic in topics:
        assert topic.partitions == 6 and topic.replication == 3
        assert topic.config["min.insync.replicas"] == "2"
        assert "cleanup.policy" in topic.config and "retention.ms" in topic.config
    single = desired_topics(load_settings({"STORESTREAM_CONFIG": INI}))
    assert len(single) == 21
    assert all(t.replication == 1 and "min.insync.replicas" not in t.config for t in single)


def test_topic_settings_come_from_the_ini_and_the_environment() -> None:
    defaults = load_settings({"STORESTREAM_CONFIG": INI})
    assert defaults.topic_replication == 1 and defaults.topic_create
    changed = load_settings({"STORESTREAM_CONFIG": INI, "TOPIC_REPLICATION": "3",
                             "TOPIC_CREATE": "off"})
    assert changed.topic_replication == 3 and not changed.topic_create
    with pytest.raises(ConfigError, match="TOPIC_REPLICATION"):
        load_settings({"STORESTREAM_CONFIG": INI, "TOPIC_REPLICATION": "0"})
    with pytest.raises(ConfigError):
        load_settings({"STORESTREAM_CONFIG": INI, "TOPIC_CREATE": "maybe"})


@pytest.mark.parametrize(("argv", "command"), [
    (["faust", "-A", "app", "worker", "-l", "info"], "worker"),
    (["/x/faust/__main__.py", "--app=app", "--datadir", "/tmp/d", "worker"], "worker"),
    (["faust", "-A", "app", "topics"], "topics"),
    (["faust", "-A", "worker", "devstack"], "devstack"),
    (["faust", "-A", "app", "--debug", "-L", "eventlet", "simulate", "worker"], "simulate"),
    (["faust", "--help"], None),
])
def test_the_start_up_check_knows_which_command_runs(argv: list[str],
                                                     command: str | None) -> None:
    assert invoked_command(argv) == command


def test_unequal_partition_counts_of_input_topics_are_named() -> None:
    from core.topic_plan import unequal_partitions

    inputs = ["products", "purchases", "customers.locations"]
    assert unequal_partitions({"products": 4, "purchases": 4, "customers.locations": 4},
                              inputs) is None
    assert unequal_partitions({"purchases": 4, "dead-letters": 1}, inputs) is None
    message = unequal_partitions({"products": 4, "purchases": 4, "customers.locations": 6,
                                  "dead-letters": 1}, inputs)
    assert message is not None and "\n" not in message
    assert "4 partitions: products, purchases; 6 partitions: customers.locations" in message
