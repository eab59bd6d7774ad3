"""``DEVSTACK_BROKER=kafka``: the devstack starts Apache Kafka (KRaft) and leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from app.dev.devstack import DevStack, TopicSpec, ensure_topics, free_port, free_ports, serve

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def processes_under(folder: str) -> list[int]:
    """Processes running in ``folder`` (the stack's run folder) or below it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == folder or cwd.startswith(folder + "/"):
            found.append(int(entry.name))
    return found


async def cluster_brokers(bootstrap: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        meta = await admin.describe_cluster()
        return sorted(int(b["node_id"]) for b in meta["brokers"])
    finally:
        await admin.close()


async def replicas_of(bootstrap: str, topic: str) -> list[int]:
    """Replica count of each partition, once the new topic's metadata reached the brokers."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + 15
        while True:
            [described] = await admin.describe_topics([topic])
            if described["partitions"] or time.monotonic() > deadline:
                return sorted(len(p["replicas"]) for p in described["partitions"])
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


def run_devstack(env: dict[str, str], timeout: float) -> tuple[subprocess.Popen[str], list[str]]:
    """``python -m app.dev.devstack`` until it prints its hint line; returns it and its lines."""
    proc = subprocess.Popen([sys.executable, "-m", "app.dev.devstack"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while not any(line.startswith("hint:") for line in seen):
        if proc.poll() is not None:
            pytest.fail(f"devstack exited {proc.returncode}: {seen}")
        try:  # a short wait: a devstack that exited is told at once
            seen.append(lines.get(timeout=0.5))
        except queue.Empty:
            if time.monotonic() >= deadline:
                proc.kill()
                pytest.fail(f"devstack printed no hint within {timeout:.0f} s; got {seen}")
    return proc, seen


@pytest.mark.parametrize("nodes", [1, 3])
def test_kafka_devstack_serves_on_broker_url_and_sigterm_leaves_nothing(nodes: int) -> None:
    base = free_ports(nodes)
    env = dict(os.environ, BROKER_URL=f"kafka://localhost:{base}",
               REDIS_URL=f"redis://localhost:{free_port()}/0", DEVSTACK_BROKER="kafka",
               DEVSTACK_KAFKA_NODES=str(nodes))
    started = time.monotonic()
    # bounds for a shared host (make test runs other brokers' tests beside this one)
    proc, lines = run_devstack(env, timeout=60 + 40 * nodes)
    startup_s = time.monotonic() - started
    try:
        bootstrap = ",".join(f"127.0.0.1:{base + i}" for i in range(nodes))
        broker_line = next(line for line in lines if line.startswith("devstack broker:"))
        assert f"kafka://{bootstrap}" in broker_line and "Apache Kafka 4.4.0" in broker_line
        assert asyncio.run(cluster_brokers(bootstrap)) == list(range(1, nodes + 1))
        spec = TopicSpec("devstack-kafka-replicated", 2, replication=nodes)
        assert asyncio.run(ensure_topics(bootstrap, [spec])) == [spec.name]
        assert asyncio.run(replicas_of(bootstrap, spec.name)) == [nodes, nodes]
        hint = next(line for line in lines if line.startswith("hint:"))
        run_dir = hint.split("logs in ")[1].split(";")[0]
        children = processes_under(run_dir)
        assert len(children) >= nodes + 1  # every Kafka node and redis-server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0
    assert all(pid_gone(pid) for pid in children)
    # One node (jars cached, JVM warm-up included) is up in ~5 s on a quiet host, three in
    # ~10 s; three JVMs starting beside other tests' brokers took over 60 s.
    assert startup_s < 45 * nodes, f"start-up took {startup_s:.1f} s"


def test_devstack_without_java_says_what_to_install(tmp_path: Path) -> None:
    out: list[str] = []
    err: list[str] = []
    path = os.environ["PATH"]
    os.environ["PATH"] = str(tmp_path)  # no java, no mvn
    try:
        code = serve(f"kafka://localhost:{free_port()}", f"redis://localhost:{free_port()}/0",
                     echo=out.append, echo_err=err.append, broker="kafka")
    finally:
        os.environ["PATH"] = path
    assert code == 2
    assert len(err) == 1 and "\n" not in err[0]
    assert "Java" in err[0] and "apt-get install openjdk-17-jdk-headless maven" in err[0]


def test_tansu_runs_one_node_only() -> None:
    with pytest.raises(Exception, match="DEVSTACK_BROKER=kafka"):
        DevStack(free_port(), free_port(), broker="tansu", kafka_nodes=3)
