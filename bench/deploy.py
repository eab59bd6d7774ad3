"""Processes under test: storestream deployments and peer processes, on the bench's stack.

A :class:`StoreDeployment` is what ``tests/integration/harness.py`` calls a deployment (its
own ``APP_ID``, ``TOPIC_PREFIX`` and topics created with explicit settings); its workers are
real ``faust -A app worker`` processes with their own web port. :class:`Proc` runs any
process in its own session, logging to a file, and stops it by its own process group only.

The broker a bench runs on is chosen the same way everywhere: :func:`add_broker_argument`
(``--broker kafka|tansu``, each bench with its own default) and :func:`bench_stack`, which
builds the :class:`~app.dev.devstack.DevStack` of that kind on free loopback ports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from app.dev.devstack import BROKERS, DevStack, ensure_topics, free_port
from bench.procstat import RESULT_PREFIX, cpu_seconds, memory_mb

ROOT = Path(__file__).resolve().parents[1]


from tests.integration.harness import wait_for  # noqa: E402  the one polling loop

#: Seconds a bench waits for its broker to answer: a JVM starting next to busy workers on
#: two shared cores takes far longer than the Tansu binary.
STARTUP_TIMEOUT_S = {"kafka": 90.0, "tansu": 30.0}


def add_broker_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--broker kafka|tansu``: the broker the bench starts (``default`` when not given)."""
    parser.add_argument("--broker", choices=sorted(BROKERS), default=default,
                        help=f"broker to run on: Apache Kafka (one KRaft node) or the embedded "
                             f"Tansu (default {default})")


def bench_stack(broker: str, **kwargs: Any) -> DevStack:
    """A (not yet started) broker of kind ``broker`` plus redis, on free loopback ports."""
    kwargs.setdefault("startup_timeout", STARTUP_TIMEOUT_S[broker])
    return DevStack(free_port(), free_port(), broker=broker, **kwargs)


class AttachedStack(DevStack):
    """A broker and redis already running (``bench.run --attach``, e.g. the test session's):
    a :class:`DevStack` on their ports that neither starts nor stops them."""

    def __enter__(self) -> AttachedStack:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None


class BenchError(RuntimeError):
    """A benchmark step failed (the message says which and why)."""


def wait_until(what: str, check: Callable[[], Any], timeout: float,
               interval: float = 0.2) -> Any:
    """Poll ``check()`` until truthy; raise :class:`BenchError` after ``timeout`` seconds."""
    try:
        return wait_for(what, check, timeout, interval)
    except AssertionError as exc:
        raise BenchError(str(exc)) from None


class Proc:
    """A subprocess in its own session with stdout+stderr to ``log_path``."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str],
                 log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115  closed in stop()
        self.started = time.time()
        self.process = subprocess.Popen(argv, cwd=ROOT, env=dict(env), stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        """True while the process runs. ``poll`` reports a child another waiter reaped as
        exited with 0 (ECHILD); the kernel's process table is asked then too."""
        if self.process.poll() is None:
            return True
        try:
            with open(f"/proc/{self.process.pid}/stat", encoding="ascii") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")

    def cpu_seconds(self) -> float:
        """CPU seconds used so far (0 once it has exited)."""
        try:
            return cpu_seconds(self.pid)
        except OSError:
            return 0.0

    def memory_mb(self) -> tuple[float, float]:
        """``(RSS, peak RSS)`` in MB (zeros once it has exited)."""
        try:
            return memory_mb(self.pid)
        except OSError:
            return 0.0, 0.0

    def log_text(self) -> str:
        """Everything logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 25) -> str:
        """The end of the log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def result(self) -> dict[str, Any] | None:
        """The process's ``BENCH_RESULT`` payload once printed."""
        for line in self.log_text().splitlines():
            at = line.find(RESULT_PREFIX)  # Faust logs a worker's stdout with a prefix
            if at >= 0:
                payload: dict[str, Any] = orjson.loads(line[at + len(RESULT_PREFIX):].strip())
                return payload
        return None

    def wait_result(self, timeout: float) -> dict[str, Any]:
        """Wait for the ``BENCH_RESULT`` line; fail if the process dies or time runs out."""
        def check() -> dict[str, Any] | None:
            found = self.result()
            if found is None and not self.alive():
                raise BenchError(f"{self.name} exited ({self.process.returncode}) without a "
                                 f"result:\n{self.log_tail()}")
            return found
        try:
            found: dict[str, Any] = wait_until(f"{self.name}'s result", check, timeout, 0.1)
        except BenchError as exc:
            raise BenchError(f"{exc}\n{self.log_tail()}") from None
        return found

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> float:
        """Signal our process group, wait (SIGKILL after ``timeout``); returns seconds taken."""
        started = time.monotonic()
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()
        return time.monotonic() - started


