"""What to do about the topics a deployment needs, given what the broker reports.

Pure functions, no I/O and no faust: ``app/broker/topic_admin.py`` asks the broker (describe the
topics and their configs), :func:`plan` decides which topics to create, which are as they
should be and which differ and how, and the caller acts on that (``faust -A app topics``, and
a worker at start).

Rules:

* A topic is created with its partition count, its replication factor and its explicit
  settings (:attr:`DesiredTopic.config`).
* With a replication factor above 1 it also gets ``min.insync.replicas`` =
  ``replication - 1``, at most 2 (:func:`min_insync_replicas`): replication 2 -> 1 (a write
  survives one broker down), 3 -> 2 (the usual production setting: every acknowledged write is
  on two brokers, and one broker may be down), 4 or more -> 2. With replication 1 the broker's
  own default is left alone.
* An existing topic *differs* when its partition count, its replication factor (the smallest
  replica count of its partitions) or any of our explicit settings is not what we would create.
  Settings the broker reports that we do not set are not compared. Nothing is changed on an
  existing topic: a partition count cannot change without moving keys to other partitions,
  so an operator decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

#: Settings whose value is a comma-separated set (order does not matter).
SET_VALUED = frozenset({"cleanup.policy"})


def min_insync_replicas(replication: int) -> int | None:
    """``min.insync.replicas`` for a replication factor: ``replication - 1``, at most 2;
    ``None`` (the broker's default) for replication 1."""
    if replication < 1:
        raise ValueError(f"replication factor must be >= 1, got {replication}")
    if replication == 1:
        return None
    return min(2, replication - 1)


@dataclass(frozen=True, slots=True)
class DesiredTopic:
    """A topic as we would create it."""

    name: str
    partitions: int
    replication: int = 1
    config: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, name: str, partitions: int, replication: int,
              config: Mapping[str, object]) -> DesiredTopic:
        """A desired topic with ``min.insync.replicas`` added for ``replication`` > 1."""
        if partitions < 1:
            raise ValueError(f"topic {name!r}: partitions must be >= 1, got {partitions}")
        settings = {key: str(value) for key, value in config.items()}
        insync = min_insync_replicas(replication)
        if insync is not None:
            settings["min.insync.replicas"] = str(insync)
        return cls(name, partitions, replication, settings)


@dataclass(frozen=True, slots=True)
class ReportedTopic:
    """An existing topic as the broker described it.

    ``config`` holds what the broker reported (all settings on Apache Kafka, only explicit
    ones on the embedded broker); ``config_error`` says why the settings could not be read.
    """

    name: str
    partitions: int
    replication: int
    config: Mapping[str, str] = field(default_factory=dict)
    config_error: str | None = None


class TopicState(StrEnum):
    """Where a topic stands after the plan was carried out."""

    CREATED = "created"
    OK = "ok"
    DIFFERS = "differs"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class TopicDifference:
    """An existing topic that is not what we would create, and how."""

    name: str
    problems: tuple[str, ...]

    def describe(self) -> str:
        """``purchases: partitions 2, expected 4; cleanup.policy delete, expected compact``."""
        return f"{self.name}: {'; '.join(self.problems)}"


@dataclass(frozen=True, slots=True)
class TopicPlan:
    """What to do: topics to create, topics that are fine, topics that differ."""

    create: tuple[DesiredTopic, ...]
    ok: tuple[str, ...]
    differs: tuple[TopicDifference, ...]
    #: Every desired topic, in the order given (reports list topics in this order).
    desired: tuple[DesiredTopic, ...] = ()

    @property
    def missing(self) -> tuple[str, ...]:
        """Names of the topics to create."""
        return tuple(topic.name for topic in self.create)

    def states(self, created: Iterable[str] = (),
               failed: Mapping[str, str] | None = None) -> list[tuple[str, TopicState, str]]:
        """One ``(name, state, detail)`` per desired topic, in order, once the missing
        topics named in ``created`` were created and those in ``failed`` (name -> why) could
        not be; other missing topics stay ``missing``."""
        made = set(created)
        refused = dict(failed or {})
        missing = set(self.missing)
        differs = {d.name: "; ".join(d.problems) for d in self.differs}
        rows: list[tuple[str, TopicState, str]] = []
        for topic in self.desired:
            name = topic.name
            if name in made:
                rows.append((name, TopicState.CREATED, _shape(topic)))
            elif name in refused:
                rows.append((name, TopicState.MISSING, refused[name]))
            elif name in differs:
                rows.append((name, TopicState.DIFFERS, differs[name]))
            elif name in missing:
                rows.append((name, TopicState.MISSING, _shape(topic)))
            else:
                rows.append((name, TopicState.OK, ""))
        return rows


def _shape(topic: DesiredTopic) -> str:
    return f"{topic.partitions} partitions, replication {topic.replication}"


def _normalise(key: str, value: str) -> str:
    text = value.strip()
    if key in SET_VALUED:
        return ",".join(sorted(part.strip() for part in text.split(",") if part.strip()))
    return text


def compare(desired: DesiredTopic, reported: ReportedTopic) -> tuple[str, ...]:
    """How ``reported`` differs from ``desired`` (empty: it does not)."""
    problems: list[str] = []
    if reported.partitions != desired.partitions:
        problems.append(f"partitions {reported.partitions}, expected {desired.partitions}")
    if reported.replication != desired.replication:
        problems.append(f"replication {reported.replication}, expected {desired.replication}")
    if reported.config_error is not None:
        problems.append(f"settings not readable ({reported.config_error})")
        return tuple(problems)
    for key, want in desired.config.items():
        have = reported.config.get(key)
        if have is None:
            problems.append(f"{key} not set, expected {want}")
        elif _normalise(key, have) != _normalise(key, want):
            problems.append(f"{key} {have}, expected {want}")
    return tuple(problems)


def plan(desired: Iterable[DesiredTopic], reported: Mapping[str, ReportedTopic]) -> TopicPlan:
    """Compare every desired topic with the broker's report (absent: the topic is missing)."""
    create: list[DesiredTopic] = []
    ok: list[str] = []
    differs: list[TopicDifference] = []
    topics = tuple(desired)
    seen: set[str] = set()
    for topic in topics:
        if topic.name in seen:
            raise ValueError(f"topic {topic.name!r} is declared twice")
        seen.add(topic.name)
        found = reported.get(topic.name)
        if found is None:
            create.append(topic)
            continue
        problems = compare(topic, found)
        if problems:
            differs.append(TopicDifference(topic.name, problems))
        else:
            ok.append(topic.name)
    return TopicPlan(tuple(create), tuple(ok), tuple(differs), topics)


def unequal_partitions(counts: Mapping[str, int], topics: Iterable[str]) -> str | None:
    """Why ``topics`` (those of them in ``counts``) cannot be read together, or ``None``.

    A customer's events must share one partition *number* on every input topic (the key is
    hashed modulo the partition count), and Faust gives a worker the same partitions of every
    topic: with unequal counts a customer's positions meet another partition's state.
    """
    present = [(name, counts[name]) for name in topics if name in counts]
    groups: dict[int, list[str]] = {}
    for name, count in present:
        groups.setdefault(count, []).append(name)
    if len(groups) <= 1:
        return None
    listed = "; ".join(f"{count} partitions: {', '.join(names)}"
                       for count, names in sorted(groups.items()))
    return (f"storestream: the input topics must all have the same partition count (a key "
            f"is hashed modulo the count, so a customer's events and state share one "
            f"partition number on every topic), found {listed}. Give them one count "
            f"(TOPIC_PARTITIONS; recreate or add partitions) and start the worker again")
