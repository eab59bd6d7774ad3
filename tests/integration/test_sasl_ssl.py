"""SASL_SSL for real: a worker logs in with SCRAM-SHA-512 over TLS to Apache Kafka.

The module starts its own Kafka node with a SASL_SSL listener beside PLAINTEXT: a CA and a
broker certificate for 127.0.0.1 made with ``openssl`` (:mod:`tests.integration.tls`), one
SCRAM user created when the storage is formatted. The worker knows only the SASL_SSL
address; the test itself creates topics and produces over PLAINTEXT. Kafka answers a client's
metadata request with the addresses of the listener it came in on, so every client of the
worker (Faust's consumer and producer, the replicas, the recovery probe, the topic check)
works only if it logs in too.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.dev.devstack import DevStack, free_port
from app.dev.kafka_broker import SaslSslListener, ScramUser
from core import sample
from tests.integration import tls
from tests.integration.harness import ROOT, Deployment, Worker, deployed, wait_for

pytestmark = pytest.mark.integration

USER = "storestream"
PASSWORD = "it-scram-secret-7f3a"
MECHANISM = "SCRAM-SHA-512"
#: A worker refused by the broker must be gone within this (s): no endless retries.
EXIT_WITHIN_S = 30.0


class Certificates:
    """The broker's CA and certificate, and a CA that signed nothing the broker has."""

    def __init__(self, folder: Path) -> None:
        self.ca = tls.make_ca(folder / "ca", "storestream test CA")
        self.broker = tls.make_server_cert(folder / "broker", self.ca)
        self.other_ca = tls.make_ca(folder / "other", "unrelated CA")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def secured_stack(certificates: Certificates) -> Iterator[DevStack]:
    """Kafka with PLAINTEXT and SASL_SSL listeners, and a redis-server."""
    listener = SaslSslListener(free_port(), certificates.broker.keystore_pem,
                               users=(ScramUser(USER, PASSWORD, MECHANISM),),
                               mechanism=MECHANISM)
    with DevStack(free_port(), free_port(), broker="kafka", sasl_ssl=listener,
                  startup_timeout=90) as running:
        assert running.sasl_bootstrap
        yield running


def sasl_env(stack: DevStack, cafile: Path, *, username: str = USER,
             password: str = PASSWORD) -> dict[str, str]:
    """A worker's settings for the SASL_SSL listener."""
    return {
        "BROKER_URL": f"kafka://{stack.sasl_bootstrap}",
        "KAFKA_SASL_USERNAME": username,
        "KAFKA_SASL_PASSWORD": password,
        "KAFKA_SASL_MECHANISM": MECHANISM,
        "KAFKA_SSL_CAFILE": str(cafile),
    }


def records(events: list[sample.SampleEvent]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e.topic, e.key, e.value) for e in events]


def refused(worker: Worker) -> tuple[int, list[str], str]:
    """Wait for a refused worker to exit: its exit status, its ``storestream: cannot connect``
    lines, and its whole log."""
    started = time.monotonic()
    try:
        code = worker.process.wait(timeout=EXIT_WITHIN_S)
    except Exception:
        raise AssertionError(f"worker still running after {EXIT_WITHIN_S:.0f} s:\n"
                             f"{worker.log_tail()}") from None
    finally:
        worker.stop()
    assert time.monotonic() - started < EXIT_WITHIN_S
    log = worker.log_path.read_text(errors="replace")
    lines = [line for line in log.splitlines()
             if line.startswith("storestream: cannot connect to Kafka")]
    return code, lines, log


