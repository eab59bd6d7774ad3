"""The bounded shutdown's watchdog (app/runtime/shutdown.py), in child processes: it ends a
process that is still there when the grace runs out, and never one that exits in time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from app.runtime.shutdown import EXIT_GRACE_EXPIRED, ShutdownWatchdog

ROOT = Path(__file__).resolve().parents[2]


def run_child(body: str, timeout: float = 30.0) -> tuple[int, float, str]:
    """Run ``body`` after importing the watchdog: its exit status, seconds taken, stderr."""
    script = "import logging, time\nfrom app.runtime.shutdown import ShutdownWatchdog\n" \
             "logging.basicConfig()\n" + textwrap.dedent(body)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    return done.returncode, time.monotonic() - started, done.stderr


@pytest.mark.timeout(60)
def test_a_process_still_stopping_after_its_grace_exits_with_status_75() -> None:
    status, took, stderr = run_child("""
        ShutdownWatchdog(0.5).arm()
        time.sleep(20)  # a shutdown waiting on a broker that is gone
    """)
    assert status == EXIT_GRACE_EXPIRED == 75
    assert took < 15
    assert "did not finish stopping within SHUTDOWN_GRACE_S=0.5 s" in stderr


@pytest.mark.timeout(60)
def test_a_process_that_stops_in_time_exits_as_it_would() -> None:
    status, took, stderr = run_child("""
        ShutdownWatchdog(30).arm()
        raise SystemExit(0)
    """)
    assert (status, stderr) == (0, "")
    assert took < 15  # not held by the watchdog's thread


@pytest.mark.timeout(60)
def test_a_grace_of_zero_never_ends_the_process() -> None:
    status, _, _ = run_child("""
        dog = ShutdownWatchdog(0)
        dog.arm()
        assert not dog.armed
        time.sleep(1)
        raise SystemExit(3)
    """)
    assert status == 3


def test_arming_twice_keeps_the_first_countdown() -> None:
    dog = ShutdownWatchdog(3600)
    dog.arm()
    first = dog._timer
    dog.arm()
    assert dog._timer is first
    dog.cancel()
