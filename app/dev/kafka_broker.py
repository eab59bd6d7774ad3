"""Apache Kafka for development and tests: Maven Central's jars, KRaft nodes on loopback.

:func:`provision` fetches ``org.apache.kafka:kafka_2.13`` and its dependencies with Maven,
from the project's own ``kafka/pom.xml``, into the git-ignored ``.cache/kafka/lib``; it runs
once per checkout (later calls find the jars and return at once). :class:`KafkaCluster`
formats one storage folder per node in a temporary run folder and starts ``nodes`` combined
broker + controller processes (KRaft, a static controller quorum) on consecutive ports.

Standard library only; nothing here imports faust or aiokafka.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "KAFKA_VERSION",
    "KafkaCluster",
    "KafkaSetupError",
    "SaslSslListener",
    "ScramUser",
    "free_ports",
    "java_problem",
    "provision",
]

KAFKA_VERSION = "4.4.0"
LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
POM = ROOT / "kafka" / "pom.xml"
#: ``KAFKA_CACHE_DIR`` moves the jar cache (default ``.cache/kafka`` in the checkout).
CACHE_DIR_ENV = "KAFKA_CACHE_DIR"
_INSTALL_HINT = (
    "install a JDK 17+ and Maven (Debian: apt-get install openjdk-17-jdk-headless maven, "
    "or `make kafka`, which does it)"
)
_READY_LINE = "Kafka Server started"


class KafkaSetupError(RuntimeError):
    """Kafka could not be provisioned or started (the message says why and what to do)."""


def cache_dir() -> Path:
    """Where the jars live: ``$KAFKA_CACHE_DIR`` or ``.cache/kafka`` in the checkout."""
    return Path(os.environ.get(CACHE_DIR_ENV) or ROOT / ".cache" / "kafka")


def java_problem() -> str | None:
    """``None`` when ``java`` 17 or newer is on the PATH, else one line on what to install."""
    java = shutil.which("java")
    if java is None:
        return f"Apache Kafka needs Java, and `java` is not on the PATH: {_INSTALL_HINT}"
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`java -version` failed ({exc}): {_INSTALL_HINT}"
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0_x" style
        major = int(match.group(2))
    if major < 17:
        return (f"Apache Kafka {KAFKA_VERSION} needs Java 17 or newer, found {major}: "
                f"{_INSTALL_HINT}")
    return None


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()[:16]


def provision(echo: Callable[[str], object] | None = None) -> Path:
    """The folder of Kafka's jars, fetched by Maven first if this checkout has none yet.

    A stamp named after the pom's digest marks a complete download, so an interrupted one
    or a changed pom is fetched again. A file lock keeps parallel callers from fetching
    twice.
    """
    if (problem := java_problem()) is not None:
        raise KafkaSetupError(problem)
    cache = cache_dir()
    lib = cache / "lib"
    stamp = cache / f"complete-{_pom_digest()}"
    if stamp.exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaSetupError(f"fetching Apache Kafka's jars needs Maven (`mvn`): {_INSTALL_HINT}")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return lib
        if echo is not None:
            echo(f"fetching Apache Kafka {KAFKA_VERSION} from Maven Central into {lib} "
                 "(first run only, ~1 min)")
        shutil.rmtree(lib, ignore_errors=True)
        for old in cache.glob("complete-*"):
            old.unlink()
        result = subprocess.run(
            [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
             f"-Dlib.dir={lib}"],
            capture_output=True, text=True,
        )
        if result.returncode != 0 or not (lib / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise KafkaSetupError(
                f"Maven could not fetch Apache Kafka {KAFKA_VERSION} "
                f"(exit {result.returncode}):\n{tail}")
        stamp.touch()
    return lib


@dataclass(frozen=True)
class ScramUser:
    """A SCRAM user created when the storage is formatted."""

    name: str
    password: str
    mechanism: str = "SCRAM-SHA-512"


@dataclass(frozen=True)
class SaslSslListener:
    """A SASL_SSL listener beside PLAINTEXT: SCRAM logins over TLS.

    ``keystore_pem`` holds the broker's PKCS#8 private key (unencrypted) and its certificate
    chain, PEM-encoded, in one file; ``port`` is the first node's port, the next nodes take
    the following ones.
    """

    port: int
    keystore_pem: Path
    users: tuple[ScramUser, ...]
    mechanism: str = "SCRAM-SHA-512"


def _cluster_id() -> str:
    """A new cluster id: a UUID in URL-safe base64, as kafka-storage makes them, never
    starting with ``-`` (the storage tool's option parser takes that for an option)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


#: Where listening ports are picked: from here to the kernel's ephemeral range.
LISTEN_PORTS_FROM = 10_000


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_ports(count: int = 1, host: str = LOOPBACK) -> int:
    """A port ``p`` such that ``p .. p + count - 1`` were free on ``host`` a moment ago,
    below the kernel's ephemeral range: a port from that range (what binding port 0 gives)
    can be taken by any process's outgoing connection before the server meant for it binds
    it (measured: a Kafka node of a test cluster failed to bind its listener while the
    suite's other process was busy connecting)."""
    low = _ephemeral_ports()[0]
    top = low if low - count > LISTEN_PORTS_FROM else 65536
    picker = random.Random()
    for _ in range(500):
        base = picker.randrange(LISTEN_PORTS_FROM, top - count)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind((host, port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise OSError(f"no run of {count} free ports found on {host}")


def _port_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.25):
            return True
    except OSError:
        return False


_LOG4J2 = """\
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.controller
        level: WARN
      - name: kafka.log.LogCleaner
        level: WARN
      - name: state.change.logger
        level: WARN
"""


@dataclass
class _Node:
    node_id: int
    port: int
    controller_port: int
    sasl_port: int | None
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    #: Size of the log when the process was started: its ready line comes after it.
    log_offset: int = 0

    @property
    def properties(self) -> Path:
        return self.folder / "server.properties"

    @property
    def log(self) -> Path:
        return self.folder / "kafka.log"


@dataclass
class KafkaCluster:
    """``nodes`` KRaft nodes (broker and controller each) on ``port``, ``port + 1``, ...

    Settings are Kafka's defaults except where a development cluster on one machine needs
    otherwise: internal topics replicated ``min(3, nodes)`` times, ``min.insync.replicas``
    ``min(2, nodes)``, no automatic topic creation (storestream creates its topics, and a
    missing one must be an error, not a one-partition surprise), and no initial rebalance
    delay (a group's first join is not held back 3 s). ``config`` overrides any of them.
    """

    port: int
    run_dir: Path
    nodes: int = 1
    sasl_ssl: SaslSslListener | None = None
    heap_mb: int = 768
    startup_timeout: float = 60.0
    stop_timeout: float = 20.0
    config: Mapping[str, str] = field(default_factory=dict)
    #: The address every listener binds and advertises (an address a network namespace
    #: can reach, for the cluster fault runs; loopback otherwise).
    host: str = LOOPBACK
    _nodes: list[_Node] = field(default_factory=list, init=False)
    _lib: Path | None = field(default=None, init=False)

    # -- addresses
    @property
    def ports(self) -> list[int]:
        """Each node's PLAINTEXT port."""
        return [self.port + index for index in range(self.nodes)]

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:P1,127.0.0.1:P2,...`` (aiokafka's ``bootstrap_servers``)."""
        return ",".join(f"{self.host}:{port}" for port in self.ports)

    @property
    def sasl_bootstrap(self) -> str | None:
        """The SASL_SSL listeners' ``host:port`` list, when there are any."""
        if self.sasl_ssl is None:
            return None
        return ",".join(f"{self.host}:{self.sasl_ssl.port + i}" for i in range(self.nodes))

    @property
    def pids(self) -> dict[int, int]:
        """Each running node's process id, by node id."""
        return {n.node_id: n.process.pid for n in self._nodes
                if n.process is not None and n.process.poll() is None}

    def node_log(self, node_id: int) -> Path:
        """A node's log file."""
        return self._node(node_id).log

    # -- lifecycle
    def start(self, echo: Callable[[str], object] | None = None) -> KafkaCluster:
        """Provision the jars, format every node's storage and start them; wait until every
        node is up and has joined the cluster."""
        self._lib = provision(echo)
        for port in self.ports + ([] if self.sasl_ssl is None else
                                  [self.sasl_ssl.port + i for i in range(self.nodes)]):
            if _port_open(port, self.host):
                raise KafkaSetupError(f"port {port} on {self.host} is already in use")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "log4j2.yaml").write_text(_LOG4J2)
        self._nodes = [
            _Node(node_id=index + 1, port=port, controller_port=free_ports(1, self.host),
                  sasl_port=None if self.sasl_ssl is None else self.sasl_ssl.port + index,
                  folder=self.run_dir / f"node-{index + 1}")
            for index, port in enumerate(self.ports)
        ]
        voters = ",".join(f"{n.node_id}@{self.host}:{n.controller_port}" for n in self._nodes)
        cluster_id = _cluster_id()
        formatters = []
        for node in self._nodes:
            node.folder.mkdir(parents=True, exist_ok=True)
            node.properties.write_text(_render(self._properties(node, voters)))
            formatters.append(self._format(node, cluster_id))
        for node, formatter in zip(self._nodes, formatters, strict=True):
            if formatter.wait(timeout=120) != 0:
                raise KafkaSetupError(
                    f"formatting node {node.node_id}'s storage failed:\n{_tail(node.log)}")
        try:
            for node in self._nodes:
                self._spawn(node)
            deadline = time.monotonic() + self.startup_timeout
            for node in self._nodes:
                self._wait_started(node, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM every node (a controlled shutdown), SIGKILL what is left after the
        stop timeout; safe to call repeatedly."""
        for node in self._nodes:
            if node.process is not None and node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGCONT)
                    os.killpg(node.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for node in self._nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait()

    # -- one node (fault injection)
    def signal_node(self, node_id: int, sig: int) -> int:
        """Send ``sig`` to one node's process group (SIGKILL, SIGSTOP, SIGCONT...); returns
        its pid. A node that has exited already is left alone."""
        node = self._node(node_id)
        if node.process is None:
            raise KafkaSetupError(f"node {node_id} was never started")
        if node.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.process.pid, sig)
        if sig == signal.SIGKILL:
            node.process.wait(timeout=30)
        return node.process.pid

    def restart_node(self, node_id: int, timeout: float | None = None) -> int:
        """Start a node that was killed or stopped again on its own storage; waits until it
        is up; returns its new pid."""
        node = self._node(node_id)
        if node.process is not None and node.process.poll() is None:
            raise KafkaSetupError(f"node {node_id} is still running (pid {node.process.pid})")
        self._spawn(node)
        self._wait_started(node, time.monotonic() + (timeout or self.startup_timeout))
        assert node.process is not None
        return node.process.pid

    def dead(self) -> dict[int, int]:
        """Nodes that exited (not stopped by :meth:`stop`), with their exit codes."""
        return {n.node_id: rc for n in self._nodes
                if n.process is not None and (rc := n.process.poll()) is not None}

    # -- internals
    def _node(self, node_id: int) -> _Node:
        for node in self._nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(f"no node {node_id}")

    def _properties(self, node: _Node, voters: str) -> dict[str, str]:
        replicas = str(min(3, self.nodes))
        in_sync = str(min(2, self.nodes))
        listeners = {"PLAINTEXT": node.port, "CONTROLLER": node.controller_port}
        if node.sasl_port is not None:
            listeners["SASL_SSL"] = node.sasl_port
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": ",".join(f"{name}://{self.host}:{port}"
                                  for name, port in listeners.items()),
            "advertised.listeners": ",".join(f"{name}://{self.host}:{port}"
                                             for name, port in listeners.items()
                                             if name != "CONTROLLER"),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map":
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            "log.dirs": str(node.folder / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            "default.replication.factor": replicas,
            "min.insync.replicas": in_sync,
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": in_sync,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": in_sync,
        }
        if self.sasl_ssl is not None:
            mechanism = self.sasl_ssl.mechanism
            prefix = f"listener.name.sasl_ssl.{mechanism.lower()}"
            props.update({
                "sasl.enabled.mechanisms": mechanism,
                f"{prefix}.sasl.jaas.config":
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
                "listener.name.sasl_ssl.ssl.keystore.location": str(self.sasl_ssl.keystore_pem),
            })
        props.update(self.config)
        return props

    def _java(self, main: str, *args: str, heap_mb: int) -> list[str]:
        assert self._lib is not None
        return [
            shutil.which("java") or "java", f"-Xms{min(heap_mb, 256)}m", f"-Xmx{heap_mb}m",
            "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.run_dir / 'log4j2.yaml'}",
            "-cp", f"{self._lib}/*", main, *args,
        ]

    def _format(self, node: _Node, cluster_id: str) -> subprocess.Popen[bytes]:
        args = ["format", "--cluster-id", cluster_id, "--config", str(node.properties),
                "--ignore-formatted"]
        for user in self.sasl_ssl.users if self.sasl_ssl is not None else ():
            args += ["--add-scram",
                     f"{user.mechanism}=[name={user.name},password={user.password}]"]
        return self._popen(node, self._java("kafka.tools.StorageTool", *args, heap_mb=256))

    def _spawn(self, node: _Node) -> None:
        node.log_offset = node.log.stat().st_size if node.log.exists() else 0
        node.process = self._popen(
            node, self._java("kafka.Kafka", str(node.properties), heap_mb=self.heap_mb))

    def _popen(self, node: _Node, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(node.log, "ab") as log:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=node.folder,
                                    start_new_session=True)

    def _wait_started(self, node: _Node, deadline: float) -> None:
        assert node.process is not None
        while True:
            if (rc := node.process.poll()) is not None:
                raise KafkaSetupError(
                    f"Kafka node {node.node_id} exited during start-up (exit code {rc}); "
                    f"last lines of {node.log}:\n{_tail(node.log)}")
            if (_READY_LINE in _read_from(node.log, node.log_offset)
                    and _port_open(node.port, self.host)):
                return
            if time.monotonic() >= deadline:
                raise KafkaSetupError(
                    f"Kafka node {node.node_id} not started after {self.startup_timeout:.0f} s;"
                    f" last lines of {node.log}:\n{_tail(node.log)}")
            time.sleep(0.1)


def _render(props: Mapping[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in props.items())


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _tail(path: Path, lines: int = 20) -> str:
    text = _read_from(path, 0)
    return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty)"




def main() -> int:
    """``python -m app.dev.kafka_broker``: fetch the jars now (``make kafka``)."""
    try:
        lib = provision(echo=print)
    except KafkaSetupError as exc:
        print(f"kafka: {exc}")
        return 2
    print(f"Apache Kafka {KAFKA_VERSION}: {len(list(lib.glob('*.jar')))} jars in {lib}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
