"""aiokafka's fetch loop without a per-wake cost for every paused partition.

aiokafka's background fetch routine decides, each time it wakes (every fetch reply and every
time the application takes records: ~230 times a second at 500 positions/s), what to do for
each assigned partition, and then waits on the in-flight fetches *and on one resume future per
paused partition*. A worker keeps most of its ~130 assigned partitions paused in aiokafka (its
tables' changelogs once recovered, reference data and idle inputs between fetch windows:
:mod:`app.runtime.transport`, :mod:`app.runtime.fetch_schedule`),
so each wake looked up the leader of every
one of them and registered and removed ~120 done-callbacks in ``asyncio.wait``. Measured with
py-spy at 500 positions/s: 18% of the worker's busy samples, ~9% of a core.

:func:`skip_paused` keeps aiokafka's own decision for every partition that can be fetched,
reset or is waiting to be consumed, and answers the paused ones from their state alone: they
contribute a single future that completes when any of them is resumed, instead of one each.
A paused partition whose leader is unknown no longer triggers a metadata refresh while it is
paused (it does as soon as it is resumed). No Faust import.

Urgent partitions (the shoppers' positions) with fetched records not yet taken keep their
broker's next fetch back (:func:`hold_for_urgent`). aiokafka keeps one fetch in flight per
broker and leaves a partition whose records wait to be taken out of the next request, after
its prefetch backoff (100 ms) even out of a request it then sends without them; a request
naming only idle partitions is answered when the broker's fetch wait (``FETCH_WAIT_MS``,
500 ms) runs out, and the positions, taken meanwhile, could not be fetched until then.
Measured at 2,000 positions/s on Apache Kafka with a timeline of the worker
(``STALL_PROBE``): a lane slowed by CPU contention left the positions' records untaken for
just over 100 ms, the next fetch named the 113 other partitions and waited 502 ms; no
position was fetched for 625 ms.

Private internals mirrored (listed in app/runtime/internals.py; checked against aiokafka
0.14.0, re-check on upgrade): ``aiokafka.consumer.fetcher.Fetcher._get_actions_per_node``
(replaced on the instance; its result tuple is :data:`Actions`), whose caller
``Fetcher._fetch_requests_routine`` waits on the resume futures it returns;
``Fetcher._records`` (partitions with fetched records), ``Fetcher._select_read_replica``
(the broker a partition is fetched from) and ``FetchResult._created`` (when its records
were fetched); from
``aiokafka.consumer.subscription_state``: ``Assignment.tps``, ``Assignment.state_value``,
``Assignment._tp_state`` (partition -> state), ``TopicPartitionState.paused``,
``TopicPartitionState.has_valid_position``, ``TopicPartitionState.resume_fut`` and the
fields behind them (``TopicPartitionState._paused``, ``TopicPartitionState._position``,
``TopicPartitionState._resume_fut``); ``aiokafka.protocol.fetch.FetchRequest.topics``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from typing import Any

#: aiokafka's ``Fetcher._get_actions_per_node`` result:
#: (fetch requests, reset requests, timeout, invalid metadata, resume futures).
Actions = tuple[Any, Any, Any, bool, list[Any]]


class _Fetchable:
    """The part of an aiokafka ``Assignment`` the fetch routine reads, for a subset of its
    partitions."""

    __slots__ = ("state_value", "tps")

    def __init__(self, assignment: Any, tps: list[Any]) -> None:
        self.tps = tps
        self.state_value = assignment.state_value


class ResumeSignal:
    """One future that completes when any watched future (a partition's ``resume_fut``) does.

    Each resume future gets one done-callback, the first time it is seen; the callback
    completes the signal current at that moment, and a new signal is handed out after that.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watched: set[asyncio.Future[Any]] = set()
        self._signal: asyncio.Future[None] | None = None

    def covering(self, futures: list[asyncio.Future[Any]]) -> asyncio.Future[None]:
        """A future that completes once any of ``futures`` (or one watched before) does."""
        for future in futures:
            if future not in self._watched:
                self._watched.add(future)
                future.add_done_callback(self._resumed)
        if self._signal is None or self._signal.done():
            self._signal = self._loop.create_future()
        return self._signal

    @property
    def watched(self) -> int:
        """Resume futures still watched (paused partitions seen and not yet resumed)."""
        return len(self._watched)

    def _resumed(self, future: asyncio.Future[Any]) -> None:
        self._watched.discard(future)
        if self._signal is not None and not self._signal.done():
            self._signal.set_result(None)


def split_paused(assignment: Any, buffered: Any) -> tuple[list[Any], list[Any]]:
    """(partitions aiokafka must decide on, resume futures of the quietly paused ones).

    A partition is quietly paused when it is paused, has a position and holds no fetched
    records: aiokafka would only wait for it to resume.
    """
    decide: list[Any] = []
    resume: list[Any] = []
    # The states' own fields, not ``state_value(tp)`` and the properties: this runs on every
    # wake of the fetch routine for every assigned partition (~130 in a worker), and the
    # lookups and property calls made it ~8x slower (134 against 17 us per call, measured).
    for tp, state in assignment._tp_state.items():
        if state._paused and state._position is not None and tp not in buffered:
            resume.append(state._resume_fut)
        else:
            decide.append(tp)
    return decide, resume


class FetchLog:
    """Counts the fetch requests built per topic, so that a caller can wait until a fetch of
    some partitions has been answered.

    aiokafka keeps one fetch in flight per broker and builds the next request for a broker
    only once the previous one was answered and its records were taken; so the second
    request that names a topic after a moment ``t`` is proof that the first one, sent after
    ``t``, came back. (With partitions of one topic on several brokers this is a good
    approximation; the wait is bounded either way, and a partition paused while its fetch is
    in flight only has that fetch's records discarded by aiokafka and read again later.)
    """

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self._waiters: list[asyncio.Future[None]] = []

    def built(self, fetches: Any) -> None:
        """Record the fetch requests ``(node, request)`` the fetch routine is about to send."""
        for _node, request in fetches:
            for topic, _partitions in request.topics:
                self.requests[topic] = self.requests.get(topic, 0) + 1
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def answered(self, partitions: list[Any], bound_s: float) -> None:
        """Return once a fetch of any of ``partitions`` sent from now on was answered, or
        after ``bound_s`` seconds."""
        topics = {tp.topic for tp in partitions}
        if not topics:
            return
        start = {topic: self.requests.get(topic, 0) for topic in topics}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound_s
        while max(self.requests.get(topic, 0) - start[topic] for topic in topics) < 2:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                return


#: Longest time (s) fetched records of an urgent partition keep their broker's next fetch
#: back while they wait to be taken; past it, aiokafka's own rule applies (a partition whose
#: records are never taken, e.g. paused by Faust, does not stop the others for longer).
URGENT_HOLD_S = 1.0


def hold_for_urgent(result: Actions, buffered: Any, node_of: Callable[[Any], Any],
                    urgent: Collection[str], now: float,
                    hold_s: float = URGENT_HOLD_S) -> Actions:
    """``result`` without the fetch requests to brokers leading a partition of an ``urgent``
    topic whose fetched records (``buffered``: partition -> aiokafka fetch result) wait to be
    taken, for up to ``hold_s`` after they were fetched; the routine's timeout shortened to
    the end of that hold.

    Such a request cannot name the partition (its records are still buffered) and would hold
    the broker's one fetch slot for a whole fetch wait when the partitions it names are idle.
    Without it the fetch routine waits for the records to be taken (aiokafka wakes it then)
    and its next request names the urgent partitions again.
    """
    fetches = result[0]
    if not fetches or not urgent:
        return result
    held: dict[Any, float] = {}  # node -> end of its hold
    for tp, fetched in list(buffered.items()):
        if tp.topic not in urgent:
            continue
        until = getattr(fetched, "_created", now) + hold_s
        if until > now:
            node = node_of(tp)
            held[node] = max(held.get(node, 0.0), until)
    if not held:
        return result
    kept = [(node, request) for node, request in fetches if node not in held]
    if len(kept) == len(fetches):
        return result
    timeout = min([result[2], *(until - now for until in held.values())])
    return kept, result[1], max(0.001, timeout), result[3], result[4]


def skip_paused(fetcher: Any, loop: asyncio.AbstractEventLoop,
                log: FetchLog | None = None, urgent: Collection[str] = ()) -> None:
    """Make ``fetcher`` (a started aiokafka ``Fetcher``) answer paused partitions cheaply,
    hold its fetches back while ``urgent`` topics' records wait to be taken
    (:func:`hold_for_urgent`), and record the requests it builds in ``log``."""
    decide_all: Callable[[Any], Actions] = fetcher._get_actions_per_node
    signal = ResumeSignal(loop)

    def actions(assignment: Any) -> Actions:
        decide, resume = split_paused(assignment, fetcher._records)
        if not resume:
            result = decide_all(assignment)
        else:
            fetches, resets, timeout, invalid, futures = decide_all(
                _Fetchable(assignment, decide))
            result = fetches, resets, timeout, invalid, [*futures, signal.covering(resume)]
        if urgent and fetcher._records:
            result = hold_for_urgent(result, fetcher._records, fetcher._select_read_replica,
                                     urgent, time.monotonic())
        if log is not None and result[0]:
            log.built(result[0])
        return result

    fetcher._get_actions_per_node = actions
