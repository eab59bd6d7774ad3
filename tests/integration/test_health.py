"""``/health`` answers 503, saying what it waits for, until the worker is ready (DESIGN
section 6), then 200: seen for real, from the start of a worker's process.

To make the not-ready phase last as long as the test needs instead of however long a start
happens to take, a first worker of the same group is frozen (SIGSTOP) before the second one
starts: the group's rebalance then waits for the frozen member (its session outlives the
test's hold), so the second worker cannot get partitions, and must say so, until the first
is thawed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from app.dev.devstack import DevStack
from tests.integration.harness import deployed, wait_for

pytestmark = pytest.mark.integration

#: How long the second worker is kept from its partitions once its web view answers.
HOLD_S = 4.0


def test_health_is_503_with_what_it_waits_for_until_the_worker_is_ready(
        stack: DevStack, tmp_path: Path) -> None:
    # The frozen member's session (and so the rebalance's wait for it) outlasts the hold.
    with deployed(stack, tmp_path, extra_env={"BROKER_SESSION_TIMEOUT_S": "60"}) as deployment:
        first = deployment.start_worker("w1")
        first.wait_ready()
        seen: list[tuple[float, int, Any]] = []  # (seconds since start, status, body)

        os.kill(first.process.pid, signal.SIGSTOP)
        try:
            second = deployment.start_worker("w2")
            started = time.monotonic()

            def health() -> int:
                assert second.process.poll() is None, second.log_tail()
                status, body = second.get("/health", timeout=5)
                seen.append((time.monotonic() - started, status, body))
                return status

            wait_for("w2's web view to answer", lambda: health() != 0, 60, interval=0.1)
            held = time.monotonic()
            while time.monotonic() - held < HOLD_S:
                health()
                time.sleep(0.2)
        finally:
            os.kill(first.process.pid, signal.SIGCONT)
        wait_for("w2 ready once w1 is back", lambda: health() == 200, 120, interval=0.2)

    statuses = [status for _, status, _ in seen]
    ready_at = statuses.index(200)
    before = seen[:ready_at]
    # Never ready while it could not have partitions: nothing but "not up yet" and 503.
    assert {status for _, status, _ in before} <= {0, 503}, statuses
    not_ready = [(at, body) for at, status, body in before if status == 503]
    assert not_ready, f"no 503 before the first 200: {statuses}"
    assert not_ready[-1][0] - not_ready[0][0] >= HOLD_S, "503 not seen throughout the hold"
    for _, body in not_ready:
        assert body["status"] == "starting" and body["ready"] is False, body
        assert body["waiting_for"], body
    # While the frozen member held the rebalance, the wait was for partitions.
    held_bodies = [body for at, body in not_ready if at <= not_ready[0][0] + HOLD_S]
    assert all("partition assignment" in body["waiting_for"] for body in held_bodies), (
        held_bodies)
    assert seen[ready_at][2]["status"] == "ok" and seen[ready_at][2]["ready"] is True
    reasons = sorted({reason for _, body in not_ready for reason in body["waiting_for"]})
    print(f"w2: {len(not_ready)} answers 503 from {not_ready[0][0]:.1f} s to "
          f"{not_ready[-1][0]:.1f} s after its start ({reasons}), 200 at {seen[ready_at][0]:.1f} s")
