"""Which source offsets have already been dead-lettered, per source partition."""

from __future__ import annotations

from app.faust_app import app
from tables.base import text_keyed_table

#: "topic:partition" -> highest offset already sent to dead-letters. Written from the source
#: event, so its changelog partition is the source partition and the mark moves with it.
dead_letter_marks = text_keyed_table(
    app.Table, "dead_letter_marks", "Highest dead-lettered offset per source partition"
)


def mark_key(topic: str, partition: int) -> str:
    """Table key of a source partition."""
    return f"{topic}:{partition}"
