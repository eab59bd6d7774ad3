"""How every storestream table is declared.

Private internals mirrored (listed in app/runtime/internals.py; checked against
faust-streaming 0.15.3, re-check on upgrade): ``faust.tables.base.Collection._new_changelog_topic``
(the changelog topic made again once the key and value serializers are set).
"""

from __future__ import annotations

from typing import Any


def text_keyed_table(factory: Any, name: str, help: str, **options: Any) -> Any:
    """A table with UTF-8 text keys and JSON values on its changelog, and no default.

    Faust would JSON-encode ``str`` keys (``b'"kris"'``) and route by those bytes, while
    producers hash the plain UTF-8 key: with UTF-8 keys the owner Faust computes for a key is
    the partition the producer chose. No default, so a missing key is a 404, not a zero.
    """
    table = factory(name, key_type=str, value_type=None, help=help, **options)
    table.key_serializer = "utf8"
    table.value_serializer = "json"
    table.changelog_topic = table._new_changelog_topic()
    return table
