"""Every test runs under a timeout (pytest-timeout), checked at collection by tests/conftest.py."""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import timeout_of, unbounded

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_gives_every_test_a_timeout() -> None:
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    assert options["ini_options"]["timeout"] == 480


def test_this_test_runs_under_a_timeout(request: pytest.FixtureRequest) -> None:
    assert request.config.pluginmanager.hasplugin("timeout")
    assert (timeout_of(request.node) or 0) > 0


def stand_in(config: Any, marker: pytest.Mark | None = None, name: str = "t") -> Any:
    """An item as pytest-timeout reads it: a closest ``timeout`` marker and the config."""
    return SimpleNamespace(nodeid=name, config=config,
                           get_closest_marker=lambda *_, **__: marker)


def test_collection_refuses_a_test_whose_timeout_is_removed(
        request: pytest.FixtureRequest) -> None:
    config = request.config
    assert unbounded([stand_in(config, name="default")]) == []
    assert unbounded([stand_in(config, pytest.mark.timeout(30).mark, "thirty")]) == []
    assert unbounded([stand_in(config, pytest.mark.timeout(0).mark, "none")]) == ["none"]
    no_ini = SimpleNamespace(**{k: v for k, v in vars(config).items() if k.startswith("_env")})
    no_ini._env_timeout = None
    assert unbounded([stand_in(no_ini, name="unset")]) == ["unset"]
