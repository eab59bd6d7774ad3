"""What a worker that is not ready yet waits for, in words ``/health`` can show.

Only names of tables, topics and phases: never keys or values (``/health`` is unauthenticated
and must carry no customer data). The phases, in the order a worker goes through them:

* ``partition assignment``: the consumer is joining the group, or a rebalance is running;
* ``recovery of table <name>``: changelog partitions of that table still to be read;
* ``replica <topic>``: a replica (catalogue, displays, promotions, dead-letter index) still
  loading; the streams are held until every replica is loaded (app/runtime/recovery.py);
* ``table recovery``: recovery started and nothing above is pending (e.g. highwaters still
  being read);
* ``processing to start``: none of the above, the streams are being resumed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def waiting_for(app: Any, replicas_loading: Iterable[str]) -> list[str]:
    """Everything a not-yet-ready worker waits for (never empty).

    ``app`` is the Faust app (its consumer, table recovery and rebalancing flag are read,
    nothing is changed); ``replicas_loading`` the topics of the replicas still loading
    (:func:`app.runtime.replica.not_ready`).
    """
    reasons: list[str] = []
    recovery = getattr(getattr(app, "tables", None), "recovery", None)
    completed = bool(recovery is not None and recovery.completed.is_set())
    in_recovery = bool(recovery is not None and recovery.in_recovery)
    if getattr(app, "rebalancing", False) or (
            not completed and not in_recovery and not _assigned(app)):
        reasons.append("partition assignment")
    if in_recovery and recovery is not None:
        reasons.extend(f"recovery of table {name}" for name in _tables_recovering(recovery))
    reasons.extend(f"replica {topic}" for topic in replicas_loading)
    if in_recovery and not reasons:
        reasons.append("table recovery")
    return reasons or ["processing to start"]


def _tables_recovering(recovery: Any) -> list[str]:
    """Names of the tables with active changelog partitions not read to their highwater."""
    names = set()
    owners = getattr(recovery, "tp_to_table", {})
    for tp, remaining in recovery.active_remaining().items():
        table = owners.get(tp)
        if remaining > 0 and table is not None:
            names.add(str(getattr(table, "name", tp.topic)))
    return sorted(names)


def _assigned(app: Any) -> bool:
    """Whether the worker's consumer has partitions assigned (False before the first join)."""
    consumer = getattr(app, "_consumer", None)
    if consumer is None:
        return False
    try:
        return bool(consumer.assignment())
    except Exception:  # a consumer not started yet has nothing to say
        return False
