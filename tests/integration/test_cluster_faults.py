"""The cluster fault run's machinery, quickly, on real parts (``make reliability CLUSTER=3``
takes ten minutes and is not part of the suite): three KRaft nodes listening on the host end
of a network namespace's veth, an idempotent ``acks=all`` producer through a SIGKILL and
restart of the node leading the most partitions and of the active controller, every record
read back once; then a blackhole route inside the namespace cuts it off the brokers and,
separately, off redis alone, and healing restores both. Needs root (``ip netns``)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.cluster_stack import (
    ClusterStack,
    active_controller,
    describe_partitions,
    leader_counts,
    under_replicated,
)
from bench.netns import NetNamespace
from tests.integration.harness import wait_for

pytestmark = pytest.mark.integration

RECORDS = 600


@pytest.fixture(scope="module")
def stack() -> Iterator[ClusterStack]:
    with NetNamespace() as netns, ClusterStack(netns, nodes=3) as cluster:
        yield cluster


def reachable_from_namespace(netns: NetNamespace, host: str, port: int) -> bool:
    """Whether a TCP connection from inside the namespace to ``host:port`` opens."""
    probe = (f"import socket\ntry:\n socket.create_connection(({host!r}, {port}), timeout=2)"
             f"\nexcept OSError:\n raise SystemExit(1)")
    return subprocess.run(netns.wrap([sys.executable, "-c", probe]), capture_output=True,
                          timeout=30).returncode == 0


async def produce_through_faults(stack: ClusterStack, topic: str) -> Counter[str]:
    """Produce RECORDS values while the partition leader and the controller are SIGKILLed
    and restarted; returns how often each value was read back."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 6, 3, topic_configs={
            "min.insync.replicas": "2"})])
    finally:
        await admin.close()
    cluster = stack.cluster
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all",
                                enable_idempotence=True, request_timeout_ms=60_000)
    await producer.start()
    try:
        sent = []
        for number in range(RECORDS):
            if number == RECORDS // 3:
                parts = await describe_partitions(stack.bootstrap, [topic])
                assert len(parts) == 6 and all(len(p.replicas) == 3 for p in parts)
                leader = leader_counts(parts).most_common(1)[0][0]
                await asyncio.to_thread(cluster.signal_node, leader, signal.SIGKILL)
                await asyncio.to_thread(cluster.restart_node, leader)
            if number == 2 * RECORDS // 3:
                controller = await asyncio.to_thread(active_controller, stack.bootstrap)
                assert controller in (1, 2, 3)
                await asyncio.to_thread(cluster.signal_node, controller, signal.SIGKILL)
                await asyncio.to_thread(cluster.restart_node, controller)
            sent.append(await producer.send(topic, f"v{number}".encode(), key=b"k%d" % number))
            await asyncio.sleep(0.005)
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=stack.bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    seen: Counter[str] = Counter()
    try:
        deadline = time.monotonic() + 60
        while sum(seen.values()) < RECORDS and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                seen.update(r.value.decode() for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return seen


@pytest.mark.timeout(170)
def test_leader_and_controller_kills_then_network_cuts(stack: ClusterStack) -> None:
    seen = asyncio.run(produce_through_faults(stack, f"faults-{uuid.uuid4().hex[:8]}"))
    assert sorted(seen) == sorted(f"v{n}" for n in range(RECORDS))
    assert set(seen.values()) == {1}, "a record was written twice"
    assert not stack.cluster.dead()

    def whole() -> bool:
        return not under_replicated(asyncio.run(describe_partitions(stack.bootstrap)))
    wait_for("no under-replicated partition after the restarts", whole, 60, interval=1.0)

    netns = stack.netns
    broker, redis = (netns.host_ip, stack.broker_port), (netns.redis_ip, stack.redis_port)
    assert reachable_from_namespace(netns, *broker) and reachable_from_namespace(netns, *redis)
    netns.cut(netns.host_ip)
    assert not reachable_from_namespace(netns, *broker)
    assert reachable_from_namespace(netns, *redis), "the broker cut must leave redis alone"
    netns.heal(netns.host_ip)
    netns.cut(netns.redis_ip)
    assert not reachable_from_namespace(netns, *redis)
    assert reachable_from_namespace(netns, *broker), "the redis cut must leave the brokers"
    netns.heal(netns.redis_ip)
    assert reachable_from_namespace(netns, *broker) and reachable_from_namespace(netns, *redis)
