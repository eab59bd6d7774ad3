"""Which private internals of Faust, mode and aiokafka storestream mirrors, and the releases
they were checked against.

Several modules subclass or patch private parts of faust-streaming, mode-streaming and aiokafka:
methods they override or call, attributes they read or set, method bodies they copy with a
change. A new release of any of the three may change these without notice, and the worker
would then misbehave rather than fail. :data:`MIRRORS` names, per module, every internal it
relies on (each module's docstring says the same and how it uses them); :data:`CHECKED`
names the releases they were checked against. :func:`problems` compares :data:`CHECKED` with
the installed releases (``importlib.metadata``) and :func:`missing` checks that an internal
still exists; ``tests/unit/test_internals_versions.py`` runs both, and
``python -m app.runtime.internals`` prints the comparison.

Upgrading faust-streaming, mode-streaming or aiokafka: for each module that names the package
below, read each internal it names in the new release against what the module expects, fix
what changed, update the names here and in the module's docstring, then add the release to
:data:`CHECKED`. No storestream import here (any module may import this one).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
import sys
from collections.abc import Mapping

#: Distribution -> the releases that every internal of it named in :data:`MIRRORS` was
#: checked against (the pins of ``pyproject.toml``).
CHECKED: dict[str, tuple[str, ...]] = {
    "faust-streaming": ("0.15.3",),
    "mode-streaming": ("0.7.1",),
    "aiokafka": ("0.14.0",),
}

#: Distribution -> the name its code is imported by.
IMPORT_NAMES: dict[str, str] = {
    "faust-streaming": "faust",
    "mode-streaming": "mode",
    "aiokafka": "aiokafka",
}

_FAUST_CONSUMER = "faust.transport.consumer"
_FAUST_AIOKAFKA = "faust.transport.drivers.aiokafka"
_FETCHER = "aiokafka.consumer.fetcher.Fetcher"
_CONSUMER = "aiokafka.consumer.consumer.AIOKafkaConsumer"
_SUBSCRIPTION = "aiokafka.consumer.subscription_state"

#: Module (path from the repository root) -> distribution -> the internals the module mirrors
#: (dotted: module, class, attribute). "Mirrors" covers overriding or calling a private method,
#: reading or setting a private attribute, and copying a method's body with a change (those
#: are named even when the method itself is public: ``Consumer.getmany``, ``Consumer.ack``).
MIRRORS: dict[str, dict[str, tuple[str, ...]]] = {
    "app/runtime/transport.py": {
        "faust-streaming": (
            f"{_FAUST_AIOKAFKA}.AIOKafkaConsumerThread._create_worker_consumer",
            f"{_FAUST_AIOKAFKA}.AIOKafkaConsumerThread._consumer",
            f"{_FAUST_CONSUMER}.ThreadDelegateConsumer._thread",
            f"{_FAUST_CONSUMER}.ThreadDelegateConsumer._new_consumer_thread",
            f"{_FAUST_CONSUMER}.Consumer.getmany",
            f"{_FAUST_CONSUMER}.Consumer._wait_next_records",
            f"{_FAUST_CONSUMER}.Consumer._buffered_partitions",
            f"{_FAUST_CONSUMER}.Consumer._read_offset",
            f"{_FAUST_CONSUMER}.Consumer._add_gap",
            f"{_FAUST_CONSUMER}.Consumer.ack",
            f"{_FAUST_CONSUMER}.Consumer.commit_and_end_transactions",
            f"{_FAUST_CONSUMER}.Consumer.on_partitions_revoked",
            f"{_FAUST_CONSUMER}.Consumer.on_partitions_assigned",
            f"{_FAUST_CONSUMER}.Consumer._unacked_messages",
            f"{_FAUST_CONSUMER}.Consumer._committed_offset",
            f"{_FAUST_CONSUMER}.Consumer._acked_index",
            f"{_FAUST_CONSUMER}.Consumer._acked",
            f"{_FAUST_CONSUMER}.Consumer._n_acked",
            f"{_FAUST_AIOKAFKA}.Consumer._to_message",
            "faust.types.tuples.ack_lock",
            "faust.types.tuples.Message.acked",
            "faust.transport.producer.ProducerBuffer._send_pending",
            f"{_FAUST_AIOKAFKA}.Producer._producer",
            f"{_FAUST_AIOKAFKA}.Producer._ensure_producer",
            f"{_FAUST_AIOKAFKA}.Producer._settings_extra",
            f"{_FAUST_AIOKAFKA}.Transport._really_create_topic",
            f"{_FAUST_AIOKAFKA}.Transport._get_controller_node",
        ),
        "mode-streaming": (
            "mode.threads.ServiceThread.start",
            "mode.threads.ServiceThread.stop",
            "mode.threads.ServiceThread._thread_started",
            "mode.threads.QueueServiceThread.call_thread",
            "mode.threads.QueueServiceThread.cast_thread",
            "mode.services.Service._default_start",
            "mode.services.Service._default_stop_children",
            "mode.services.Service._default_stop_futures",
            "mode.services.Service._default_stop_exit_stacks",
            "mode.services.Service._started",
            "mode.services.Service._stopped",
            "mode.services.Service._shutdown",
        ),
        "aiokafka": (
            f"{_CONSUMER}._fetch_max_wait_ms",
            f"{_CONSUMER}._fetcher",
            f"{_CONSUMER}._subscription",
            f"{_SUBSCRIPTION}.SubscriptionState.subscription",
            f"{_SUBSCRIPTION}.TopicPartitionState.has_valid_position",
            f"{_SUBSCRIPTION}.TopicPartitionState.position",
            f"{_FETCHER}._records",
        ),
    },
    "app/runtime/fetch_actions.py": {
        "aiokafka": (
            f"{_FETCHER}._fetch_requests_routine",
            f"{_FETCHER}._get_actions_per_node",
            f"{_FETCHER}._records",
            f"{_FETCHER}._select_read_replica",
            "aiokafka.consumer.fetcher.FetchResult._created",
            f"{_SUBSCRIPTION}.Assignment.tps",
            f"{_SUBSCRIPTION}.Assignment.state_value",
            f"{_SUBSCRIPTION}.TopicPartitionState.paused",
            f"{_SUBSCRIPTION}.TopicPartitionState.has_valid_position",
            f"{_SUBSCRIPTION}.TopicPartitionState.resume_fut",
            f"{_SUBSCRIPTION}.Assignment._tp_state",
            f"{_SUBSCRIPTION}.TopicPartitionState._paused",
            f"{_SUBSCRIPTION}.TopicPartitionState._position",
            f"{_SUBSCRIPTION}.TopicPartitionState._resume_fut",
            "aiokafka.protocol.fetch.FetchRequest.topics",
        ),
    },
    "app/runtime/membership.py": {
        "aiokafka": (
            f"{_CONSUMER}._coordinator",
            "aiokafka.consumer.group_coordinator.GroupCoordinator._do_heartbeat",
        ),
    },
    "app/runtime/fastlane.py": {
        "faust-streaming": (
            "faust.streams._current_event",
        ),
    },
    "app/runtime/bulk.py": {
        "aiokafka": (
            "aiokafka.producer.producer.AIOKafkaProducer._partition",
            "aiokafka.client.AIOKafkaClient._wait_on_metadata",
            "aiokafka.producer.producer.AIOKafkaProducer._message_accumulator",
            "aiokafka.producer.message_accumulator.MessageAccumulator._batches",
            "aiokafka.producer.message_accumulator.MessageBatch.append",
        ),
    },
    "app/runtime/stable_offsets.py": {
        "aiokafka": (
            "aiokafka.consumer.group_coordinator.GroupCoordinator._do_fetch_commit_offsets",
            "aiokafka.consumer.group_coordinator.GroupCoordinator._client",
            "aiokafka.consumer.group_coordinator.GroupCoordinator._send_req",
            "aiokafka.consumer.group_coordinator.GroupCoordinator.coordinator_dead",
            f"{_CONSUMER}._client",
        ),
    },
    "app/runtime/guarantees.py": {
        "faust-streaming": (
            f"{_FAUST_CONSUMER}.TransactionManager.send",
            f"{_FAUST_CONSUMER}.TransactionManager.on_rebalance",
            f"{_FAUST_CONSUMER}.TransactionManager.commit",
            f"{_FAUST_CONSUMER}.TransactionManager._tps_to_transactional_ids",
            f"{_FAUST_CONSUMER}.TransactionManager.transactional_id_format",
            f"{_FAUST_CONSUMER}.Consumer._commit_offsets",
            f"{_FAUST_AIOKAFKA}.Producer._transaction_producers",
            f"{_FAUST_AIOKAFKA}.Producer._trn_locks",
            "faust.tables.manager.TableManager._pending_persisted_offsets",
        ),
    },
    "app/runtime/recovery.py": {
        "faust-streaming": (
            "faust.tables.recovery.Recovery._build_highwaters",
            "faust.tables.recovery.Recovery._seek_offsets",
            "faust.tables.recovery.Recovery.on_recovery_completed",
            "faust.tables.recovery.Recovery._wait",
            "faust.tables.recovery.Recovery._set_recovery_ended",
            "faust.tables.recovery.Recovery._is_changelog_tp",
            "faust.tables.recovery.Recovery.actives_for_table",
            "faust.tables.recovery.Recovery.standbys_for_table",
            "faust.tables.manager.TableManager._recovery",
            "faust.app.base.App._fetcher",
            "faust.tables.recovery.Recovery.tp_to_table",
            "faust.tables.recovery.Recovery.active_highwaters",
            "faust.tables.recovery.Recovery.signal_recovery_start",
            "faust.tables.recovery.Recovery._active_events_received_at",
            "faust.tables.base.Collection._on_changelog_event",
            "faust.stores.memory.Store.apply_changelog_batch",
            "faust.stores.rocksdb.Store.apply_changelog_batch",
        ),
    },
    "app/runtime/replica.py": {
        "aiokafka": (
            f"{_CONSUMER}._client",
        ),
    },
    "tables/batch.py": {
        "faust-streaming": (
            "faust.tables.table.Table.on_key_set",
            "faust.tables.base.Collection._send_changelog",
            "faust.stores.memory.Store.data",
        ),
    },
    "tables/base.py": {
        "faust-streaming": (
            "faust.tables.base.Collection._new_changelog_topic",
        ),
    },
    "app/routing/repartition.py": {
        "faust-streaming": (
            f"{_FAUST_CONSUMER}.ThreadDelegateConsumer._thread",
            f"{_FAUST_AIOKAFKA}.AIOKafkaConsumerThread._ensure_consumer",
        ),
        "aiokafka": (
            f"{_CONSUMER}._client",
        ),
    },
    "app/web/live.py": {
        "aiokafka": (
            f"{_CONSUMER}._client",
        ),
    },
    "bench/broker_workarounds.py": {
        "aiokafka": (
            f"{_CONSUMER}._client",
        ),
    },
    "bench/latency.py": {
        "aiokafka": (
            f"{_CONSUMER}._client",
        ),
    },
    "bench/plain_peer.py": {
        "aiokafka": (
            f"{_CONSUMER}._client",
        ),
    },
    "bench/reliability.py": {
        "aiokafka": (
            f"{_CONSUMER}._client",
        ),
    },
}


class UncheckedInternals(RuntimeError):
    """An installed release of faust-streaming, mode-streaming or aiokafka was not checked
    against the internals storestream mirrors."""


def installed_versions() -> dict[str, str | None]:
    """Distribution -> its installed release (``None``: not installed)."""
    versions: dict[str, str | None] = {}
    for distribution in CHECKED:
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[distribution] = None
    return versions


def unchecked_message(module: str, distribution: str, names: tuple[str, ...],
                      installed: str | None) -> str:
    """What to do about ``module``'s internals of ``distribution`` at release ``installed``."""
    checked = ", ".join(CHECKED[distribution])
    return (
        f"{module} mirrors {distribution} internals checked against {checked}; installed "
        f"{installed or 'none'}: re-check {', '.join(names)} in {distribution} "
        f"{installed or '(not installed)'} against what {module} expects (its docstring), "
        f"then add the version to CHECKED[{distribution!r}] in app/runtime/internals.py"
    )


