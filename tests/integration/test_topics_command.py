"""``faust -A app topics`` and a worker's start on a broker without its topics.

Each test is its own deployment (unique ``APP_ID`` and ``TOPIC_PREFIX``) whose topics are
*not* created beforehand: creating them is what is tested. On both brokers: a new user's
first worker runs on the embedded one (``make devstack``), production on Apache Kafka.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from app.broker.topic_admin import TopicReport, reconcile
from app.broker.topology import desired_topics, topic_specs
from app.dev.devstack import DevStack, TopicSpec, ensure_topics
from core.topic_plan import TopicState
from tests.integration.harness import ROOT, Deployment

pytestmark = [pytest.mark.integration, pytest.mark.brokers("kafka", "tansu")]

#: Bound (s) for one ``faust -A app topics`` run.
COMMAND_TIMEOUT_S = 120.0


def run_topics(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m faust -A app topics`` in the deployment's environment."""
    return subprocess.run(
        [sys.executable, "-m", "faust", "-A", "app", "topics", *args],
        cwd=ROOT, env=deployment.env, capture_output=True, text=True,
        timeout=COMMAND_TIMEOUT_S, check=False,
    )


def states(output: str) -> dict[str, str]:
    """Topic name -> state word, from the command's per-topic lines."""
    found = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in {s.value for s in TopicState}:
            found[parts[0]] = parts[1]
    return found


def broker_report(deployment: Deployment) -> TopicReport:
    """What the broker says about the deployment's topics (nothing is created)."""
    return asyncio.run(reconcile(deployment.stack.bootstrap, {"security_protocol": "PLAINTEXT"},
                                 desired_topics(deployment.settings), create_missing=False))


def names(deployment: Deployment) -> list[str]:
    return [spec.name for spec in topic_specs(deployment.settings)]


def test_topics_are_created_once_then_verified(stack: DevStack, tmp_path: Path) -> None:
    deployment = Deployment(stack, tmp_path)
    assert set(broker_report(deployment).missing) == set(names(deployment))

    first = run_topics(deployment)
    assert first.returncode == 0, first.stdout + first.stderr
    assert states(first.stdout) == dict.fromkeys(names(deployment), "created"), first.stdout

    second = run_topics(deployment)
    assert second.returncode == 0, second.stdout + second.stderr
    assert states(second.stdout) == dict.fromkeys(names(deployment), "ok"), second.stdout
    assert broker_report(deployment).ok


def test_a_topic_with_the_wrong_partition_count_is_named(stack: DevStack,
                                                         tmp_path: Path) -> None:
    deployment = Deployment(stack, tmp_path, partitions=4)
    purchases = deployment.topic("purchases")
    declared = {spec.name: spec for spec in topic_specs(deployment.settings)}[purchases]
    asyncio.run(ensure_topics(stack.bootstrap,
                              [TopicSpec(purchases, 2, declared.config)]))

    result = run_topics(deployment)
    assert result.returncode == 1, result.stdout + result.stderr
    found = states(result.stdout)
    assert found.pop(purchases) == "differs", result.stdout
    assert set(found.values()) == {"created"}, result.stdout
    line = next(line for line in result.stdout.splitlines() if line.startswith(purchases))
    assert "partitions 2, expected 4" in line
    assert purchases in result.stderr

    again = run_topics(deployment, "--dry-run")  # nothing was changed, nothing to create
    assert again.returncode == 1
    assert states(again.stdout)[purchases] == "differs"
    assert list(broker_report(deployment).differs) == [f"{purchases}: partitions 2, expected 4"]


def test_a_worker_told_not_to_create_topics_exits_naming_them(stack: DevStack,
                                                               tmp_path: Path) -> None:
    deployment = Deployment(stack, tmp_path, extra_env={"TOPIC_CREATE": "off"})
    worker = deployment.start_worker("no-create")
    try:
        code, elapsed, log = worker.wait_exit(60)
    finally:
        deployment.stop()
    assert code != 0, log
    assert elapsed < 30, f"took {elapsed:.0f} s to exit:\n{log}"
    assert deployment.topic("dead-letters") in log, log
    assert "faust -A app topics" in log, log
    assert set(broker_report(deployment).missing) == set(names(deployment))


def test_a_worker_on_a_broker_without_topics_creates_them_and_says_what_it_waits_for(
        stack: DevStack, tmp_path: Path) -> None:
    deployment = Deployment(stack, tmp_path)
    worker = deployment.start_worker("fresh")
    starting: list[Any] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert worker.process.poll() is None, worker.log_tail()
            assert time.monotonic() < deadline, f"never ready:\n{worker.log_tail()}"
            status, body = worker.get("/health", timeout=5)
            if status == 200:
                break
            if status == 503:
                starting.append(body)
            time.sleep(0.05)
        log = worker.log_path.read_text(errors="replace")
        # Fourteen topics of DESIGN section 2 (returns: issue 22; offers.redemptions,
        # offers.held_out, displays.presence, associates.alerts: issue 21), one repartition
        # topic per input topic.
        assert "created 21 missing topic(s)" in log, log
        # What the worker created is exactly what the command would have created.
        verified = run_topics(deployment)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert set(states(verified.stdout).values()) == {"ok"}, verified.stdout
    finally:
        deployment.stop()
    # The web view answers before the consumer has joined its group: the worker is seen
    # starting, and every 503 says what it waits for (phases, tables, topics: no records).
    assert starting, "no 503 seen before the worker was ready"
    for body in starting:
        assert body["status"] == "starting" and body["ready"] is False
        assert body["waiting_for"] and all(isinstance(r, str) for r in body["waiting_for"])
    reasons = {reason for body in starting for reason in body["waiting_for"]}
    phases = ("partition assignment", "recovery of table ", "replica ", "table recovery",
              "processing to start")
    assert all(reason.startswith(phases) for reason in reasons), reasons
