"""The throughput window, measured by the harness from outside every peer alike, and checked.

The harness watches what it can see identically for every peer, on the broker:

* **start**: the first poll (every :data:`POLL_S`) that finds the peer's consumer group
  ``Stable`` with members, i.e. partitions assigned, the moment the peer can fetch its first
  record (its post-assignment work, e.g. restoring its empty changelogs, is in the window);
* **end**: the later of the first poll that finds the group's committed offsets at the end of
  every input partition, and the moment every state change is in the peer's changelog: at
  that poll the harness snapshots the changelogs' end offsets, reads them from the beginning
  to the snapshot and folds them into per-customer totals; if they are not yet the expected
  totals it snapshots again and reads on until they are (the end is then that snapshot).

The totals come from :mod:`bench.workload`'s purchases by an oracle that imports no peer:
:func:`expected_static` (catalogue list prices, what the peers compute) or
:func:`expected_as_of` (storestream's as-of pricing). A peer whose changelog never reaches
them gets no figure (status ``error``). CPU is the peer process's ``/proc`` time sampled at
every poll (the last sample at or before each edge), peak RSS its VmHWM.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bench.catalogue import STAMP_PRODUCT, price_as_of, price_of
from bench.deploy import BenchError, Proc
from bench.workload import Workload, log

POLL_S = 0.05
#: After the commits are complete, how long the changelogs may take to hold every change.
CHANGELOG_GRACE_S = 60.0

Totals = dict[str, tuple[int, int]]  # customer -> (spend in cents, coffee count)
State = dict[str, list[int]]  # customer -> [spend in cents, coffee count], as read back
#: Applies one changelog record ``(topic, key, value)`` to the state read back so far.
Decoder = Callable[[str, bytes, bytes | None, State], None]


def _cents(price: float) -> int:
    return round(price * 100)


def expected_static(workload: Workload) -> Totals:
    """Per customer: spend at catalogue list prices (or the purchase's own price), coffees."""
    return _expected(workload, lambda product, _ts: price_of(product))


def expected_as_of(workload: Workload) -> Totals:
    """As :func:`expected_static`, a catalogue-priced purchase at the price as of its time."""
    return _expected(workload, price_as_of)


def _expected(workload: Workload, catalogue: Callable[[str, float], float]) -> Totals:
    totals: dict[str, list[int]] = {}
    for key, raw in workload.purchases:
        event = orjson.loads(raw)
        entry = totals.setdefault(key.decode(), [0, 0])
        price = event.get("price")
        entry[0] += _cents(price) if price is not None else _cents(
            catalogue(event["product_id"], float(event["ts"])))
        entry[1] += event["product_id"] == STAMP_PRODUCT
    return {user: (cents, coffee) for user, (cents, coffee) in totals.items()}


def _text(key: bytes) -> str:
    """A customer id from a changelog key (raw or JSON-quoted)."""
    return key.decode().strip('"')


def _set(state: State, user: str, slot: int, value: int | None) -> None:
    entry = state.setdefault(user, [0, 0])
    entry[slot] = 0 if value is None else value


def decode_pair(_topic: str, key: bytes, value: bytes | None, state: State) -> None:
    """``key`` -> JSON ``[spend, coffee]`` (the plain loop's changelog)."""
    if value is None:
        state.pop(_text(key), None)
        return
    spend, coffee = orjson.loads(value)
    state[_text(key)] = [_cents(spend), int(coffee)]


def decode_quix(_topic: str, key: bytes, value: bytes | None, state: State) -> None:
    """Quix's changelog: ``{message key}|{state key}`` -> JSON ``[spend, coffee]``."""
    decode_pair(_topic, key.split(b"|", 1)[0], value, state)


def decode_two_tables(number: Callable[[bytes], float]) -> Decoder:
    """Two changelogs, ``...spend-changelog`` and ``...coffee-changelog``, values parsed by
    ``number`` (spend in currency units when a float, cents when an int)."""
    def decode(topic: str, key: bytes, value: bytes | None, state: State) -> None:
        slot = 1 if topic.endswith("coffee-changelog") else 0
        if value is None:
            _set(state, _text(key), slot, None)
            return
        n = number(value)
        _set(state, _text(key), slot, _cents(n) if isinstance(n, float) else int(n))
    return decode


def json_number(value: bytes) -> float:
    """A JSON number as Faust's JSON serializer writes it (float spend, int coffee)."""
    n = orjson.loads(value)
    return float(n) if isinstance(n, float) else int(n)


def long_be(value: bytes) -> float:
    """Kafka's ``LongSerializer``: 8 bytes big-endian, returned as an int."""
    return int(struct.unpack(">q", value)[0])


def decode_storestream(topic: str, key: bytes, value: bytes | None, state: State) -> None:
    """storestream's ``spend`` (settled cents plus pending purchases, priced here as of their
    time) and ``stamps`` (``total``) changelogs."""
    slot = 1 if topic.endswith("stamps-changelog") else 0
    if value is None:
        _set(state, _text(key), slot, None)
        return
    raw = orjson.loads(value)
    if slot:
        _set(state, _text(key), 1, int(raw["total"]))
        return
    pending = sum(_cents(price_as_of(product, float(ts))) for ts, product in raw["pending"])
    _set(state, _text(key), 0, int(raw["settled_cents"]) + pending)


@dataclass
class Target:
    """What the harness watches for one peer run."""

    group: str
    inputs: Sequence[str]
    #: Picks the peer's changelog topics out of the broker's topic names.
    changelogs: Callable[[Sequence[str]], list[str]]
    decode: Decoder
    expected: Totals
    changelog_count: int = 1
    #: Per input partition, the offset after its last record (known to whoever produced
    #: them); read from the topics when empty.
    input_ends: dict[TopicPartition, int] = field(default_factory=dict)
    #: Members of the group from an earlier process (not this run's start).
    stale_members: frozenset[str] = frozenset()


@dataclass
class Outcome:
    """The outside window of one run."""

    start: float = 0.0
    commits_done: float = 0.0
    end: float = 0.0
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    peak_rss_mb: float = 0.0
    changelog_records: int = 0
    changelog_lag_s: float = 0.0
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """The window's length."""
        return self.end - self.start


def compare(got: Totals, expected: Totals) -> str | None:
    """``None`` when equal, else what differs (counts and a few customers)."""
    if got == expected:
        return None
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(u for u in set(got) & set(expected) if got[u] != expected[u])
    return (f"{len(missing)} customers missing {missing[:3]}, {len(extra)} unexpected "
            f"{extra[:3]}, {len(wrong)} wrong "
            + ", ".join(f"{u}: {got[u]} != {expected[u]} (cents, coffee)" for u in wrong[:3]))


def _totals(state: State) -> Totals:
    return {user: (v[0], v[1]) for user, v in state.items() if v != [0, 0]}


class _Sampler:
    """The peer process's CPU seconds and peak RSS, sampled at every poll."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.cpu = 0.0
        self.peak_mb = 0.0

    def sample(self) -> float:
        cpu = self.proc.cpu_seconds()
        if cpu > 0:
            self.cpu = cpu
            self.peak_mb = max(self.peak_mb, self.proc.memory_mb()[1])
        return self.cpu


async def _partitions(consumer: AIOKafkaConsumer, topics: Sequence[str],
                      timeout_s: float = 30.0) -> list[TopicPartition]:
    """Every partition of ``topics`` (waiting for them in the metadata)."""
    deadline = time.monotonic() + timeout_s
    parts: list[TopicPartition] = []
    for topic in topics:
        found = consumer.partitions_for_topic(topic)
        while not found:
            if time.monotonic() > deadline:
                raise BenchError(f"topic {topic} not in the broker's metadata")
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
            found = consumer.partitions_for_topic(topic)
        parts += [TopicPartition(topic, p) for p in sorted(found)]
    return parts


async def _end_offsets(bootstrap: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = await _partitions(consumer, topics)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(parts)
        return ends
    finally:
        await consumer.stop()


async def _input_ends(bootstrap: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
    """Per input partition, the offset after its last record, as a consumer's committed
    position is once it has read everything (read from the records: Tansu's end offsets can
    lie one past that)."""
    ends = await _end_offsets(bootstrap, topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        todo = [tp for tp, end in ends.items() if end > 0]
        consumer.assign(todo)
        for tp in todo:
            consumer.seek(tp, max(0, ends[tp] - 20))
        last: dict[TopicPartition, int] = {tp: 0 for tp in ends}
        deadline = time.monotonic() + 30
        while todo and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(*todo, timeout_ms=500)).items():
                last[tp] = max(last[tp], *(r.offset + 1 for r in records))
            todo = [tp for tp in todo if await consumer.position(tp) < ends[tp]
                    and last[tp] < ends[tp]]
        return last
    finally:
        await consumer.stop()


async def _committed(consumer: AIOKafkaConsumer,
                     parts: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """The group's committed offset of each partition (0 when none, or unanswered)."""
    out: dict[TopicPartition, int] = {}
    for tp in parts:
        try:
            out[tp] = await consumer.committed(tp) or 0
        except KafkaError as exc:
            log(f"committed offset of {tp}: {exc!r}")
    return out


async def _members(admin: AIOKafkaAdminClient, group: str) -> set[str] | None:
    """The member ids of ``group`` when it is Stable with members, else ``None``."""
    try:
        responses = await admin.describe_consumer_groups([group])
    except KafkaError:  # e.g. no coordinator yet on a fresh broker
        return None
    for response in responses:
        for described in response.groups:
            if described[2] == "Stable" and described[5]:
                return {str(member[0]) for member in described[5]}
    return None


async def _stable(admin: AIOKafkaAdminClient, group: str,
                  stale: frozenset[str] = frozenset()) -> bool:
    """``group`` is Stable with a member not in ``stale`` (an earlier process's members)."""
    members = await _members(admin, group)
    return members is not None and bool(members - stale)


async def _current_members(bootstrap: str, group: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await _members(admin, group) or set()
    finally:
        await admin.close()


def members(bootstrap: str, group: str) -> frozenset[str]:
    """The member ids of ``group`` now (empty unless it is Stable): an earlier process's,
    which a next run's start must not be taken from (a broker may list a member that left
    until its session expires: Tansu does)."""
    return frozenset(asyncio.run(_current_members(bootstrap, group)))


async def _count(bootstrap: str, topic: str) -> int:
    return sum((await _end_offsets(bootstrap, [topic])).values())


def topic_records(bootstrap: str, topic: str) -> int:
    """How many records ``topic`` holds (the sum of its partitions' end offsets)."""
    return asyncio.run(_count(bootstrap, topic))


class _Reader:
    """Reads the changelogs from the beginning, on and on, into the state."""

    def __init__(self, bootstrap: str, topics: list[str], decode: Decoder) -> None:
        self.bootstrap, self.topics, self.decode = bootstrap, topics, decode
        self.state: State = {}
        self.records = 0
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                         auto_offset_reset="earliest",
                                         max_partition_fetch_bytes=4 * 1024 * 1024)

    async def start(self) -> None:
        await self.consumer.start()
        parts = await _partitions(self.consumer, self.topics)
        self.consumer.assign(parts)
        await self.consumer.seek_to_beginning(*parts)

    async def snapshot(self) -> dict[TopicPartition, int]:
        ends: dict[TopicPartition, int] = await self.consumer.end_offsets(
            list(self.consumer.assignment()))
        return ends

    async def read_to(self, ends: dict[TopicPartition, int], deadline: float) -> None:
        """Read every partition up to ``ends``."""
        todo = {tp for tp, end in ends.items() if end > 0}
        while todo:
            todo = {tp for tp in todo if await self.consumer.position(tp) < ends[tp]}
            if not todo:
                return
            if time.monotonic() > deadline:
                raise BenchError("reading the changelogs back took too long")
            batch = await self.consumer.getmany(*todo, timeout_ms=500, max_records=50_000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp] and record.key is not None:
                        self.decode(tp.topic, record.key, record.value, self.state)
                        self.records += 1

    async def read_idle(self, deadline: float) -> None:
        """Read until a fetch brings nothing and every partition is at its high watermark
        (for brokers whose ListOffsets answers cannot be used: Tansu)."""
        parts = list(self.consumer.assignment())
        while time.monotonic() < deadline:
            batch = await self.consumer.getmany(timeout_ms=300, max_records=50_000)
            for tp, records in batch.items():
                for record in records:
                    if record.key is not None:
                        self.decode(tp.topic, record.key, record.value, self.state)
                        self.records += 1
            if not batch and await self._at_highwater(parts):
                return
        raise BenchError("reading the changelogs back took too long")

    async def _at_highwater(self, parts: list[TopicPartition]) -> bool:
        for tp in parts:
            highwater = self.consumer.highwater(tp)
            if highwater is None or await self.consumer.position(tp) < highwater:
                return False
        return True

    async def stop(self) -> None:
        await self.consumer.stop()


async def _measure(bootstrap: str, target: Target, launch: Launch, timeout_s: float,
                   timed_changelog: bool) -> Outcome:
    out = Outcome()
    input_ends = target.input_ends or await _input_ends(bootstrap, target.inputs)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    # the group's committed offsets through a consumer of it that never joins (OffsetFetch as
    # a member would send it: Tansu does not answer the admin client's request)
    offsets = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=target.group,
                               enable_auto_commit=False)
    await offsets.start()
    if await _stable(admin, target.group, target.stale_members):
        raise BenchError(f"group {target.group} is Stable before its peer started")
    proc = launch.start()  # only now: the watch is ready for its first poll
    sampler = _Sampler(proc)
    deadline = time.monotonic() + timeout_s
    exited_at: float | None = None
    reader: _Reader | None = None
    try:
        while not out.start:
            cpu, asked = sampler.sample(), time.time()
            if await _stable(admin, target.group, target.stale_members):
                out.start, out.cpu_start = asked, cpu  # Stable at or before the question
                break
            if time.monotonic() > deadline or not proc.alive():
                raise BenchError(f"{proc.name}: its group {target.group} never became Stable"
                                 + ("" if proc.alive() else
                                    f" (exited, code {proc.process.returncode}, after "
                                    f"{time.time() - proc.started:.1f} s):\n{proc.log_tail()}"))
            await asyncio.sleep(POLL_S)
        last_log = time.monotonic()
        while True:
            if reader is None:
                names = target.changelogs(list(await admin.list_topics()))
                if len(names) >= target.changelog_count:
                    reader = _Reader(bootstrap, names, target.decode)
                    await reader.start()
            cpu = sampler.sample()
            committed = await _committed(offsets, input_ends)
            stamp = time.time()
            behind = sum(max(0, end - committed.get(tp, 0)) for tp, end in input_ends.items())
            if not behind and reader is not None:
                out.commits_done, out.cpu_end = stamp, cpu
                ends = await reader.snapshot() if timed_changelog else {}
                snapped = time.time()
                break
            if not proc.alive():
                exited_at = exited_at or time.monotonic()
                if time.monotonic() - exited_at > 5:
                    raise BenchError(f"{proc.name} exited with {behind:,} input records "
                                     f"uncommitted:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{proc.name}: {behind:,} input records still uncommitted "
                                 f"after {timeout_s:.0f} s (changelogs found: "
                                 f"{reader is not None})")
            if time.monotonic() - last_log > 10:
                log(f"{proc.name}: {behind:,} input records not committed yet")
                last_log = time.monotonic()
                own = proc.result()
                if own is not None and own.get("complete") is False:
                    raise BenchError(f"{proc.name} reached its cap (--max-window) after "
                                     f"{own.get('events', 0):,} records: no figure")
            await asyncio.sleep(POLL_S)
    except BaseException:
        if reader is not None:
            await reader.stop()
        raise
    finally:
        await admin.close()
        await offsets.stop()
    try:
        grace = time.monotonic() + CHANGELOG_GRACE_S
        while True:
            if timed_changelog:
                await reader.read_to(ends, grace + 60)
            else:
                await reader.read_idle(grace + 60)
            wrong = compare(_totals(reader.state), target.expected)
            if wrong is None:
                break
            if time.monotonic() > grace:
                out.error = f"wrong totals in the changelog (no figure): {wrong}"
                break
            await asyncio.sleep(POLL_S)
            sampler.sample()
            ends = await reader.snapshot() if timed_changelog else {}
            snapped = time.time()
        # every change was in the changelogs at the snapshot taken right after the commits
        # were seen complete (or at a later one, when they lagged the commits)
        out.end = max(out.commits_done, snapped) if timed_changelog else out.commits_done
        out.changelog_lag_s = round(out.end - out.commits_done, 3)
        if out.changelog_lag_s > 0.5:
            out.cpu_end = sampler.cpu
        out.changelog_records = reader.records
        out.detail = {"changelogs": reader.topics, "customers_read_back": len(reader.state)}
    finally:
        await reader.stop()
    out.peak_rss_mb = sampler.peak_mb
    return out


class Launch:
    """Starts the peer's process when the watch is ready (``proc`` once started)."""

    def __init__(self, start: Callable[[], Proc]) -> None:
        self._start = start
        self.proc: Proc | None = None

    def start(self) -> Proc:
        self.proc = self._start()
        return self.proc


def measure(bootstrap: str, target: Target, launch: Launch, timeout_s: float, *,
            timed_changelog: bool = True) -> Outcome:
    """Get ready to watch, start the peer (``launch``), and watch it work through ``target``
    (see the module docstring); the caller stops ``launch.proc``. Without ``timed_changelog``
    (Tansu, whose ListOffsets answers cannot be used) the window ends at the commits and the
    changelogs are read back to their high watermarks and checked."""
    return asyncio.run(_measure(bootstrap, target, launch, timeout_s, timed_changelog))
