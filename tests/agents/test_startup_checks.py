"""A worker started on a faust, mode or aiokafka release its mirrored internals were not
checked against says so at start-up, naming what to re-check (app/runtime/internals.py)."""

from __future__ import annotations

import logging

import pytest

from app import faust_app
from app.runtime import internals

pytestmark = pytest.mark.timeout(30)


def test_worker_start_warns_of_an_aiokafka_release_not_checked(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    checked = internals.installed_versions()
    monkeypatch.setattr(internals, "installed_versions", lambda: {**checked, "aiokafka": "9.9.9"})
    receivers = faust_app.app.on_worker_init.iter_receivers(faust_app.app)
    assert faust_app._check_internals in list(receivers)  # runs at every worker's start
    with caplog.at_level(logging.WARNING):
        faust_app._check_internals(faust_app.app, signal=None)
    warnings = [r.getMessage() for r in caplog.records if "unchecked release" in r.getMessage()]
    assert warnings and all("aiokafka" in w and "9.9.9" in w for w in warnings)
    assert any("app/runtime/transport.py" in w for w in warnings)


def test_worker_start_is_quiet_on_the_checked_releases(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        faust_app._check_internals(faust_app.app, signal=None)
    assert not [r for r in caplog.records if "unchecked release" in r.getMessage()]