def problems(installed: Mapping[str, str | None] | None = None) -> list[str]:
    """One message per (module, distribution) whose installed release was not checked.

    ``installed`` maps distributions to releases (default: :func:`installed_versions`).
    """
    versions = installed_versions() if installed is None else installed
    found: list[str] = []
    for module, used in MIRRORS.items():
        for distribution, names in used.items():
            release = versions.get(distribution)
            if release not in CHECKED[distribution]:
                found.append(unchecked_message(module, distribution, names, release))
    return found


def check(installed: Mapping[str, str | None] | None = None) -> None:
    """Raise :class:`UncheckedInternals` listing every :func:`problems` message, if any."""
    found = problems(installed)
    if found:
        raise UncheckedInternals("\n".join(found))


def missing(name: str) -> str | None:
    """Why the internal ``name`` (dotted: module, class, attribute) does not exist in the
    installed release, or ``None`` when it does.

    A class attribute, method or property is looked up with ``getattr``; an attribute that
    instances get in their constructor (``self._consumer = ...``) is looked for as an
    assignment to ``self.<name>`` in the source of the class or one of its bases.
    """
    parts = name.split(".")
    found: object = None
    start = 0
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        start = cut
        break
    if not start:
        return f"{name}: module {parts[0]} cannot be imported"
    for index in range(start, len(parts)):
        attribute = parts[index]
        if hasattr(found, attribute):
            found = getattr(found, attribute)
        elif (index == len(parts) - 1 and isinstance(found, type)
              and _assigned_on_instances(found, attribute)):
            return None
        else:
            return f"{name}: {'.'.join(parts[:index])} has no {attribute}"
    return None


def _assigned_on_instances(cls: type, attribute: str) -> bool:
    """Whether the source of ``cls`` or a base assigns ``self.<attribute>``."""
    pattern = re.compile(rf"\bself\.{re.escape(attribute)}\s*(?::[^=\n]+)?=(?!=)")
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if pattern.search(source):
            return True
    return False


def main() -> int:
    """Print installed against checked releases and what to re-check; 1 if anything."""
    versions = installed_versions()
    for distribution, releases in CHECKED.items():
        print(f"{distribution}: installed {versions[distribution] or 'none'}, checked "
              f"{', '.join(releases)}")
    found = problems(versions)
    for message in found:
        print(message)
    gone = sorted({reason for used in MIRRORS.values() for names in used.values()
                   for name in names if (reason := missing(name)) is not None})
    for reason in gone:
        print(f"missing: {reason}")
    return 1 if found or gone else 0


if __name__ == "__main__":
    sys.exit(main())
