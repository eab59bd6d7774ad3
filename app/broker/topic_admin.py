"""Ask the broker about our topics and create the missing ones (aiokafka's admin client).

The decisions are :mod:`core.topic_plan`'s; this module only does the I/O: list the
cluster's topics (one Metadata request for *all* topics: asking for named topics would make a
broker with ``auto.create.topics.enable`` create them with its defaults, and the embedded
broker always does), describe their settings, create what is missing, and report one state
per topic (created / ok / differs / missing). ``auth`` is aiokafka's security settings as
:func:`app.runtime.replica.replica_connection` returns them, so SASL_SSL clusters work as for the
worker itself. No faust import here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from core.topic_plan import DesiredTopic, ReportedTopic, TopicPlan, TopicState, plan

#: Default bound (s) for the whole check: connect, describe, create.
ADMIN_TIMEOUT_S = 30.0
#: Kafka error codes this module acts on.
UNKNOWN_TOPIC_OR_PARTITION = 3
LEADER_NOT_AVAILABLE = 5
TOPIC_ALREADY_EXISTS = 36

_T = TypeVar("_T")


class TopicAdminError(RuntimeError):
    """The broker could not be asked (unreachable, refused the request, timed out)."""


@dataclass(frozen=True, slots=True)
class TopicReport:
    """Where every topic stands: the (latest) plan, what was created, what was refused."""

    plan: TopicPlan
    created: tuple[str, ...] = ()
    #: Topic name -> why the broker refused to create it.
    failures: Mapping[str, str] = field(default_factory=dict)
    #: Topic name -> partition count, of every desired topic that exists (or was created).
    partitions: Mapping[str, int] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, TopicState, str]]:
        """``(name, state, detail)`` per topic, in the order of ``app/broker/topology.py``."""
        return self.plan.states(self.created, self.failures)

    @property
    def missing(self) -> tuple[str, ...]:
        """Topics that do not exist (not created: not asked to, or refused)."""
        return tuple(name for name, state, _ in self.rows() if state is TopicState.MISSING)

    @property
    def differs(self) -> tuple[str, ...]:
        """``name: problem; problem`` for every existing topic not as we would create it."""
        return tuple(f"{name}: {detail}" for name, state, detail in self.rows()
                     if state is TopicState.DIFFERS)

    @property
    def ok(self) -> bool:
        """Every topic exists as we would create it."""
        return not self.missing and not self.differs


def admin_client(bootstrap: str, auth: Mapping[str, Any], timeout_s: float) -> AIOKafkaAdminClient:
    """An admin client for ``bootstrap`` (``host:port[,host:port]``) with ``auth``."""
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="storestream-topics",
        request_timeout_ms=max(1000, int(timeout_s * 1000)),
        **auth,
    )


async def describe(admin: AIOKafkaAdminClient,
                   desired: Sequence[DesiredTopic]) -> dict[str, ReportedTopic]:
    """The desired topics that exist, as the broker describes them (absent: missing)."""
    wanted = {topic.name: topic for topic in desired}
    found: dict[str, ReportedTopic] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for entry in await admin.describe_topics(None):  # every topic: never auto-creates
        name = entry["topic"]
        if name not in wanted:
            continue
        code = entry["error_code"]
        if code == UNKNOWN_TOPIC_OR_PARTITION:
            continue
        if code not in (0, LEADER_NOT_AVAILABLE):
            raise TopicAdminError(f"cannot describe topic {name}: Kafka error code {code}")
        partitions = entry["partitions"] or []
        replicas = min((len(p["replicas"]) for p in partitions), default=0)
        shapes[name] = (len(partitions), replicas)
    if not shapes:
        return found
    configs, errors = await _describe_configs(admin, {name: wanted[name] for name in shapes})
    for name, (partitions, replicas) in shapes.items():
        found[name] = ReportedTopic(name, partitions, replicas, configs.get(name, {}),
                                    errors.get(name))
    return found


async def _describe_configs(
    admin: AIOKafkaAdminClient, topics: Mapping[str, DesiredTopic]
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Each topic's reported settings, and why they could not be read for some."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in topics]
    configs: dict[str, dict[str, str]] = {}
    errors: dict[str, str] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            name = resource["resource_name"]
            if resource["error_code"]:
                errors[name] = (f"{resource.get('error_message') or 'error'} "
                                f"(code {resource['error_code']})")
                continue
            configs[name] = {entry["config_names"]: entry["config_value"]
                             for entry in resource["config_entries"]
                             if entry["config_value"] is not None}
    return configs, errors


async def create(admin: AIOKafkaAdminClient, topics: Sequence[DesiredTopic],
                 timeout_s: float) -> tuple[list[str], list[str], dict[str, str]]:
    """Create ``topics``: (created, already existing, name -> why the broker refused)."""
    if not topics:
        return [], [], {}
    response = await admin.create_topics(
        [NewTopic(t.name, t.partitions, t.replication, topic_configs=dict(t.config))
         for t in topics],
        timeout_ms=max(1000, int(timeout_s * 1000)),
    )
    created: list[str] = []
    existing: list[str] = []
    failures: dict[str, str] = {}
    for name, code, *rest in response.topic_errors:
        if code == 0:
            created.append(name)
        elif code == TOPIC_ALREADY_EXISTS:  # another worker was quicker: verify it instead
            existing.append(name)
        else:
            message = rest[0] if rest and rest[0] else "no message"
            failures[name] = f"not created: {message} (Kafka error code {code})"
    return created, existing, failures


async def reconcile(bootstrap: str, auth: Mapping[str, Any], desired: Sequence[DesiredTopic],
                    *, create_missing: bool = True,
                    timeout_s: float = ADMIN_TIMEOUT_S) -> TopicReport:
    """Describe the desired topics, create the missing ones (``create_missing``), and say
    where each stands. Raises :class:`TopicAdminError` when the broker cannot be asked."""
    admin = admin_client(bootstrap, auth, timeout_s)
    try:
        return await asyncio.wait_for(
            _reconcile(admin, desired, create_missing, timeout_s), timeout_s)
    except TimeoutError:
        raise TopicAdminError(
            f"no answer from the broker at {bootstrap} within {timeout_s:.0f} s") from None
    except KafkaError as exc:
        text = str(exc)  # aiokafka's errors already start with their class name
        if not text.startswith(type(exc).__name__):
            text = f"{type(exc).__name__}: {text}"
        raise TopicAdminError(f"broker at {bootstrap}: {text}") from exc
    finally:
        await admin.close()


async def _reconcile(admin: AIOKafkaAdminClient, desired: Sequence[DesiredTopic],
                     create_missing: bool, timeout_s: float) -> TopicReport:
    await admin.start()
    found = await describe(admin, desired)
    before = plan(desired, found)
    counts = {name: topic.partitions for name, topic in found.items()}
    if not create_missing or not before.create:
        return TopicReport(before, partitions=counts)
    created, existing, failures = await create(admin, before.create, timeout_s)
    if existing:  # created meanwhile by someone else: compare them like any existing topic
        before, counts = await _described(admin, desired, set(existing),
                                           min(EXISTING_WAIT_S, timeout_s / 2))
    counts.update((t.name, t.partitions) for t in desired if t.name in created)
    return TopicReport(before, tuple(created), failures, counts)


#: Longest wait (s) for topics the broker says exist to show in its metadata.
EXISTING_WAIT_S = 10.0


async def _described(admin: AIOKafkaAdminClient, desired: Sequence[DesiredTopic],
                     existing: set[str], wait_s: float) -> tuple[TopicPlan, dict[str, int]]:
    """(plan, partition counts) once the topics the broker called existing are described,
    asking again every 0.2 s for up to ``wait_s``.

    A topic created a moment earlier (by a harness or another worker) can be refused as
    existing by the controller while the broker answering the describe does not show it
    yet: the worker then exited with "could not create topic(s)" and no reason (measured
    in the latency bench on Kafka 4.4, which creates every topic before starting a worker:
    2 of 8 worker starts in one run).
    """
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        found = await describe(admin, desired)
        before = plan(desired, found)
        if (not existing & {t.name for t in before.create}
                or asyncio.get_running_loop().time() >= deadline):
            return before, {name: topic.partitions for name, topic in found.items()}
        await asyncio.sleep(0.2)


def run_blocking(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine on a loop of its own, in a helper thread (safe inside a running loop)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="topic-admin") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def format_rows(rows: Iterable[tuple[str, TopicState, str]]) -> list[str]:
    """One line per topic: ``name  state  detail``."""
    table = list(rows)
    width = max((len(name) for name, _, _ in table), default=0)
    return [f"{name:<{width}}  {state.value:<8}{'  ' + detail if detail else ''}".rstrip()
            for name, state, detail in table]
