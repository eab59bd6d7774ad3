"""A worker told to stop while its broker is gone exits within ``SHUTDOWN_GRACE_S``
(app/runtime/shutdown.py), and its successor, once the broker is back, ends with every
customer exact: the abandoned shutdown loses nothing and counts nothing twice.

Its own one-node Apache Kafka: the test kills the broker.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.dev.devstack import DevStack, free_port
from core.config import load_settings
from tests.integration.harness import deployed, wait_for
from tests.integration.test_recovery import mismatches, purchases, purchases_counted, reference

pytestmark = pytest.mark.integration

GRACE_S = 5.0
#: Enough input that the worker is mid-stream, with records not committed, when the broker dies.
PURCHASES = 20_000
CUSTOMERS = 1_500


@pytest.fixture
def own_kafka() -> Iterator[DevStack]:
    with DevStack(free_port(), free_port(), broker="kafka", startup_timeout=90) as running:
        yield running


@pytest.mark.timeout(300)
def test_a_worker_stopped_with_its_broker_gone_exits_within_its_grace_and_loses_nothing(
        own_kafka: DevStack, tmp_path: Path) -> None:
    stack = own_kafka
    assert stack.kafka is not None
    with deployed(stack, tmp_path, extra_env={"SHUTDOWN_GRACE_S": str(GRACE_S)}) as deployment:
        first = deployment.start_worker("w1")
        first.wait_ready()
        records = purchases(seed=11, count=PURCHASES, customers=CUSTOMERS)
        deployment.produce(records)
        wait_for("the worker mid-stream",
                 lambda: purchases_counted(first, deployment) > 0, 60, interval=0.05)
        (node,) = stack.kafka.pids
        stack.kafka.signal_node(node, signal.SIGKILL)
        time.sleep(1.0)

        first.process.send_signal(signal.SIGTERM)
        status, took, log = first.wait_exit(timeout=GRACE_S + 60)
        assert status == 75, log[-3000:]
        assert took < GRACE_S + 20, f"exited {took:.1f} s after SIGTERM"
        assert f"did not finish stopping within SHUTDOWN_GRACE_S={GRACE_S:g} s" in log
        print(f"w1 exited {took:.1f} s after SIGTERM, status {status}")

        stack.kafka.restart_node(node)
        expected = reference(records, load_settings(deployment.env).loyalty)
        second = deployment.start_worker("w2")
        second.wait_ready(120)
        deployment.wait_committed("purchases", PURCHASES, timeout=120)
        wrong = mismatches(second, expected, sorted(expected))  # every customer
        assert not wrong, f"{len(wrong)} customers differ, e.g. {sorted(wrong.items())[:3]}"
