"""One embedded broker + redis for the whole test session; one deployment per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.devstack import DevStack, free_port
from tests.integration.harness import PATH_IDS, PATHS, Deployment, deployed


@pytest.fixture(scope="session")
def stack() -> Iterator[DevStack]:
    """The session's Tansu broker and redis-server on free loopback ports."""
    with DevStack(free_port(), free_port()) as running:
        yield running


@pytest.fixture
def deployment(stack: DevStack, tmp_path: Path) -> Iterator[Deployment]:
    """An isolated deployment (unique app id and topic prefix) with its topics created."""
    with deployed(stack, tmp_path) as running:
        yield running


@pytest.fixture(params=PATHS, ids=PATH_IDS)
def each_path(request: pytest.FixtureRequest, stack: DevStack,
              tmp_path: Path) -> Iterator[Deployment]:
    """Like :func:`deployment`, once per processing path: the fast lane (the default) and
    Faust's agents (``FAST_LANE=off``, the path ``exactly_once`` always takes)."""
    with deployed(stack, tmp_path, extra_env={"FAST_LANE": request.param}) as running:
        yield running


@pytest.fixture
def secured(stack: DevStack, tmp_path: Path) -> Iterator[Deployment]:
    """Like :func:`deployment`, with ``WEB_TOKEN`` set."""
    with deployed(stack, tmp_path, token="it-token-123") as running:
        yield running