def test_worker_processes_events_over_sasl_ssl(secured_stack: DevStack,
                                               certificates: Certificates,
                                               tmp_path: Path) -> None:
    env = sasl_env(secured_stack, certificates.ca.cert)
    with deployed(secured_stack, tmp_path, extra_env=env) as deployment:
        worker = deployment.start_worker("w1")
        worker.wait_ready(timeout=120)
        before_dog = list(sample.recipe_events(include_dog=False))
        produced = deployment.produce(records(before_dog))  # over PLAINTEXT
        wait_for("every event counted",
                 lambda: worker.metric("storestream_events_total") >= produced, 60)
        # The catalogue reaches the worker through its replica, a consumer of its own.
        wait_for("kris priced", lambda: worker.get("/customers/kris/")[1]["total"] == 74.28, 30)
        dog = [e for e in sample.recipe_events() if e.value.get("purchase_id") == "p999"]
        deployment.produce(records(dog))
        wait_for("the dog", lambda: worker.get("/customers/kris/")[1]["total"] == 324.27, 30)

        for _, user in sample.USERS:
            document = worker.get(f"/customers/{user}/")[1]
            assert document["total"] == float(sample.EXPECTED_TOTALS[user]), user
            assert document["reward_level"] == sample.EXPECTED_TIERS[user], user
        assert worker.metric("storestream_events_total", outcome="ok") == produced + 1
        assert worker.metric("storestream_dead_letters_total") == 0

        log = worker.log_path.read_text(errors="replace")
        assert f"Authenticated as {USER} via {MECHANISM}" in log
        assert "Unable connect" not in log, worker.log_tail()
        assert "cannot connect to Kafka" not in log


@pytest.mark.parametrize("username, password", [(USER, "not-the-password"),
                                                ("nobody", PASSWORD)],
                         ids=["wrong-password", "unknown-user"])
def test_refused_login_ends_the_worker_with_one_line(secured_stack: DevStack,
                                                     certificates: Certificates,
                                                     tmp_path: Path, username: str,
                                                     password: str) -> None:
    env = sasl_env(secured_stack, certificates.ca.cert, username=username, password=password)
    deployment = Deployment(secured_stack, tmp_path, extra_env=env)
    code, lines, log = refused(deployment.start_worker("w1"))
    assert code != 0
    assert lines == [
        f"storestream: cannot connect to Kafka at {secured_stack.sasl_bootstrap}: SASL "
        f"authentication failed for user {username!r} with {MECHANISM} (wrong password or "
        f"unknown user; check KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD)"
    ], log
    assert "Traceback" not in log, log


def test_unknown_ca_ends_the_worker_with_one_line(secured_stack: DevStack,
                                                  certificates: Certificates,
                                                  tmp_path: Path) -> None:
    env = sasl_env(secured_stack, certificates.other_ca.cert)
    deployment = Deployment(secured_stack, tmp_path, extra_env=env)
    code, lines, log = refused(deployment.start_worker("w1"))
    assert code != 0
    assert len(lines) == 1, log
    assert lines[0].startswith(
        f"storestream: cannot connect to Kafka at {secured_stack.sasl_bootstrap}: TLS "
        f"certificate verification failed (KAFKA_SSL_CAFILE={certificates.other_ca.cert} did "
        f"not sign the broker's certificate: "), log
    assert "Traceback" not in log, log


def test_simulate_command_produces_over_sasl_ssl(secured_stack: DevStack,
                                                 certificates: Certificates,
                                                 tmp_path: Path) -> None:
    """``faust -A app simulate`` connects as the worker does: SASL over TLS, credentials and
    CA from the same settings (it used to try the listener in plain text)."""
    env = sasl_env(secured_stack, certificates.ca.cert)
    with deployed(secured_stack, tmp_path, extra_env=env) as deployment:
        done = subprocess.run(
            [sys.executable, "-m", "faust", "-A", "app", "simulate", "--shoppers", "3",
             "--rate", "20", "--duration", "3", "--no-load-store"],
            cwd=ROOT, env=deployment.env, capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr[-3000:]
        positions = deployment.read_topic("customers.locations", expect=40, timeout=30)
        assert len(positions) >= 40  # ~60 sent in 3 s at 20/s
        assert {p["uid"] for p in positions} == {f"shopper-{n:03d}" for n in range(3)}
