"""``PROCESSING_GUARANTEE=exactly_once`` against the session's broker.

Measured on the embedded broker (Tansu 0.6.0, memory storage): InitProducerId v0, the only
version aiokafka 0.14 sends, is answered with UNKNOWN_SERVER_ERROR (-1) in a few ms, with or
without a transactional id, so neither Faust's idempotent producer nor its transactional
producers can start. The documented behaviour is then: the worker refuses to start, at once,
saying why and what to do (``app.guarantees``). On a broker with transactions the same test
replays the recipe under ``exactly_once`` and checks that a restart reprocesses nothing.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from app.devstack import DevStack
from app.guarantees import TransactionsUnsupported, check_transactions, require_transactions
from core import sample
from tests.integration.harness import Deployment, Worker, deployed, wait_for

pytestmark = pytest.mark.integration

CUSTOMERS = [name for _, name in sample.USERS]


@pytest.fixture
def exactly_once(stack: DevStack, tmp_path: Path) -> Any:
    with deployed(stack, tmp_path, extra_env={"PROCESSING_GUARANTEE": "exactly_once"}) as running:
        yield running


def transactions_missing(deployment: Deployment) -> str | None:
    return asyncio.run(check_transactions(
        deployment.stack.bootstrap, f"{deployment.settings.app_id}-test-check", timeout_s=10))


def expected_documents() -> dict[str, Any]:
    return {user: {
        "user_id": user,
        "total": float(sample.EXPECTED_TOTALS[user]),
        "reward_level": sample.EXPECTED_TIERS[user],
        "unpriced_purchases": 0,
        "coffee": dict(zip(("total", "sequence", "next_one_free"),
                           sample.EXPECTED_COFFEE[user], strict=True)),
        "promotions": sample.EXPECTED_CAMPAIGNS[user],
    } for user in CUSTOMERS}


def documents(worker: Worker) -> dict[str, Any]:
    return {user: worker.get(f"/customers/{user}/")[1] for user in CUSTOMERS}


def test_the_transaction_check_says_why_transactions_are_missing(
        exactly_once: Deployment) -> None:
    reason = transactions_missing(exactly_once)
    if reason is None:
        pytest.skip("this broker supports transactions")
    assert "InitProducerId failed" in reason  # Tansu 0.6.0: UnknownError [Error -1]
    with pytest.raises(TransactionsUnsupported, match="PROCESSING_GUARANTEE=at_least_once"):
        require_transactions(exactly_once.stack.bootstrap, exactly_once.settings.app_id)


def test_exactly_once_worker_refuses_clearly_or_processes_exactly_once(
        exactly_once: Deployment) -> None:
    reason = transactions_missing(exactly_once)
    worker = exactly_once.start_worker("w1")
    if reason is not None:
        wait_for("the exactly_once worker to refuse to start",
                 lambda: worker.process.poll() is not None, 60)
        log = worker.log_path.read_text(errors="replace")
        assert worker.process.returncode != 0
        assert "needs Kafka transactions" in log, (
            "expected app.guarantees' message (connect app.guarantees.on_worker_init to "
            f"app.on_worker_init); log tail:\n{worker.log_tail(8)}")
        return

    worker.wait_ready(90)
    produced = exactly_once.produce((e.topic, e.key, e.value) for e in sample.recipe_events())
    wait_for("every event counted",
             lambda: worker.metric("storestream_events_total") >= produced, 60)
    assert documents(worker) == expected_documents()
    worker.stop(signal.SIGTERM)

    again = exactly_once.start_worker("w2")
    again.wait_ready(90)
    assert documents(again) == expected_documents()
    time.sleep(3.0)  # a redelivered event would be counted by now
    assert again.metric("storestream_events_total") == 0  # committed: nothing reprocessed
    events = exactly_once.read_topic("loyalty.events", expect=11, timeout=30)
    assert len(events) == 11  # transactions: no loyalty event written twice
