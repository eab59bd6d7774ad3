"""One embedded broker + redis for the whole test session; one deployment per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.devstack import DevStack, free_port
from tests.integration.harness import Deployment


@pytest.fixture(scope="session")
def stack() -> Iterator[DevStack]:
    """The session's Tansu broker and redis-server on free loopback ports."""
    with DevStack(free_port(), free_port()) as running:
        yield running


@pytest.fixture
def deployment(stack: DevStack, tmp_path: Path) -> Iterator[Deployment]:
    """An isolated deployment (unique app id and topic prefix) with its topics created."""
    deployed = Deployment(stack, tmp_path)
    deployed.create_topics()
    yield deployed
    deployed.stop()


@pytest.fixture(params=["on", "off"], ids=["fast-lane", "agent-path"])
def each_path(request: pytest.FixtureRequest, stack: DevStack,
              tmp_path: Path) -> Iterator[Deployment]:
    """Like :func:`deployment`, once per processing path: the fast lane (the default) and
    Faust's agents (``FAST_LANE=off``, the path ``exactly_once`` always takes)."""
    deployed = Deployment(stack, tmp_path, extra_env={"FAST_LANE": request.param})
    deployed.create_topics()
    yield deployed
    deployed.stop()


@pytest.fixture
def secured(stack: DevStack, tmp_path: Path) -> Iterator[Deployment]:
    """Like :func:`deployment`, with ``WEB_TOKEN`` set."""
    deployed = Deployment(stack, tmp_path, token="it-token-123")
    deployed.create_topics()
    yield deployed
    deployed.stop()
