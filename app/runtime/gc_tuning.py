"""The worker's garbage collector, tuned for a stream of short-lived records.

CPython collects its youngest generation every 700 net container allocations. A worker
allocates several per record (aiokafka's ``ConsumerRecord``, our ``Source``, decoded JSON,
rule records, table values) and keeps tens of thousands of fetched records buffered, so
survivors are traversed again and again on their way to the oldest generation. Measured on
the loyalty benchmark (200,000 purchases): 2.2-2.6 s of collection per run with the default
thresholds, ~10 us per event, with oldest-generation pauses of 90-320 ms.

At worker start-up, after every module is imported, :func:`tune` collects once, moves what
survives (modules, classes, functions: objects that live as long as the process) out of the
collector's sight with :func:`gc.freeze`, and raises the youngest generation's threshold.

It also raises the middle generation's threshold (:data:`GEN1_THRESHOLD` youngest
collections per middle one, Python's default 10). A customer's records live from one of
their batches to the next: long enough to survive a young collection or two, not much
longer. Collected every 10 young collections, the middle generation held mostly such
records and traversed them all before they died anyway: returns + 365-d tiers, 2,000,000
purchases / 5,000 customers in process, 150 middle collections took 21.2 s (141 ms each)
and 14 full ones 5.1 s; at 100, 17 took 3.6 s and one full collection 0.6 s, for 3.6 s
more of young collections. Reference cycles are still collected, only less often.

And a batch's synchronous work (:func:`paused`, around the rules and the table writes of
a lane's batch) runs with the collector off. A batch keeps what it builds alive until it
ends: each customer's decoded records, the new ones, the changelog values; collected every
10,000 net allocations, those were traversed two to eight times per batch of 16,000
purchases and were garbage or current state right after. With the collector off for the
batch, what the batch leaves behind is traversed once, by the first young collection after
it. In process (1,000,000 purchases, 2,500 customers, batches of 16,000): young collections
224 -> 112 (3.6 -> 2.4 s) for the recipe row, 449 -> 112 (6.3 -> 5.6 s) for returns +
365-d tiers, whose batches leave more behind (a ledger row per purchase). A reference cycle
made during a batch waits for the batch to end.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

#: Young collections per middle-generation collection in a tuned worker (Python's: 10).
GEN1_THRESHOLD = 100


#: Whether :func:`tune` tuned the collector (:func:`paused` pauses it only then).
_TUNED = False


def tune(gen0_threshold: int) -> None:
    """Freeze start-up objects, collect the youngest generation every ``gen0_threshold`` net
    allocations and the middle one every :data:`GEN1_THRESHOLD` young collections (``0``:
    leave the collector as Python configures it)."""
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    gen2 = gc.get_threshold()[2]
    gc.set_threshold(gen0_threshold, GEN1_THRESHOLD, gen2)
    global _TUNED
    _TUNED = True
    log.info("gc: %d start-up objects frozen, thresholds %s", gc.get_freeze_count(),
             gc.get_threshold())


@contextmanager
def paused() -> Iterator[None]:
    """The collector off for a batch's synchronous work (nothing awaited inside), back on
    after it, in a worker whose collector :func:`tune` tuned; elsewhere (tests, tools) and
    when it is off already, nothing changes."""
    if not _TUNED or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
