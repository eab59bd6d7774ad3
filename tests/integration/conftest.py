"""Brokers for the integration tier: Apache Kafka by default, Tansu where the demo relies on it.

Every integration test runs against a real Apache Kafka 4.4 node (KRaft, jars from Maven
Central, :mod:`app.dev.kafka_broker`). A module that also covers the demo's path marks itself
``pytest.mark.brokers("kafka", "tansu")`` and runs once per broker (ids ``[kafka]`` and
``[tansu]``). Each broker, with its redis-server, is started once per session, on first use.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.dev.devstack import DevStack, free_port
from tests.integration.ably_stub import AblyStub
from tests.integration.harness import PATH_IDS, PATHS, Deployment, deployed

DEFAULT_BROKERS = ("kafka",)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "brokers(*kinds): run the test once per broker kind (default: kafka)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "broker_kind" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("brokers")
    kinds = list(marker.args) if marker is not None else list(DEFAULT_BROKERS)
    metafunc.parametrize("broker_kind", kinds, scope="session")


@pytest.fixture(scope="session")
def stack(broker_kind: str) -> Iterator[DevStack]:
    """The session's broker of that kind and a redis-server, on free loopback ports."""
    with DevStack(free_port(), free_port(), broker=broker_kind, startup_timeout=90) as running:
        yield running


@pytest.fixture
def ably() -> Iterator[AblyStub]:
    """A local Ably REST endpoint for one test (``ably.worker_env()`` points a worker at it)."""
    with AblyStub() as stub:
        yield stub


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
