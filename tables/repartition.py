"""How far each repartition partition has applied each origin partition (``REPARTITION``)."""

from __future__ import annotations

from app.faust_app import app
from tables.base import text_keyed_table

#: "<repartition topic>:<partition>:<origin partition>" -> [highest origin offset applied,
#: the repartition offset it came at] (core.repartition.Mark). Written from the repartition
#: record's event, so its changelog partition is the repartition partition.
repartition_marks = text_keyed_table(
    app.Table, "repartition_marks",
    "Highest origin offset applied per repartition partition and origin partition",
)


def mark_key(topic: str, partition: int, origin_partition: int) -> str:
    """Table key of (repartition partition, origin partition)."""
    return f"{topic}:{partition}:{origin_partition}"
