"""A restarted worker serves exactly the state it had before the restart, for every customer,
whether it restores its tables with the bulk reader (``RECOVERY_BULK=on``, the default,
``app/runtime/restore.py``) or with Faust's per-event recovery (``off``).

Thousands of customers, each changelog key written many times over (a batch writes each
customer it touched), on a real broker; the served documents of *every* customer are compared
before and after, and against the pure core's replay of the purchases.
"""

from __future__ import annotations

import re
import signal

import pytest

from core.config import load_settings
from tests.integration.harness import Deployment, Worker, wait_for
from tests.integration.test_recovery import documents, purchases, purchases_counted, reference

pytestmark = pytest.mark.integration

CUSTOMERS = 5_000
PURCHASES = 12_000


def bulk_restored(worker: Worker) -> tuple[int, str]:
    """Records the worker's bulk restore applied, and whether it left any offset to Faust."""
    text = worker.log_path.read_text(errors="replace")
    found = re.findall(r"bulk restore: (\d+) records into \d+ partitions[^\n]*", text)
    lines = [line for line in text.splitlines() if "bulk restore:" in line]
    return (sum(int(n) for n in found), "\n".join(lines))


@pytest.mark.timeout(420)
def test_restored_state_equals_the_state_before_the_restart_for_every_customer(
        deployment: Deployment) -> None:
    first = deployment.start_worker("before")
    first.wait_ready()
    records = purchases(seed=19, count=PURCHASES, customers=CUSTOMERS)
    deployment.produce(records)
    wait_for("every purchase counted",
             lambda: purchases_counted(first, deployment) >= len(records), 180, interval=0.5)
    users = sorted({user for _, user, _ in records})
    assert len(users) > 4_500
    before = documents(first, users)
    assert all(isinstance(doc, dict) for doc in before.values())
    assert before == reference(records, load_settings(deployment.env).loyalty)
    deployment.wait_committed("purchases", len(records))
    first.stop(signal.SIGTERM)

    bulk = deployment.start_worker("bulk")  # memory store: everything from the changelogs
    bulk.wait_ready(180)
    applied, lines = bulk_restored(bulk)
    assert applied >= len(users), lines  # spend alone has a record per customer
    assert "left to Faust" not in lines, lines
    after = documents(bulk, users)
    assert after == before, [u for u in users if after[u] != before[u]][:5]
    bulk.stop(signal.SIGTERM)

    deployment.env["RECOVERY_BULK"] = "off"
    faust_path = deployment.start_worker("faust-path")
    faust_path.wait_ready(180)
    assert bulk_restored(faust_path) == (0, "")
    assert documents(faust_path, users) == before
