"""A worker refuses input topics whose partition counts differ (issue 17, criterion 4)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.broker.topology import topic_specs
from app.dev.devstack import DevStack, TopicSpec, ensure_topics
from tests.integration.harness import Deployment

pytestmark = pytest.mark.integration

PARTITIONS = 4


def test_a_worker_exits_at_once_when_input_topics_differ_in_partition_count(
        stack: DevStack, tmp_path: Path) -> None:
    deployment = Deployment(stack, tmp_path, partitions=PARTITIONS)
    specs = topic_specs(deployment.settings)
    locations = deployment.topic("customers.locations")
    specs = [TopicSpec(s.name, 6, s.config) if s.name == locations else s for s in specs]
    asyncio.run(ensure_topics(stack.bootstrap, specs))
    worker = deployment.start_worker("unequal")
    try:
        code, elapsed, log = worker.wait_exit(60)
    finally:
        deployment.stop()
    assert code != 0, log
    assert elapsed < 30, f"took {elapsed:.0f} s to exit:\n{log}"
    lines = [line for line in log.splitlines() if "same partition count" in line]
    assert len(lines) == 1, log
    assert f"6 partitions: {locations}" in lines[0], lines
    assert f"4 partitions: {deployment.topic('products')}" in lines[0], lines
