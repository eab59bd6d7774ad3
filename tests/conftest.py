"""Test-wide settings: hypothesis without wall-clock deadlines (CI machines are shared), and
a timeout on every test (pytest-timeout; ``timeout`` in pyproject.toml)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import pytest_timeout  # type: ignore[import-untyped]
from hypothesis import HealthCheck, settings

settings.register_profile(
    "storestream", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("storestream")


def timeout_of(item: pytest.Item) -> float | None:
    """The timeout pytest-timeout will apply to ``item`` (its marker, else the option or the
    ini value); ``None`` or 0 when it has none."""
    timeout: float | None = pytest_timeout._get_item_settings(item).timeout
    return timeout


def unbounded(items: Sequence[pytest.Item]) -> list[str]:
    """The tests that would run without a timeout."""
    return [item.nodeid for item in items if not (timeout_of(item) or 0) > 0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A hang must fail its test (with its stack), not the CI job: refuse to run a collected
    test without a timeout (``timeout = 0``, ``--timeout=0``, ``-p no:timeout``...)."""
    if not config.pluginmanager.hasplugin("timeout"):
        raise pytest.UsageError("pytest-timeout is not active: every test needs a timeout")
    missing = unbounded(items)
    if missing:
        raise pytest.UsageError(f"{len(missing)} tests have no timeout: {missing[:5]}")
