"""Test harness: real workers as subprocesses against the session's embedded broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.broker.topology import topic_specs
from app.dev.devstack import DevStack, ensure_topics, free_port
from app.dev.producer import produce
from core.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """Poll until ``check()`` returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


#: The processing paths a test can run on: ``FAST_LANE`` values, and their test ids.
PATHS = ["on", "off"]
PATH_IDS = ["fast-lane", "agent-path"]


class Deployment:
    """One isolated storestream deployment: its own app id, topic prefix and settings."""

    def __init__(self, stack: DevStack, tmp: Path, *, partitions: int = 4,
                 token: str | None = None, extra_env: dict[str, str] | None = None) -> None:
        tag = uuid.uuid4().hex[:8]
        self.stack = stack
        self.tmp = tmp
        self.env = {
            **os.environ,
            "BROKER_URL": stack.broker_url,
            "REDIS_URL": stack.redis_url,
            "APP_ID": f"it-{tag}",
            "TOPIC_PREFIX": f"it-{tag}.",
            "TOPIC_PARTITIONS": str(partitions),
            "STORESTREAM_CONFIG": str(ROOT / "faust.ini"),
            "PYTHONUNBUFFERED": "1",
            **stack.worker_env,
            **(extra_env or {}),
        }
        if token:
            self.env["WEB_TOKEN"] = token
        self.env.pop("PYTEST_CURRENT_TEST", None)
        self.settings: Settings = load_settings(self.env)
        self.token = token
        self.workers: list[Worker] = []

    def topic(self, base: str) -> str:
        """A topic's full name in this deployment."""
        return self.settings.topics.name(base)

    def create_topics(self) -> None:
        """Every topic, with explicit settings, before anything is produced."""
        asyncio.run(ensure_topics(self.stack.bootstrap, topic_specs(self.settings)))

    def produce(self, records: Iterable[tuple[str, str | bytes | None, Any]]) -> int:
        """Produce ``(base topic, key, value)`` records in order; returns how many."""
        return len(self.produce_placed(records))

    def produce_placed(
        self, records: Iterable[tuple[str, str | bytes | None, Any]]
    ) -> list[tuple[str, int, int]]:
        """Produce records in order; returns each one's ``(topic, partition, offset)``."""
        prefixed = [(self.topic(topic), key, value) for topic, key, value in records]
        return asyncio.run(produce(self.stack.broker_url, prefixed))

    def start_worker(self, name: str) -> Worker:
        """Start one more worker (own web port and data dir)."""
        worker = Worker(self, name)
        self.workers.append(worker)
        return worker

    def start_two_workers(self) -> tuple[Worker, Worker]:
        """Workers ``w1`` and ``w2``, returned once both are healthy and own partitions."""
        first = self.start_worker("w1")
        first.wait_ready()
        second = self.start_worker("w2")
        second.wait_ready()

        def balanced() -> bool:
            status, hosts = first.get("/router/")
            return status == 200 and len(hosts) == 2 and first.get("/health")[0] == 200 \
                and second.get("/health")[0] == 200

        wait_for("both workers to own partitions", balanced, 90)
        return first, second

    def stop(self) -> None:
        """Stop every worker of this deployment."""
        for worker in self.workers:
            worker.stop()

    def committed(self, base: str) -> int:
        """Source offsets the deployment's consumer group has committed on a topic (all
        partitions together)."""
        return asyncio.run(committed_total(self.stack.bootstrap, self.settings.app_id,
                                           self.topic(base), self.settings.topic_partitions))

    def wait_committed(self, base: str, expected: int, timeout: float = 60.0) -> None:
        """Poll until the consumer group has committed exactly ``expected`` source offsets on
        a topic (all partitions together); Faust commits every few seconds. Fails at once if
        the group commits more than that."""
        def reached() -> list[int]:
            committed = self.committed(base)
            assert committed <= expected, f"{committed} offsets committed on {base}, " \
                f"more than the {expected} records it has"
            return [committed] if committed == expected else []
        wait_for(f"{expected} offsets committed on {base}", reached, timeout, interval=0.5)

    def read_topic(self, base: str, expect: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Read a topic from the start until ``expect`` records arrived (or ``timeout``)."""
        return asyncio.run(read_all(self.stack.bootstrap, self.topic(base), expect, timeout))


@contextmanager
def deployed(stack: DevStack, tmp: Path, **options: Any) -> Iterator[Deployment]:
    """A :class:`Deployment` with its topics created, stopped (workers too) on exit."""
    deployment = Deployment(stack, tmp, **options)
    deployment.create_topics()
    try:
        yield deployment
    finally:
        deployment.stop()


class Worker:
    """``faust -A app worker`` in a subprocess with its own web port."""

    def __init__(self, deployment: Deployment, name: str) -> None:
        self.deployment = deployment
        self.name = name
        self.port = free_port()
        datadir = deployment.tmp / f"data-{name}"
        datadir.mkdir(parents=True, exist_ok=True)
        self.log_path = deployment.tmp / f"{name}.log"
        env = {**deployment.env, "WEB_PORT": str(self.port), "APP_DATADIR": str(datadir)}
        self._log = open(self.log_path, "wb")  # noqa: SIM115  closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, token: str | None = "default",
            timeout: float = 10.0) -> tuple[int, Any]:
        """GET a path; JSON bodies are decoded. ``token='default'`` uses the deployment's."""
        request = urllib.request.Request(self.url + path)
        use = self.deployment.token if token == "default" else token
        if use:
            request.add_header("Authorization", f"Bearer {use}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, _body(response.read(), response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, _body(exc.read(), exc.headers)
        except (urllib.error.URLError, OSError):
            return 0, None

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until ``/health`` answers 200 (the worker recovered and is processing)."""
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited: {self.log_tail()}")
            return self.get("/health")[0] == 200
        try:
            wait_for(f"worker {self.name} to be ready", ready, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- log tail ---\n{self.log_tail()}") from None

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus series matching ``labels``."""
        status, body = self.get("/metrics")
        if status != 200:
            return -1.0
        total = 0.0
        for line in str(body).splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_exit(self, timeout: float = 60.0) -> tuple[int, float, str]:
        """Wait for the process to end on its own: its exit code, seconds it took, its log."""
        started = time.monotonic()
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - started, self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        """The end of the worker's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Stop the worker's process group (SIGKILL if it does not exit in time)."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
            except ProcessLookupError:
                pass
        self._log.close()


def _body(raw: bytes, headers: Any) -> Any:
    if "json" in (headers.get("Content-Type") or ""):
        return orjson.loads(raw)
    return raw.decode("utf-8", errors="replace")


async def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """Offsets ``group`` has committed on ``topic``, summed over its partitions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        offsets = [await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)]
        return sum(offset or 0 for offset in offsets)
    finally:
        await consumer.stop()


async def read_all(bootstrap: str, topic: str, expect: int,
                   timeout: float) -> list[dict[str, Any]]:
    """Every record of ``topic`` (all partitions, from the start) as decoded JSON objects."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        deadline = time.monotonic() + timeout
        while not partitions and time.monotonic() < deadline:
            await consumer._client.force_metadata_update()  # topic created by the worker
            partitions = consumer.partitions_for_topic(topic) or set()
            await asyncio.sleep(0.2)
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        out: list[dict[str, Any]] = []
        while len(out) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    value = orjson.loads(record.value) if record.value else {}
                    value["_key"] = record.key.decode(errors="replace") if record.key else None
                    value["_partition"] = record.partition
                    out.append(value)
        if len(out) >= expect:  # linger briefly: more than expected is a failure too
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(orjson.loads(r.value) for r in records)
        return out
    finally:
        await consumer.stop()
