"""Within one fetch, shoppers' positions (waiting for an offer) run before other batches."""

from __future__ import annotations

from faust.types import TP

import app as storestream  # noqa: F401  (registers the agents and their lanes)
from app.runtime import fastlane
from app.runtime.transport import _urgent_first
from app.topics import locations_topic, purchases_topic


def test_positions_are_an_urgent_lane() -> None:
    assert locations_topic.get_topic_name() in fastlane.URGENT
    assert purchases_topic.get_topic_name() not in fastlane.URGENT


def test_position_batches_run_first_and_the_rest_keep_their_order() -> None:
    purchases, locations = purchases_topic.get_topic_name(), locations_topic.get_topic_name()
    fetched = {TP(purchases, 0): ["p0"], TP(locations, 3): ["l3"], TP("products", 1): ["x1"],
               TP(purchases, 2): ["p2"], TP(locations, 0): ["l0"]}
    order = [batch[0] for _, batch in sorted(fetched.items(), key=_urgent_first)]
    assert order == ["l3", "l0", "p0", "x1", "p2"]
