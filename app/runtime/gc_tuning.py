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
Reference cycles are still collected, only less often.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def tune(gen0_threshold: int) -> None:
    """Freeze start-up objects and collect the youngest generation every ``gen0_threshold``
    net allocations (``0``: leave the collector as Python configures it)."""
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
    log.info("gc: %d start-up objects frozen, thresholds %s", gc.get_freeze_count(),
             gc.get_threshold())
