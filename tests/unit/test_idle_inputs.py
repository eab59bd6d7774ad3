"""Which input topics' idle partitions leave the worker's every fetch
(app/runtime/transport.py ``idle_inputs``): never the positions, nor their repartition topic."""

from __future__ import annotations

from app.runtime.transport import idle_inputs
from core.config import load_settings


def test_idle_inputs_are_the_quiet_inputs_and_every_repartition_topic_but_the_positions() -> None:
    settings = load_settings({"TOPIC_PREFIX": "t1.", "REPARTITION": "keyless"})
    assert set(idle_inputs(settings)) == {
        "t1.purchases", "t1.returns", "t1.associates.alerts",
        "t1.products.repartition", "t1.users.repartition", "t1.purchases.repartition",
        "t1.returns.repartition", "t1.stores.products.repartition",
        "t1.products.promotions.repartition"}


def test_a_topic_not_repartitioned_has_no_repartition_topic_to_pause() -> None:
    settings = load_settings({"TOPIC_PREFIX": "", "REPARTITION": "off",
                              "REPARTITION_PURCHASES": "all"})
    assert set(idle_inputs(settings)) == {"purchases", "returns", "associates.alerts",
                                          "purchases.repartition"}
