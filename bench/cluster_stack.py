"""A three-node Apache Kafka cluster and redis that a network namespace can reach.

:class:`ClusterStack` is a :class:`~app.dev.devstack.DevStack` whose KRaft nodes listen
and advertise on the host end of a :class:`~bench.netns.NetNamespace`'s veth and whose
redis has an address of its own there, so a worker inside the namespace reaches both and
a blackhole route cuts one of them. :func:`describe_partitions`, :func:`under_replicated`
and :func:`leader_counts` read the brokers' metadata; :func:`active_controller` asks the
metadata quorum (a small Java program on Kafka's own jars, ``bench/faults/QuorumLeader.java``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from app.dev.devstack import DevStack, DevStackError, _redis_bin
from app.dev.kafka_broker import KafkaCluster, KafkaSetupError, free_ports, provision
from bench.netns import NetNamespace

QUORUM_LEADER = Path(__file__).resolve().parent / "faults" / "QuorumLeader.java"


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class ClusterStack(DevStack):
    """``nodes`` KRaft nodes on ``netns.host_ip`` and redis on ``netns.redis_ip``."""

    def __init__(self, netns: NetNamespace, nodes: int = 3, startup_timeout: float = 180.0,
                 kafka_config: dict[str, str] | None = None) -> None:
        self.netns = netns
        broker_port = free_ports(nodes, netns.host_ip)
        redis_port = free_ports(1, netns.redis_ip)
        super().__init__(broker_port, redis_port, broker="kafka", kafka_nodes=nodes,
                         startup_timeout=startup_timeout, stop_timeout=20.0,
                         kafka_config=kafka_config)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.netns.host_ip}:{self.broker_port + i}"
                        for i in range(self.kafka_nodes))

    @property
    def redis_url(self) -> str:
        return f"redis://{self.netns.redis_ip}:{self.redis_port}/{self.redis_db}"

    @property
    def cluster(self) -> KafkaCluster:
        if self.kafka is None:
            raise DevStackError("the cluster is not running")
        return self.kafka

    def start(self) -> ClusterStack:
        """Start the nodes, then redis; everything started is stopped again on failure."""
        self.run_dir = Path(tempfile.mkdtemp(prefix="storestream-cluster-"))
        try:
            self.kafka = KafkaCluster(port=self.broker_port, run_dir=self.run_dir / "kafka",
                                      nodes=self.kafka_nodes, config=self.kafka_config,
                                      startup_timeout=self.startup_timeout,
                                      host=self.netns.host_ip)
            try:
                self.kafka.start(echo=print)
            except KafkaSetupError as exc:
                raise DevStackError(str(exc)) from None
            self._spawn("redis", [_redis_bin(), "--port", str(self.redis_port), "--bind",
                                  self.netns.redis_ip, "--save", "", "--appendonly", "no",
                                  "--daemonize", "no", "--dir", str(self.run_dir)])
            deadline = time.monotonic() + 30
            while not _tcp_open(self.netns.redis_ip, self.redis_port):
                if time.monotonic() > deadline or self._procs["redis"].poll() is not None:
                    raise DevStackError(f"redis did not start on {self.netns.redis_ip}")
                time.sleep(0.1)
        except BaseException:
            self.keep_run_dir = True
            self.stop()
            raise
        return self

    def __enter__(self) -> ClusterStack:
        return self.start()


# ------------------------------------------------------------------ cluster metadata


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition as the brokers' metadata describes it."""

    topic: str
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


async def describe_partitions(bootstrap: str, topics: list[str] | None = None,
                              timeout_s: float = 10.0) -> list[PartitionInfo]:
    """Every partition of ``topics`` (all topics when ``None``) with leader and ISR."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap,
                                request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        described = await asyncio.wait_for(admin.describe_topics(topics), timeout_s)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    out = []
    for topic in described:
        for part in topic["partitions"]:
            replicas = part.get("replicas", part.get("replica_nodes", []))
            isr = part.get("isr", part.get("isr_nodes", []))
            out.append(PartitionInfo(topic["topic"], part["partition"], part["leader"],
                                     tuple(replicas), tuple(isr)))
    return out


def under_replicated(partitions: list[PartitionInfo]) -> list[PartitionInfo]:
    """Partitions whose in-sync replicas are fewer than their replicas."""
    return [p for p in partitions if len(p.isr) < len(p.replicas)]


def leader_counts(partitions: list[PartitionInfo]) -> Counter[int]:
    """How many of ``partitions`` each node leads."""
    return Counter(p.leader for p in partitions if p.leader >= 0)


def active_controller(bootstrap: str, timeout_s: float = 90.0) -> int | None:
    """The node id leading the KRaft metadata quorum (``None`` when it cannot be told)."""
    try:
        lib = provision()
        result = subprocess.run(
            [shutil.which("java") or "java", "-Xmx128m", "-XX:TieredStopAtLevel=1",
             "-Dlog4j2.level=OFF", "-cp", f"{lib}/*", str(QUORUM_LEADER), bootstrap],
            capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired, KafkaSetupError):
        return None
    match = re.search(r"leader=(\d+)", result.stdout)
    return int(match.group(1)) if match else None