class StoreDeployment:
    """An isolated storestream deployment (own app id, topic prefix, topics, settings)."""

    def __init__(self, stack: DevStack, tmp: Path, label: str, *, partitions: int,
                 extra_env: Mapping[str, str] | None = None) -> None:
        tag = f"{label}-{uuid.uuid4().hex[:6]}"
        self.stack = stack
        self.tmp = tmp
        self.prefix = f"bench-{tag}."
        self.env = {
            **stack.worker_env,  # what this broker needs beyond faust.ini (Tansu: 10-ms wait)
            **os.environ,
            "BROKER_URL": stack.broker_url, "REDIS_URL": stack.redis_url,
            "APP_ID": f"bench-{tag}", "TOPIC_PREFIX": self.prefix,
            "TOPIC_PARTITIONS": str(partitions), "APP_STORE": "memory://",
            "STORESTREAM_CONFIG": str(ROOT / "faust.ini"), "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.env.pop("WEB_TOKEN", None)
        self.env.pop("PYTEST_CURRENT_TEST", None)
        self.datadir = tmp / f"data-{tag}"
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.env["APP_DATADIR"] = str(self.datadir)
        self.workers: list[StoreWorker] = []

    def topic(self, base: str) -> str:
        """A topic's full name in this deployment."""
        return f"{self.prefix}{base}"

    def create_topics(self) -> None:
        """Every storestream topic, with explicit settings (as the harness does)."""
        from app.broker.topology import topic_specs
        from core.config import load_settings

        asyncio.run(ensure_topics(self.stack.bootstrap, topic_specs(load_settings(self.env)),
                                  timeout=30.0))

    def start_worker(self, name: str) -> StoreWorker:
        """Start one ``faust -A app worker`` (own web port, shared data dir)."""
        worker = StoreWorker(self, name)
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        """Stop every worker still running."""
        for worker in self.workers:
            worker.stop()


class StoreWorker(Proc):
    """``faust -A app worker`` with its own web port, ``/health`` and ``/metrics``."""

    def __init__(self, deployment: StoreDeployment, name: str) -> None:
        self.deployment = deployment
        self.port = free_port()
        env = {**deployment.env, "WEB_PORT": str(self.port)}
        super().__init__(f"storestream worker {name}",
                         [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"],
                         env, deployment.tmp / f"{deployment.prefix}{name}.log")

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET a path on this worker: ``(status, body)``; status 0 when unreachable."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return 0, b""

    def healthy(self) -> bool:
        """``/health`` answers 200 (raises if the worker died)."""
        if not self.alive():
            raise BenchError(f"{self.name} exited ({self.process.returncode}):\n"
                             f"{self.log_tail()}")
        return self.get("/health", timeout=2.0)[0] == 200

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Wait for ``/health`` 200; returns seconds since the process was started."""
        wait_until(f"{self.name} /health 200", self.healthy, timeout, 0.1)
        return time.time() - self.started

    def metrics(self) -> dict[str, float]:
        """Every Prometheus sample, keyed by its full series text (name plus labels)."""
        status, body = self.get("/metrics")
        if status != 200:
            return {}
        out: dict[str, float] = {}
        for line in body.decode(errors="replace").splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[series] = float(value)
        return out

    def events(self, base_topic: str) -> dict[str, float]:
        """``storestream_events_total`` of one input topic by outcome (empty if unreachable)."""
        topic = f'topic="{self.deployment.topic(base_topic)}"'
        out: dict[str, float] = {}
        for series, value in self.metrics().items():
            if series.startswith("storestream_events_total{") and topic in series:
                outcome = series.split('outcome="', 1)[1].split('"', 1)[0]
                out[outcome] = out.get(outcome, 0.0) + value
        return out

    def metric(self, name: str, **labels: str) -> float:
        """Sum of one metric's series matching ``labels``."""
        total = 0.0
        for series, value in self.metrics().items():
            if (series == name or series.startswith(name + "{")) and all(
                    f'{k}="{v}"' in series for k, v in labels.items()):
                total += value
        return total
